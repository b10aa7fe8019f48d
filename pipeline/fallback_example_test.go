package pipeline_test

import (
	"fmt"

	"github.com/avflow/avflow/pipeline"
)

// A stage that may move from its GPU to the CPU while it runs embeds
// CPUFallback; the runner reads Device at every metrics snapshot.
func ExampleCPUFallback() {
	type encoder struct {
		pipeline.CPUFallback
		// ...
	}
	var enc encoder
	var _ pipeline.DeviceReporter = &enc
	fmt.Printf("%q\n", enc.Device()) // "" : the device it was bound to
	enc.FellBack()                   // the hardware encoder would not open
	fmt.Println(enc.Device())
	// Output:
	// ""
	// cpu:0
}
