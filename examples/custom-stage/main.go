// Command custom-stage shows avflow as a Go framework: it registers its own
// stage kind, "lumastats", which measures each decoded frame's mean
// brightness and attaches it as metadata, then runs a pipeline that uses it
// next to the built-in stages.
//
//	go run ./examples/custom-stage [-media ../shared/media]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
	_ "github.com/avflow/avflow/stages/all" // the built-in stages
)

// Stats collects what the lumastats stages measured, for the caller.
type Stats struct {
	mu   sync.Mutex
	Luma []float64 // mean luma (0-255) per frame, in order
}

func (s *Stats) add(v float64) { s.mu.Lock(); s.Luma = append(s.Luma, v); s.mu.Unlock() }

// lumaStats is the custom stage: frames in, the same frames out, with
// meta["luma.mean"] set.
type lumaStats struct {
	stage.Base
	every int
	stats *Stats
	log   *slog.Logger
	n     int
}

func (l *lumaStats) Process(_ context.Context, in stage.Batch) (stage.Batch, error) {
	out := make(stage.Batch, 0, len(in))
	for _, e := range in {
		f, err := codecs.FrameOf(e)
		if err != nil {
			return out, fmt.Errorf("lumastats: %w", err)
		}
		if e.Video == nil {
			return out, errors.New("lumastats: not a video frame")
		}
		plane, stride := codecs.Plane(f, 0, f.Height())
		var sum uint64
		for y := 0; y < f.Height(); y++ {
			for _, v := range plane[y*stride : y*stride+f.Width()] {
				sum += uint64(v)
			}
		}
		mean := float64(sum) / float64(f.Width()*f.Height())
		l.stats.add(mean)
		if l.n%l.every == 0 {
			l.log.Info("luma", "frame", l.n, "mean", fmt.Sprintf("%.1f", mean))
		}
		l.n++
		// Pass the frame on: the copy takes over the in-process frame.
		cp := e.Pass()
		if cp.Meta == nil {
			cp.Meta = map[string]string{}
		}
		cp.Meta["luma.mean"] = strconv.FormatFloat(mean, 'f', 2, 64)
		out = append(out, cp)
	}
	return out, nil
}

// Register adds the lumastats kind to env; every stage of that kind reports into stats.
func Register(env *pipeline.Environment, stats *Stats) error {
	return env.Register(pipeline.Spec{
		Kind:    "lumastats",
		Summary: "Measure each video frame's mean luma and attach it as meta luma.mean.",
		Params: []pipeline.Param{
			{Name: "log_every", Type: pipeline.TypeInt, Default: 30, Doc: "log one line every N frames"},
		},
		MinInputs: 1, MaxInputs: 1,
		Ports: func(_ pipeline.Params, in []pipeline.PortType) ([]pipeline.Port, error) {
			if in[0].Kind != envelope.KindFrame || in[0].Media != envelope.MediaVideo {
				return nil, fmt.Errorf("lumastats takes video frames, got %s", in[0])
			}
			return []pipeline.Port{{Name: "out", Type: in[0]}}, nil
		},
		New: func(_ context.Context, in pipeline.Init) (stage.Stage, error) {
			return &lumaStats{every: max(1, in.Params.Int("log_every")), stats: stats, log: in.Log}, nil
		},
	})
}

// Run loads the pipeline file and runs it with the custom stage registered.
func Run(ctx context.Context, file string, sets []string, log *slog.Logger) (*Stats, error) {
	env := pipeline.Default.Clone() // built-in kinds, plus ours, without touching Default
	stats := &Stats{}
	if err := Register(env, stats); err != nil {
		return nil, err
	}
	cfg, err := pipeline.Load(file)
	if err != nil {
		return nil, err
	}
	for _, s := range sets {
		if err := cfg.Set(s); err != nil {
			return nil, err
		}
	}
	if err := env.Validate(cfg); err != nil {
		return nil, err
	}
	r, err := pipeline.NewRunner(env, cfg, pipeline.Options{Log: log})
	if err != nil {
		return nil, err
	}
	return stats, r.Run(ctx)
}

func main() {
	dir, _ := os.Getwd()
	file := flag.String("pipeline", filepath.Join(dir, "examples/custom-stage/pipeline.yaml"), "pipeline file")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	stats, err := Run(ctx, *file, flag.Args(), slog.Default())
	if err != nil {
		fmt.Fprintln(os.Stderr, "custom-stage:", err)
		os.Exit(1)
	}
	fmt.Printf("measured %d frames\n", len(stats.Luma))
}
