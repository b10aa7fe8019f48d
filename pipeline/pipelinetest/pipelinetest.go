// Package pipelinetest runs pipeline files in tests, on this machine or
// on a made-up inventory of devices, with the run's logs captured.
package pipelinetest

import (
	"bytes"
	"context"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/avflow/avflow/accelerators"
	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
)

// Run parses yaml (name is the file name in messages), validates it and
// runs it over the in-process transport on inv (nil: what this machine
// has). A file that does not parse or validate fails the test; an error
// building or running the pipeline is returned, with the text logs.
func Run(t testing.TB, inv *accelerators.Inventory, name, yaml string) (*pipeline.Runner, string, error) {
	t.Helper()
	return run(t, pipeline.Default, inv, name, yaml)
}

// RunIn is Run in env (the Default environment with test kinds added).
func RunIn(t testing.TB, env *pipeline.Environment, name, yaml string) (*pipeline.Runner, string, error) {
	t.Helper()
	return run(t, env, nil, name, yaml)
}

func run(t testing.TB, env *pipeline.Environment, inv *accelerators.Inventory, name, yaml string) (*pipeline.Runner, string, error) {
	t.Helper()
	cfg, err := pipeline.Parse([]byte(yaml), name)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Validate(cfg); err != nil {
		t.Fatal(err)
	}
	logs := &bytes.Buffer{}
	r, err := pipeline.NewRunner(env, cfg, pipeline.Options{Devices: inv, Transport: "local",
		Log: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		return nil, logs.String(), err
	}
	err = r.Run(context.Background())
	return r, logs.String(), err
}

// Counter is a terminal stage that counts the messages it takes and
// releases them.
type Counter struct {
	stage.Base
	N atomic.Int64
}

func (c *Counter) Process(_ context.Context, in stage.Batch) (stage.Batch, error) {
	for _, e := range in {
		c.N.Add(1)
		e.Release()
	}
	return nil, nil
}

// WithCounter returns a copy of the Default environment with a terminal
// kind of that name whose every instance is c.
func WithCounter(t testing.TB, kind string, c *Counter) *pipeline.Environment {
	t.Helper()
	env := pipeline.Default.Clone()
	if err := env.Register(pipeline.Spec{Kind: kind, MinInputs: 1, MaxInputs: 1,
		Ports: func(pipeline.Params, []pipeline.PortType) ([]pipeline.Port, error) { return nil, nil },
		New:   func(context.Context, pipeline.Init) (stage.Stage, error) { return c, nil }}); err != nil {
		t.Fatal(err)
	}
	return env
}

// Recorder is a terminal stage that keeps the envelope of every message
// it takes (not its media) and releases them.
type Recorder struct {
	stage.Base
	mu   sync.Mutex
	msgs []envelope.Envelope
}

func (r *Recorder) Process(_ context.Context, in stage.Batch) (stage.Batch, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range in {
		env := e.Envelope
		env.Payload = nil
		r.msgs = append(r.msgs, env)
		e.Release()
	}
	return nil, nil
}

// Envelopes returns what the recorder took, in order.
func (r *Recorder) Envelopes() []envelope.Envelope {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.msgs)
}

// WithRecorder returns a copy of the Default environment with a terminal
// kind of that name whose every instance is rec.
func WithRecorder(t testing.TB, kind string, rec *Recorder) *pipeline.Environment {
	t.Helper()
	env := pipeline.Default.Clone()
	if err := env.Register(pipeline.Spec{Kind: kind, MinInputs: 1, MaxInputs: 1,
		Ports: func(pipeline.Params, []pipeline.PortType) ([]pipeline.Port, error) { return nil, nil },
		New:   func(context.Context, pipeline.Init) (stage.Stage, error) { return rec, nil }}); err != nil {
		t.Fatal(err)
	}
	return env
}

// Record runs yaml over the in-process transport, where stages of kind
// "record" are one Recorder, and returns the envelopes it took. A run
// that fails fails the test, with its logs.
func Record(t testing.TB, name, yaml string) []envelope.Envelope {
	t.Helper()
	rec := &Recorder{}
	if _, logs, err := RunIn(t, WithRecorder(t, "record", rec), name, yaml); err != nil {
		t.Fatalf("%s: %v\n%s", name, err, logs)
	}
	return rec.Envelopes()
}
