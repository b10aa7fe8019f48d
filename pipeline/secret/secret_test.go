package secret

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestURL(t *testing.T) {
	for _, tc := range []struct{ in, want, secret string }{
		{"nats://u:s3cret@127.0.0.1:4222", "nats://u:xxxxx@127.0.0.1:4222", "s3cret"},
		{"nats://t0ken@host:4222", "nats://xxxxx@host:4222", "t0ken"},
		{"nats://a:p1@h1:4222,nats://a:p1@h2:4222", "nats://a:xxxxx@h1:4222,nats://a:xxxxx@h2:4222", "p1"},
		{"srt://host:9000?mode=caller&passphrase=longsecret1", "srt://host:9000?mode=caller&passphrase=xxxxx", "longsecret1"},
		{"rtmp://a.rtmp.youtube.com/live2/abcd-efgh-1234", "rtmp://a.rtmp.youtube.com/live2/xxxxx", "abcd-efgh-1234"},
		{"rtmps://u:pw@live.example/app/key99", "rtmps://u:xxxxx@live.example/app/xxxxx", "key99"},
		{"https://cdn.example/v.m3u8?token=abc123&x=1", "https://cdn.example/v.m3u8?token=xxxxx&x=1", "abc123"},
		{"http://example.com/clip.mp4", "http://example.com/clip.mp4", ""},
		{"srt://h:9000?mode=caller&streamid=#!::r=live/k3y99", "srt://h:9000?mode=caller&streamid=xxxxx", "k3y99"},
		{"rtmp://localhost/live", "rtmp://localhost/live", ""},
		{"../media/clip.mp4", "../media/clip.mp4", ""},
		{"nats://u:bad%zz@host", "nats://xxxxx@host", "bad%zz"},
	} {
		got := URL(tc.in)
		if got != tc.want {
			t.Errorf("URL(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if tc.secret != "" && strings.Contains(got, tc.secret) {
			t.Errorf("URL(%q) still holds %q", tc.in, tc.secret)
		}
	}
}

func TestText(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"Failed to open 'rtmp://a.example/live2/abcd-1234': I/O error", "Failed to open 'rtmp://a.example/live2/xxxxx': I/O error"},
		{"Connection to tcp://u:pw9@10.0.0.1:1935 failed", "Connection to tcp://u:xxxxx@10.0.0.1:1935 failed"},
		{"opening srt://h:9000?passphrase=zzzsecret1 and nats://tok3n@h:4222", "opening srt://h:9000?passphrase=xxxxx and nats://xxxxx@h:4222"},
		{"no url here", "no url here"},
		{"servers nats://u:s3cret@h1:4222,nats://u:s3cret@h2:4222 down", "servers nats://u:xxxxx@h1:4222,nats://u:xxxxx@h2:4222 down"},
		{"srt://h:1?streamid=#!::r=live/s3cret,m=publish", "srt://h:1?streamid=xxxxx,m=publish"},
	} {
		if got := Text(tc.in); got != tc.want {
			t.Errorf("Text(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestTextInMessages(t *testing.T) {
	tests := []struct{ in, want string }{
		{"no URL here: a/b.mp4 failed", "no URL here: a/b.mp4 failed"},
		{"connecting to NATS at nats://u:s3cret@127.0.0.1:4222 failed: EOF", "connecting to NATS at nats://u:xxxxx@127.0.0.1:4222 failed: EOF"},
		{"ffmpeg: Connection to srt://127.0.0.1:9000?passphrase=topsecret&mode=caller failed: Input/output error",
			"ffmpeg: Connection to srt://127.0.0.1:9000?mode=caller&passphrase=xxxxx failed: Input/output error"},
		{"source: opening input failed: rtmp://u:pAss@host/live/key1: Connection refused", "source: opening input failed: rtmp://u:xxxxx@host/live/xxxxx: Connection refused"},
		{"Opening 'https://cdn/seg1.ts?token=abc' for reading", "Opening 'https://cdn/seg1.ts?token=xxxxx' for reading"},
		{"two: http://a:b@h1/x and http://c:d@h2/y", "two: http://a:xxxxx@h1/x and http://c:xxxxx@h2/y"},
		{"url=nats://tok3n@h:4222", "url=nats://xxxxx@h:4222"},
	}
	for _, tt := range tests {
		if got := Text(tt.in); got != tt.want {
			t.Errorf("Text(%q)\n = %q\nwant %q", tt.in, got, tt.want)
		}
	}
}

func TestHandler(t *testing.T) {
	var b bytes.Buffer
	log := slog.New(Handler(slog.NewTextHandler(&b, nil))).With("nats", "nats://u:s3cret@h:4222")
	log.Info("input stream rtmp://u:pAss@h/live/key1", "url", "srt://h:9000?passphrase=topsecret",
		"error", fmt.Errorf("opening http://u:p4ss@h/x.ts failed"), slog.Group("g", "u", "http://h/x?token=t0k3n"))
	for _, secret := range []string{"s3cret", "pAss", "key1", "topsecret", "p4ss", "t0k3n"} {
		if strings.Contains(b.String(), secret) {
			t.Errorf("%q logged: %s", secret, b.String())
		}
	}
	if !strings.Contains(b.String(), "srt://h:9000?passphrase=xxxxx") {
		t.Errorf("the URLs themselves must stay: %s", b.String())
	}
}
