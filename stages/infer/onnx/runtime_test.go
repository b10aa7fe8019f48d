package onnx

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/avflow/avflow/accelerators"
	"github.com/avflow/avflow/pipeline/e2e"
)

func ultraface(t testing.TB) string {
	dir := os.Getenv("AVFLOW_MODEL_MIRROR")
	if dir == "" {
		dir = e2e.Models(t)
	}
	p := filepath.Join(dir, "ultraface", "version-RFB-320.onnx")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("model not found: %v", err)
	}
	return p
}

func TestRunUltraFace(t *testing.T) {
	s, err := Open(ultraface(t), Options{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if len(s.Inputs) != 1 || s.Inputs[0].Name != "input" || len(s.Outputs) != 2 {
		t.Fatalf("unexpected model io: %+v %+v", s.Inputs, s.Outputs)
	}
	in := Tensor{Shape: []int64{1, 3, 240, 320}, Data: make([]float32, 3*240*320)}
	out, err := s.Run([]Tensor{in}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 || len(out[0].Data) != 4420*2 || len(out[1].Data) != 4420*4 {
		t.Fatalf("outputs: %d tensors", len(out))
	}
	v, _, _ := Version()
	if v != WantVersion {
		t.Fatalf("version %s", v)
	}
}

func TestOpenRejectsBadModel(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.onnx")
	if err := os.WriteFile(bad, []byte("not a model"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(bad, Options{}); !errors.Is(err, ErrModel) {
		t.Fatalf("got %v, want ErrModel", err)
	}
}

// TestMachineSeesTheRuntime: discovery for runs lists this runtime's CPU
// provider, so infer stages can bind to the providers it has.
func TestMachineSeesTheRuntime(t *testing.T) {
	if err := Init(); err != nil {
		t.Fatal(err)
	}
	inv := accelerators.Machine("")
	if inv.KindOf("ort:CPUExecutionProvider") != accelerators.CPU {
		t.Fatalf("the runtime at %s is not in the machine's inventory: %+v", LibraryPath(), inv.Devices)
	}
}
