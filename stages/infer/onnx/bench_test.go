package onnx

import (
	"testing"

	ort "github.com/yalue/onnxruntime_go"
)

// BenchmarkRun compares this package's Session.Run with onnxruntime_go's
// AdvancedSession.Run on the same model and threads.
func BenchmarkRun(b *testing.B) {
	path := ultraface(b)
	for _, threads := range []int{1, 2} {
		s, err := Open(path, Options{IntraOpThreads: threads, Spin: true}) // ORT defaults, like the bare session
		if err != nil {
			b.Fatal(err)
		}
		in := Tensor{Shape: []int64{1, 3, 240, 320}, Data: make([]float32, 3*240*320)}
		bin, _ := ort.NewTensor(ort.NewShape(1, 3, 240, 320), make([]float32, 3*240*320))
		sc, _ := ort.NewEmptyTensor[float32](ort.NewShape(1, 4420, 2))
		bx, _ := ort.NewEmptyTensor[float32](ort.NewShape(1, 4420, 4))
		so, _ := ort.NewSessionOptions()
		_ = so.SetIntraOpNumThreads(threads)
		bare, err := ort.NewAdvancedSession(path, []string{"input"}, []string{"scores", "boxes"}, []ort.Value{bin}, []ort.Value{sc, bx}, so)
		if err != nil {
			b.Fatal(err)
		}
		b.Run("avflow/threads="+string(rune('0'+threads)), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if _, err := s.Run([]Tensor{in}, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("bare/threads="+string(rune('0'+threads)), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if err := bare.Run(); err != nil {
					b.Fatal(err)
				}
			}
		})
		s.Close()
		bare.Destroy()
		so.Destroy()
		bin.Destroy()
		sc.Destroy()
		bx.Destroy()
	}
}
