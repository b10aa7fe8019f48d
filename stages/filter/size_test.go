package filter_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/avflow/avflow/accelerators"
	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/pipeline"
)

// runOn runs yaml on the given transport (an embedded NATS server for
// "nats"), with the logs captured.
func runOn(t *testing.T, transport, yaml string) (string, error) {
	t.Helper()
	cfg, err := pipeline.Parse([]byte(yaml), "size.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := pipeline.Default.Validate(cfg); err != nil {
		t.Fatal(err)
	}
	logs := &bytes.Buffer{}
	inv := accelerators.Inventory{Devices: []accelerators.Device{cpu}}
	r, err := pipeline.NewRunner(pipeline.Default, cfg, pipeline.Options{Transport: transport, Devices: &inv,
		Log: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		return logs.String(), err
	}
	return logs.String(), r.Run(context.Background())
}

// TestFramesOverMaxPixels: a graph that makes huge frames (scale=16000:16000,
// 366 MiB each) fails at its first frame with the cause, naming the stage,
// the size and the param, before a frame reaches the encoder or the NATS
// bus (which would take a minute and many GB, then fail with a lost NATS
// connection); max_pixels moves the limit, 0 lifts it.
func TestFramesOverMaxPixels(t *testing.T) {
	tests := []struct {
		name, transport, graph, params string
		want                           []string // nil: the run succeeds
	}{
		{"local", "local", "scale=16000:16000", "", []string{`stage "f"`, "16000x16000 yuv420p frames from 320x240", "256.0 megapixels, 366 MiB each", "over the limit of 67108864 pixels", "max_pixels"}},
		{"nats", "nats", "scale=16000:16000", "", []string{`stage "f"`, "16000x16000", "max_pixels"}},
		{"own limit", "local", "scale=400:300", "max_pixels: 76800", []string{`"scale=400:300" makes 400x300 yuv420p frames`, "over the limit of 76800 pixels"}},
		{"within the limit", "local", "scale=320:240", "max_pixels: 76800", nil},
		{"no limit", "local", "scale=400:300", "max_pixels: 0", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out.mp4")
			logs, err := runOn(t, tt.transport, fmt.Sprintf(`name: size
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2=size=320x240:rate=25:duration=0.12"}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: f, kind: filter, inputs: [dec], params: {graph: %q, %s}}
  - {name: enc, kind: encode, inputs: [f], params: {codec: libx264, preset: ultrafast}}
  - {name: out, kind: sink, inputs: [enc], params: {path: %q}}
`, tt.graph, tt.params, out))
			if tt.want == nil {
				if err != nil {
					t.Fatalf("%v\n%s", err, logs)
				}
				return
			}
			if err == nil {
				t.Fatalf("the run succeeded, want it to fail on the frame size")
			}
			t.Log(err)
			if !errors.Is(err, codecs.ErrTooLarge) || errors.Is(err, pipeline.ErrTransport) {
				t.Errorf("error %v: want ErrTooLarge first, not a transport error", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if strings.Contains(logs, "encoder opened") {
				t.Errorf("a frame reached the encoder:\n%s", logs)
			}
			if _, serr := os.Stat(out); serr == nil {
				t.Error("the failed run left an output file")
			}
		})
	}
}
