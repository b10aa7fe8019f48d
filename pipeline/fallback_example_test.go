package pipeline_test

import (
	"context"
	"fmt"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/stage"
)

// A stage that may move from its GPU to the CPU while it runs embeds
// CPUFallback and reports its Device in Status, which the runner reads at
// every metrics snapshot.
func ExampleCPUFallback() {
	var enc encoder
	fmt.Printf("%q\n", enc.Status().Device) // "" : the device it was bound to
	enc.FellBack()                          // the hardware encoder would not open
	fmt.Println(enc.Status().Device)
	// Output:
	// ""
	// cpu:0
}

type encoder struct {
	stage.Base
	pipeline.CPUFallback
	// ...
}

func (e *encoder) Process(ctx context.Context, in stage.Batch) (stage.Batch, error) { return nil, nil }

func (e *encoder) Status() stage.Status { return stage.Status{Device: e.Device()} }

var _ stage.Stage = &encoder{}
