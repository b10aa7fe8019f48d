// Package pipeline loads, validates and runs avflow pipelines: graphs of
// stages connected by NATS subjects.
package pipeline

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/avflow/avflow/accelerators"
	"github.com/avflow/avflow/pipeline/envelope"
)

// Batch is the unit a stage processes: one or more envelopes.
type Batch []*envelope.Envelope

// Stage is a running pipeline stage.
//
// The runner calls Process with the envelopes that arrived on the stage's
// inputs and publishes what it returns on the stage's outputs (routed by
// each envelope's Port). A source is a stage without inputs: the runner
// calls its Process with an empty batch until it returns io.EOF.
//
// The runner owns the input envelopes: it releases their in-process media
// after Process returns, so a stage that keeps a frame must take its own
// reference. Close is called exactly once, after the last Process or Flush.
type Stage interface {
	Process(ctx context.Context, in Batch) (Batch, error)
	Close() error
}

// Flusher is implemented by stages that hold data back (decoders, encoders,
// muxers). Flush is called once, after every input has ended, and returns
// the remaining output. A stage finalises its output in Flush: an error or
// a cancelled run skips Flush and goes straight to Close.
type Flusher interface {
	Flush(ctx context.Context) (Batch, error)
}

// Init is what a stage constructor gets.
type Init struct {
	Name     string     // the stage's name in the pipeline
	Pipeline string     // the pipeline's name
	Params   Params     // validated params, defaults applied
	Inputs   []PortType // types of the input edges, in order
	Outputs  []Port     // the stage's output ports
	Dir      string     // folder of the pipeline file; relative paths resolve against it
	// Device is the device the stage is bound to (its Kind: cpu, gpu, npu).
	Device accelerators.Device
	// Strict is the stage's strict setting: a stage that finds at run time
	// that it cannot use its device fails instead of falling back.
	Strict bool
	Log    *slog.Logger
	// Live is true when the pipeline's flow mode is drop-oldest (live input).
	Live bool
	// Downstream lists the devices of the stages that take this stage's
	// outputs by reference, in this process (the local transport): a GPU
	// stage may leave its frames on the GPU for those on the same device.
	// Empty when outputs cross NATS, which carries frames as bytes.
	Downstream []string
	// Consumers names, for each output port, the stages of the pipeline
	// that read it (none: nothing in the pipeline does, though an outside
	// client may still subscribe to its NATS subject). A source can skip a
	// stream nobody reads, or say which stage expected a stream its input
	// lacks.
	Consumers map[string][]string
	// Graph edits the running pipeline: a stage may add stages that read
	// it (a branch) and remove them again.
	Graph Graph
}

// Graph edits a running pipeline (the Runner implements it): see
// Runner.AddStages and Runner.RemoveStages.
type Graph interface {
	AddStages(ctx context.Context, stagesYAML []byte) error
	RemoveStages(ctx context.Context, names ...string) error
}

// Path resolves a path param against the pipeline file's folder.
func (in Init) Path(p string) string { return ResolvePath(in.Dir, p) }

// InputEnder is implemented by stages that want to know when one of several
// inputs has ended (a muxer that must stop waiting for a stream that never
// comes). EndInput is called once per input, with the input's index.
type InputEnder interface {
	EndInput(ctx context.Context, input int) (Batch, error)
}

// Batcher is implemented by stages that want several messages per Process
// call (dynamic batching for inference): the runner passes up to max
// queued messages at once, waiting at most wait for the batch to fill.
type Batcher interface {
	BatchLimits() (max int, wait time.Duration)
}

// DeviceReporter is implemented by stages that can end up on another device
// than the one they were bound to (an execution provider that would not
// load, so the model runs on the CPU; a hardware encoder that does not
// open at the first frame): the runner labels the stage's start line with
// Device() and reads it again for every metrics snapshot, so it must be
// safe to call while the stage runs. "" means the bound device.
type DeviceReporter interface {
	Device() string
}

// EventCounter is implemented by stages that count events of their own,
// beyond the messages the runner counts (damaged packets concealed,
// packets the decoder could not decode, malformed detections dropped). The
// runner reads Counts at every metrics snapshot (the end table, Prometheus,
// `nats micro stats`), so it must be safe to call while the stage runs.
// Keys are snake_case event names; values only grow.
type EventCounter interface {
	Counts() map[string]int64
}

// CPUFallback is a DeviceReporter for stages that move from their GPU to
// the CPU while they run (a decoder meeting a stream its GPU cannot
// decode, a hardware encoder that will not open): embed it and call
// FellBack when that happens. Safe for concurrent use.
type CPUFallback struct{ on atomic.Bool }

// FellBack records that the stage now runs on the CPU.
func (f *CPUFallback) FellBack() { f.on.Store(true) }

// Device is the CPU once the stage fell back, else "" (its bound device).
func (f *CPUFallback) Device() string {
	if f.on.Load() {
		return accelerators.CPUID
	}
	return ""
}
