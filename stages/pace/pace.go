// Package pace is the pace stage: it lets messages through unchanged, at
// most rate per second per instance, sleeping as needed. It stands in for
// a slow model (a stage that takes 1/rate s per message without using a
// core), and measures the machinery rather than the CPUs: a paced stage
// served by N processes should move N times as many messages.
package pace

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/stage"
)

// ErrParams reports pace params that cannot work.
var ErrParams = errors.New("pace: bad params")

func init() {
	pipeline.MustRegister(pipeline.Spec{
		Kind:    "pace",
		Summary: "Let messages through unchanged, at most rate per second per instance (simulates a slow stage; measures the transport).",
		Params: []pipeline.Param{
			{Name: "rate", Type: pipeline.TypeFloat, Required: true, Doc: "most messages per second this instance passes; each replica (replicas: N, or each avflow serve process) has its own, so N instances pass up to N x rate. A message that comes later than 1/rate after the last goes at once; time idle is not saved up for a burst"},
		},
		MinInputs: 1, MaxInputs: 1,
		Ports: func(_ pipeline.Params, in []pipeline.PortType) ([]pipeline.Port, error) {
			return []pipeline.Port{{Name: "out", Type: in[0]}}, nil
		},
		Check:      check,
		Replicable: func(pipeline.Params) error { return nil }, // each message on its own
		New: func(_ context.Context, in pipeline.Init) (stage.Stage, error) {
			return New(in.Params.Float("rate"), nil), nil
		},
	})
}

// check refuses a rate that is not a positive finite number.
func check(p pipeline.Params, _ string) error {
	if r := p.Float("rate"); math.IsNaN(r) || math.IsInf(r, 0) || r <= 0 {
		return fmt.Errorf("%w: rate must be a finite number of messages per second > 0, got %v", ErrParams, r)
	}
	return nil
}

// Clock is the time the stage paces by; tests give it a fake one.
type Clock interface {
	Now() time.Time
	// Sleep waits d, or until ctx is done (returning its error).
	Sleep(ctx context.Context, d time.Duration) error
}

type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

func (wallClock) Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stage passes messages at most Rate per second.
type Stage struct {
	stage.Base
	gap   time.Duration // least time between two messages
	clock Clock
	next  time.Time // the earliest the next message may go (zero: at once)
}

// New returns a stage passing at most rate messages per second, timed by
// clock (nil: the wall clock).
func New(rate float64, clock Clock) *Stage {
	if clock == nil {
		clock = wallClock{}
	}
	return &Stage{gap: time.Duration(float64(time.Second) / rate), clock: clock}
}

// Process waits for each message's turn and passes it on. The turns are
// kept on a schedule (next = last turn + 1/rate), so a sleep that ends
// late does not slow the rate down; a message that arrives after its turn
// goes at once and starts the schedule again from now.
func (s *Stage) Process(ctx context.Context, in stage.Batch) (stage.Batch, error) {
	out := make(stage.Batch, 0, len(in))
	for _, e := range in {
		if err := s.wait(ctx); err != nil {
			for _, o := range out { // passed on, so the runner no longer holds their frames
				o.Release()
			}
			return nil, fmt.Errorf("pace: %w", err)
		}
		out = append(out, e.Pass())
	}
	return out, nil
}

// wait sleeps until the next turn and books the one after it.
func (s *Stage) wait(ctx context.Context) error {
	now := s.clock.Now()
	if d := s.next.Sub(now); d > 0 {
		if err := s.clock.Sleep(ctx, d); err != nil {
			return err
		}
		s.next = s.next.Add(s.gap)
		return nil
	}
	s.next = now.Add(s.gap)
	return nil
}
