package decode_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/pipeline/pipelinetest"
	"github.com/avflow/avflow/stages/source"
)

// tsWithLostPacket makes an MPEG-TS of the car clip (377 video frames) and
// a copy with one 188-byte TS packet of the video stream, in the middle of
// a frame in the middle of the file, left out: what a lost UDP datagram or
// a dropped radio packet does.
func tsWithLostPacket(t *testing.T) (whole, damaged string) {
	t.Helper()
	dir := t.TempDir()
	whole, damaged = filepath.Join(dir, "car.ts"), filepath.Join(dir, "lost.ts")
	cmd := exec.Command(e2e.Tool(t, "ffmpeg"), "-v", "error", "-i", e2e.Media(t, "car-detection.mp4"), "-c", "copy", "-f", "mpegts", whole)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ffmpeg: %v\n%s", err, out)
	}
	data, err := os.ReadFile(whole)
	if err != nil {
		t.Fatal(err)
	}
	const size, videoPID = 188, 0x100 // ffmpeg's first elementary stream
	for i := len(data) / size / 2; (i+1)*size <= len(data); i++ {
		p := data[i*size : (i+1)*size]
		pid, start := int(p[1]&0x1f)<<8|int(p[2]), p[1]&0x40 != 0
		if p[0] == 0x47 && pid == videoPID && !start {
			lost := append(append([]byte{}, data[:i*size]...), data[(i+1)*size:]...)
			if err := os.WriteFile(damaged, lost, 0o644); err != nil {
				t.Fatal(err)
			}
			return whole, damaged
		}
	}
	t.Fatal("no video TS packet in the second half")
	return "", ""
}

// decodeFile runs source -> decode -> a frame counter on a file, with the
// source's extra params, and returns the frames decoded, the log and Run's
// error.
func decodeFile(t *testing.T, path, params string) (int64, string, error) {
	t.Helper()
	c := &pipelinetest.Counter{}
	env := pipelinetest.WithCounter(t, "frames", c)
	cfg, err := pipeline.Parse(fmt.Appendf(nil, `name: lost
transport: local
stages:
  - {name: src, kind: source, params: {url: %q%s}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: frames, kind: frames, inputs: [dec]}
`, path, params), "lost.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Validate(cfg); err != nil {
		t.Fatal(err)
	}
	log := &e2e.Buffer{}
	r, err := pipeline.NewRunner(env, cfg, pipeline.Options{Log: slog.New(slog.NewTextHandler(log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	err = r.Run(context.Background())
	r.Metrics().WriteTable(log) // the end table, with the stages' event counters
	return c.N.Load(), log.String(), err
}

// TestLostTSPacket: a file job with one lost TS packet carries on as the
// ffmpeg CLI does (the decoder conceals the damage), saying so once; with
// on_corrupt: drop the damaged packet is left out; with on_corrupt: fail
// it stops, naming the file.
func TestLostTSPacket(t *testing.T) {
	e2e.Long(t)
	whole, damaged := tsWithLostPacket(t)
	if n, log, err := decodeFile(t, whole, ""); err != nil || n != 377 || strings.Contains(log, "damaged") {
		t.Fatalf("the whole TS: %d frames, %v\n%s", n, err, log)
	}
	tests := []struct {
		name, params string
		min, max     int64 // frames decoded
	}{
		{"default", "", 376, 377},
		{"conceal", ", on_corrupt: conceal", 376, 377},
		{"drop", ", on_corrupt: drop", 350, 376},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, log, err := decodeFile(t, damaged, tt.params)
			if err != nil {
				t.Fatalf("run failed: %v\n%s", err, log)
			}
			if n < tt.min || n > tt.max {
				t.Errorf("%d frames decoded, want %d to %d", n, tt.min, tt.max)
			}
			if c := strings.Count(log, `msg="damaged packet`); c != 1 {
				t.Errorf("%d warnings for the damaged packet, want one:\n%s", c, log)
			}
			if !strings.Contains(log, "input ended; it had damaged packets") || !strings.Contains(log, "damaged=1") {
				t.Errorf("no count of damaged packets at the end:\n%s", log)
			}
			if !strings.Contains(log, "corrupt_packets=1") {
				t.Errorf("the run's metrics do not count the damaged packet:\n%s", log)
			}
		})
	}
	t.Run("fail", func(t *testing.T) {
		_, log, err := decodeFile(t, damaged, ", on_corrupt: fail")
		if !errors.Is(err, source.ErrCorrupt) || !strings.Contains(err.Error(), damaged) || !strings.Contains(err.Error(), "on_corrupt: fail") {
			t.Fatalf("error %v, want ErrCorrupt naming %s\n%s", err, damaged, log)
		}
	})
}

// TestTruncatedStillFails: a container cut short (its index announces
// more frames than it holds) still fails, whatever on_corrupt says.
func TestTruncatedStillFails(t *testing.T) {
	e2e.Long(t)
	data, err := os.ReadFile(e2e.Media(t, "car-detection.mp4"))
	if err != nil {
		t.Fatal(err)
	}
	cut := filepath.Join(t.TempDir(), "cut.mp4")
	if err := os.WriteFile(cut, data[:len(data)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	for _, params := range []string{"", ", on_corrupt: drop"} {
		if _, _, err := decodeFile(t, cut, params); !errors.Is(err, source.ErrCorrupt) || !strings.Contains(err.Error(), "video frames its index announces") {
			t.Errorf("params %q: error %v, want ErrCorrupt for the cut file", params, err)
		}
	}
}
