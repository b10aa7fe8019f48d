package onnx

import (
	"errors"
	"math"
	"os"
	"testing"
)

// TestFreeBatch: UltraFace's file declares batch 1; freed, it runs two
// images at once, and each gets what it gets alone. Without the rewrite
// ONNX Runtime refuses the batch.
func TestFreeBatch(t *testing.T) {
	path := ultraface(t)
	img := func(seed int) []float32 {
		d := make([]float32, 3*240*320)
		for i := range d {
			d[i] = float32((i*seed)%255)/128 - 1
		}
		return d
	}
	a, b := img(7), img(13)
	fixed, err := Open(path, Options{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer fixed.Close()
	both := Tensor{Shape: []int64{2, 3, 240, 320}, Data: append(append([]float32(nil), a...), b...)}
	if _, err := fixed.Run([]Tensor{both}, nil); err == nil {
		t.Fatal("the file as it is ran a batch of 2: the test proves nothing")
	}
	var alone [][]float32
	for _, d := range [][]float32{a, b} {
		out, err := fixed.Run([]Tensor{{Shape: []int64{1, 3, 240, 320}, Data: d}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		alone = append(alone, append([]float32(nil), out[0].Data...))
	}

	free, err := Open(path, Options{IntraOpThreads: 1, FreeBatch: []string{"input"}})
	if err != nil {
		t.Fatal(err)
	}
	defer free.Close()
	if free.Inputs[0].Shape[0] != -1 || free.Outputs[0].Shape[0] != -1 {
		t.Fatalf("freed shapes: in %v, out %v", free.Inputs[0].Shape, free.Outputs[0].Shape)
	}
	out, err := free.Run([]Tensor{both}, nil)
	if err != nil {
		t.Fatal(err)
	}
	scores := out[0].Data
	if len(scores) != 2*len(alone[0]) {
		t.Fatalf("batch scores: %d values, want %d", len(scores), 2*len(alone[0]))
	}
	for i, want := range alone {
		got := scores[i*len(want) : (i+1)*len(want)]
		for j := range want {
			if math.Abs(float64(got[j]-want[j])) > 1e-4 {
				t.Fatalf("image %d score %d: %v in the batch, %v alone", i, j, got[j], want[j])
			}
		}
	}
}

func TestFreeBatchRejectsGarbage(t *testing.T) {
	if _, err := FreeBatch([]byte{0x3a, 0xff}, []string{"input"}); !errors.Is(err, ErrNotONNX) {
		t.Errorf("a truncated field: %v, want ErrNotONNX", err)
	}
	raw, err := os.ReadFile(ultraface(t))
	if err != nil {
		t.Fatal(err)
	}
	same, err := FreeBatch(raw, []string{"no-such-input"})
	if err != nil {
		t.Fatal(err)
	}
	if len(same) == len(raw) {
		t.Errorf("the outputs were not freed (the rewrite changed nothing)")
	}
}

// FuzzFreeBatch: outside bytes never make it panic.
func FuzzFreeBatch(f *testing.F) {
	f.Add([]byte{0x3a, 0x02, 0x5a, 0x00})
	f.Add([]byte{0x3a, 0x06, 0x5a, 0x04, 0x12, 0x02, 0x0a, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) { _, _ = FreeBatch(b, []string{"input"}) })
}
