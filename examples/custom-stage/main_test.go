package main

import (
	"context"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/avflow/avflow/pipeline/e2e"
)

func TestCustomStage(t *testing.T) {
	e2e.Long(t)
	media := e2e.MediaDir(t)
	t.Setenv("AVFLOW_MEDIA", media)
	out := t.TempDir()
	t.Setenv("AVFLOW_OUT", out)
	stats, err := Run(context.Background(), "pipeline.yaml", nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	// ffprobe counts the frames of the input and of the output.
	count := func(p string) int {
		b, err := exec.Command(e2e.Tool(t, "ffprobe"), "-v", "error", "-count_frames", "-select_streams", "v:0",
			"-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", p).Output()
		if err != nil {
			t.Fatalf("ffprobe %s: %v", p, err)
		}
		n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		return n
	}
	want := count(filepath.Join(media, "facecam/hungry.mkv"))
	if len(stats.Luma) != want || want == 0 {
		t.Fatalf("lumastats saw %d frames, input has %d", len(stats.Luma), want)
	}
	if got := count(filepath.Join(out, "custom.mkv")); got != want {
		t.Fatalf("output has %d frames, want %d", got, want)
	}
	min, max := 255.0, 0.0
	for _, v := range stats.Luma {
		if v < 16 || v > 235 {
			t.Fatalf("mean luma %.1f outside the video range of a real picture", v)
		}
		min, max = minf(min, v), maxf(max, v)
	}
	if max-min <= 0 {
		t.Fatalf("every frame has the same mean luma %.2f: not measured", min)
	}
}

func TestCustomStageBadParam(t *testing.T) {
	_, err := Run(context.Background(), "pipeline.yaml", []string{"luma.log_every=x"}, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "log_every") {
		t.Fatalf("bad param not reported: %v", err)
	}
}

func minf(a, b float64) float64 {
	if a < b {
		return a
	}
	return b
}

func maxf(a, b float64) float64 {
	if a > b {
		return a
	}
	return b
}
