// Package pipeline loads, validates and runs avflow pipelines: graphs of
// stages connected by NATS subjects. The interface a stage implements and
// the messages it handles are package stage's; how a stage is registered
// (Spec), configured (Params) and built (Init) is this package's.
package pipeline

import (
	"context"
	"log/slog"
	"sync/atomic"

	"github.com/avflow/avflow/accelerators"
	"github.com/nats-io/nats.go"
)

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
	// Bus is the run's NATS connection, for a stage that asks a shared
	// service (the infer stage's remote: true); nil over the local
	// transport, which has no NATS.
	Bus *nats.Conn
}

// Graph edits a running pipeline (the Runner implements it): see
// Runner.AddStages and Runner.RemoveStages.
type Graph interface {
	AddStages(ctx context.Context, stagesYAML []byte) error
	// AddBranch adds stages whose failure ends only them (reported to
	// onFail), not the pipeline: see Runner.AddBranch.
	AddBranch(ctx context.Context, stagesYAML []byte, onFail func(stage string, err error)) error
	RemoveStages(ctx context.Context, names ...string) error
}

// Path resolves a path param against the pipeline file's folder.
func (in Init) Path(p string) string { return ResolvePath(in.Dir, p) }

// CPUFallback is for stages that move from their GPU to the CPU while
// they run (a decoder meeting a stream its GPU cannot decode, a hardware
// encoder that will not open): embed it, call FellBack when that happens
// and return its Device as the stage's Status().Device (embedding alone
// reports nothing: stage.Base's Status is empty). Safe for concurrent use.
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
