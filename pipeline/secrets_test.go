package pipeline

import (
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
)

func TestRedactURL(t *testing.T) {
	for _, tc := range []struct{ in, want, secret string }{
		{"nats://u:s3cret@127.0.0.1:4222", "nats://u:xxxxx@127.0.0.1:4222", "s3cret"},
		{"nats://t0ken@host:4222", "nats://xxxxx@host:4222", "t0ken"},
		{"nats://a:p1@h1:4222,nats://a:p1@h2:4222", "nats://a:xxxxx@h1:4222,nats://a:xxxxx@h2:4222", "p1"},
		{"srt://host:9000?mode=caller&passphrase=longsecret1", "srt://host:9000?mode=caller&passphrase=xxxxx", "longsecret1"},
		{"rtmp://a.rtmp.youtube.com/live2/abcd-efgh-1234", "rtmp://a.rtmp.youtube.com/live2/xxxxx", "abcd-efgh-1234"},
		{"rtmps://u:pw@live.example/app/key99", "rtmps://u:xxxxx@live.example/app/xxxxx", "key99"},
		{"https://cdn.example/v.m3u8?token=abc123&x=1", "https://cdn.example/v.m3u8?token=xxxxx&x=1", "abc123"},
		{"http://example.com/clip.mp4", "http://example.com/clip.mp4", ""},
		{"rtmp://localhost/live", "rtmp://localhost/live", ""},
		{"../media/clip.mp4", "../media/clip.mp4", ""},
		{"nats://u:bad%zz@host", "nats://xxxxx@host", "bad%zz"},
	} {
		got := RedactURL(tc.in)
		if got != tc.want {
			t.Errorf("RedactURL(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if tc.secret != "" && strings.Contains(got, tc.secret) {
			t.Errorf("RedactURL(%q) still holds %q", tc.in, tc.secret)
		}
	}
}

// A server that hangs up at once: connecting fails, and the error names
// the server without its password.
func TestConnectErrorHidesPassword(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	url := "nats://u:s3cret@" + ln.Addr().String()
	_, err = connect(nil, url, "test", func(*nats.Subscription, error) {})
	if err == nil {
		t.Fatal("connected to a server that hangs up")
	}
	if strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Fatalf("error %q: want the address without the password", err)
	}
	if !errors.Is(err, ErrTransport) {
		t.Fatalf("error %q does not wrap ErrTransport", err)
	}
}
