package accelerators_test

import (
	"fmt"

	"github.com/avflow/avflow/accelerators"
)

// Plan a three-stage pipeline for 16 streams at 30 fps from a measured
// profile: the GPU takes inference once the CPU would need too many cores.
func ExampleSolve() {
	prof := accelerators.Profile{
		Stages: []string{"decode", "infer", "encode"},
		Perf: map[string]map[string]accelerators.Measure{
			"decode": {"cpu": {FPS: 300, P99Ms: 4}},
			"infer":  {"cpu": {FPS: 20, P99Ms: 50}, "gpu": {FPS: 600, P99Ms: 8}},
			"encode": {"cpu": {FPS: 120, P99Ms: 10}},
		},
	}
	costs := accelerators.Costs{"cpu": {PricePerHour: 0.04}, "gpu": {PricePerHour: 0.80}}
	plan, err := accelerators.Solve(prof, costs, accelerators.Target{Streams: 16, FPS: 30, Objective: "cost"})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, c := range plan.Choices {
		fmt.Printf("%s on %s x%d\n", c.Stage, c.Device, c.Replicas)
	}
	fmt.Printf("$%.2f per hour\n", plan.PerHour)
	// Output:
	// decode on cpu x2
	// infer on gpu x1
	// encode on cpu x5
	// $1.08 per hour
}

// Bind a stage that asks for a GPU on a machine without one.
func ExampleBind() {
	inv := accelerators.Inventory{
		Devices: []accelerators.Device{{Kind: accelerators.CPU, ID: "cpu:0", Usable: true}},
		Absent:  []accelerators.Device{{Kind: accelerators.GPU, Name: "NVIDIA GPU", Reason: "no NVIDIA driver"}},
	}
	b, _ := accelerators.Bind(inv, accelerators.Request{Stage: "dec", Accelerator: "gpu",
		Supported: []accelerators.Kind{accelerators.CPU, accelerators.GPU}})
	fmt.Println(b.Device.ID, b.Fallback)
	fmt.Println(b.Why)
	// Output:
	// cpu:0 true
	// no usable gpu (NVIDIA GPU: no NVIDIA driver)
}
