package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/avflow/avflow/pipeline/e2e"
)

func TestRedactText(t *testing.T) {
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
		if got := redactText(tt.in); got != tt.want {
			t.Errorf("redactText(%q)\n = %q\nwant %q", tt.in, got, tt.want)
		}
	}
}

func TestRedactHandler(t *testing.T) {
	var b bytes.Buffer
	log := slog.New(redactHandler{slog.NewTextHandler(&b, nil)}).With("nats", "nats://u:s3cret@h:4222")
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

// TestSecretsNotShown runs the real binary against endpoints that fail
// (a NATS server and an RTMP server that hang up, an SRT port nobody
// listens on, an HTTP server that hangs up), with FFmpeg's own debug
// logs on: no password, passphrase, token or stream key reaches stderr.
func TestSecretsNotShown(t *testing.T) {
	e2e.Long(t)
	l := listenLoopback(t)
	serveConns(t, l, func(c net.Conn) { hangUp(c) })
	port := portOf(l)
	srtPort := unusedPort(t, "udp")
	pipe := func(url string) string {
		return fmt.Sprintf(`name: secrets
stages:
  - {name: src, kind: source, params: {url: %q}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: enc, kind: encode, inputs: [dec], params: {codec: libx264}}
  - {name: out, kind: sink, inputs: [enc], params: {path: out/out.mp4}}
`, url)
	}
	tests := []struct {
		name    string
		args    []string
		url     string
		secrets []string
		shown   string // the redacted address the error names
	}{
		{"nats password", []string{"--nats", fmt.Sprintf("nats://u:s3cret@127.0.0.1:%d", port)}, "lavfi:testsrc2", []string{"s3cret"},
			fmt.Sprintf("nats://u:xxxxx@127.0.0.1:%d", port)},
		{"rtmp password and key", []string{"--transport", "local"}, fmt.Sprintf("rtmp://u:pAssw0rd@127.0.0.1:%d/live/streamkey123", port),
			[]string{"pAssw0rd", "streamkey123"}, fmt.Sprintf("rtmp://u:xxxxx@127.0.0.1:%d/live/xxxxx", port)},
		{"srt passphrase", []string{"--transport", "local"}, fmt.Sprintf("srt://127.0.0.1:%d?passphrase=topsecret12345&mode=caller", srtPort),
			[]string{"topsecret12345"}, "passphrase=xxxxx"},
		{"http token", []string{"--transport", "local"}, fmt.Sprintf("http://127.0.0.1:%d/live.ts?token=t0k3n999", port),
			[]string{"t0k3n999"}, "token=xxxxx"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			args := append(append([]string{"--log-level", "debug", "run"}, tt.args...), writePipeline(t, dir, pipe(tt.url)))
			r := avflow(t, nil, args...)
			out := r.stdout + r.stderr
			if r.code != exitRun || !strings.Contains(out, tt.shown) {
				t.Errorf("exit %d, want %d naming %s:\n%s", r.code, exitRun, tt.shown, out)
			}
			for _, s := range tt.secrets {
				if strings.Contains(out, s) {
					t.Errorf("%q shown:\n%s", s, out)
				}
			}
		})
	}
}
