package main

import (
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/avflow/avflow/pipeline/e2e"
)

// TestSecretsNotShown runs the real binary against endpoints that fail
// (a NATS server and an RTMP server that hang up, an SRT port nobody
// listens on, an HTTP server that hangs up), with FFmpeg's own debug
// logs on: no password, passphrase, token or stream key reaches stderr.
func TestSecretsNotShown(t *testing.T) {
	e2e.Long(t)
	l := e2e.Listen(t)
	e2e.Serve(t, l, func(c net.Conn) { hangUp(c) })
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
