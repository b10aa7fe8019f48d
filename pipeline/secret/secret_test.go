package secret

import (
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
	} {
		if got := Text(tc.in); got != tc.want {
			t.Errorf("Text(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
