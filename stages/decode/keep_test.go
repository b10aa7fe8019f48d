package decode

import (
	"testing"

	"github.com/avflow/avflow/accelerators"
	"github.com/avflow/avflow/pipeline"
)

func TestKeepOnDevice(t *testing.T) {
	gpu := accelerators.Device{Kind: accelerators.GPU, ID: "cuda:0"}
	tests := []struct {
		format     string
		downstream []string
		want       bool
	}{
		{"auto", nil, false},                                  // NATS edges, or nothing takes the frames
		{"auto", []string{"cpu:0"}, false},                    // a CPU consumer: copy back here
		{"auto", []string{"cuda:0"}, true},                    // a GPU filter or NVENC on the same GPU
		{"auto", []string{"cuda:0", "cpu:0"}, true},           // one copy either way
		{"auto", []string{"cuda:0", "cpu:0", "cpu:0"}, false}, // two copies off vs one
		{"auto", []string{"cuda:1"}, false},                   // another GPU
		{"device", nil, true},
		{"planar", []string{"cuda:0"}, false},
		{"native", []string{"cuda:0"}, false},
	}
	for _, tt := range tests {
		in := pipeline.Init{Device: gpu, Downstream: tt.downstream, Params: pipeline.Params{"hw_format": tt.format}}
		if got := keepOnDevice(in); got != tt.want {
			t.Errorf("%s with %v downstream: %v, want %v", tt.format, tt.downstream, got, tt.want)
		}
	}
}
