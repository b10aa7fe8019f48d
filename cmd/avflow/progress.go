package main

import (
	"fmt"
	"os"
	"time"

	"github.com/avflow/avflow/pipeline"
	"github.com/schollz/progressbar/v3"
)

// progressBar draws frames, fps and ETA on the terminal (schollz/progressbar:
// a maintained bar that handles terminal width, rates and ETA).
func progressBar(r *pipeline.Runner, done, failed <-chan struct{}) {
	m := r.Metrics()
	total := m.ExpectedFrames()
	max := total
	if _, ok := eta(0, total, 1); !ok {
		// A spinner for live or unknown length, and for a max_frames
		// beyond any run's length, whose ETA would overflow.
		max = -1
	}
	bar := progressbar.NewOptions64(max,
		progressbar.OptionSetWriter(os.Stderr),
		progressbar.OptionSetDescription("frames"),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("frames"),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSetWidth(30),
	)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-done:
			_ = bar.Set64(m.Progress())
			fmt.Fprintln(os.Stderr)
			return
		case <-failed:
			fmt.Fprintln(os.Stderr)
			return
		case <-t.C:
			_ = bar.Set64(m.Progress())
		}
	}
}
