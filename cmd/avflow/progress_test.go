package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline/e2e"
)

func TestETA(t *testing.T) {
	tests := []struct {
		frames, total int64
		fps           float64
		want          time.Duration
		ok            bool
	}{
		{0, 300, 30, 10 * time.Second, true},
		{150, 300, 30, 5 * time.Second, true},
		{299, 300, 30, 0, true},  // under half a second left
		{300, 300, 30, 0, false}, // done
		{400, 300, 30, 0, false}, // more than announced
		{10, 300, 0, 0, false},   // no rate yet
		{0, math.MaxInt64, 30, 0, false},
		{0, math.MaxInt64, 1e12, 107 * 24 * time.Hour, true}, // about 9.2e6 s
		{0, math.MaxInt64 / 2, 1, 0, false},
	}
	for _, tt := range tests {
		got, ok := eta(tt.frames, tt.total, tt.fps)
		if ok != tt.ok || (ok && (got < 0 || got.Round(24*time.Hour) != tt.want.Round(24*time.Hour))) {
			t.Errorf("eta(%d, %d, %g) = %s, %v; want %s, %v", tt.frames, tt.total, tt.fps, got, ok, tt.want, tt.ok)
		}
	}
}

// TestHugeMaxFramesProgress: a max_frames of billions of frames gives
// progress lines without an ETA, never a negative one.
func TestHugeMaxFramesProgress(t *testing.T) {
	e2e.Long(t)
	p := writePipeline(t, t.TempDir(), `name: huge
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2=size=160x120:rate=30", realtime: true, max_frames: 9223372036854775807}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: enc, kind: encode, inputs: [dec], params: {codec: libx264, preset: ultrafast}}
  - {name: out, kind: sink, inputs: [enc], params: {path: huge.mkv}}
`)
	run := startAvflow(t, nil, "run", "--progress-interval", "100ms", p)
	waitFor(t, func() bool { return framesDone(run.out.String()) >= 5 }, 30*time.Second, run.out)
	sendSignal(syscall.SIGINT)(t, run)
	if code := run.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("exit %d:\n%s", code, run.out)
	}
	for _, line := range strings.Split(run.out.String(), "\n") {
		if strings.Contains(line, "msg=progress") && (strings.Contains(line, "eta=-") || !strings.Contains(line, "total=9223372036854775807")) {
			t.Errorf("progress line: %s", line)
		}
	}
}

// TestProgressStopsWhenRunFails: once a stage has failed (a truncated
// file), no progress line follows, though another branch takes seconds to
// wind down (a filter letting two frames through a second).
func TestProgressStopsWhenRunFails(t *testing.T) {
	e2e.Long(t)
	dir := t.TempDir()
	data, err := os.ReadFile(e2e.Media(t, "car-detection.mp4"))
	if err != nil {
		t.Fatal(err)
	}
	truncated := filepath.Join(dir, "truncated.mp4")
	writeFile(t, truncated, data[:len(data)/10])
	p := writePipeline(t, dir, fmt.Sprintf(`name: fails
stages:
  - {name: live, kind: source, params: {url: "lavfi:testsrc2=size=160x120:rate=10", realtime: true}}
  - {name: dec, kind: decode, inputs: [live.video]}
  - {name: slow, kind: filter, inputs: [dec], params: {graph: "setpts=5*PTS,realtime"}}
  - {name: enc, kind: encode, inputs: [slow], params: {codec: libx264, preset: ultrafast}}
  - {name: a, kind: sink, inputs: [enc], params: {path: out/a.mkv}}
  - {name: file, kind: source, params: {url: %q, realtime: true, audio: false}}
  - {name: copy, kind: encode, inputs: [file.video], params: {codec: copy}}
  - {name: b, kind: sink, inputs: [copy], params: {path: out/b.mkv}}
`, truncated))
	run := startAvflow(t, nil, "run", "--progress-interval", "50ms", p)
	if code := run.wait(t, 60*time.Second); code != exitRun {
		t.Fatalf("exit %d, want %d:\n%s", code, exitRun, run.out)
	}
	log := run.out.String()
	i := strings.Index(log, "partial output removed")
	if i < 0 || !strings.Contains(log, "truncated.mp4") {
		t.Fatalf("the run did not fail on the truncated file:\n%s", log)
	}
	if j := strings.Index(log[i:], "msg=progress"); j >= 0 {
		t.Errorf("progress logged after the run failed:\n%s", log)
	}
}
