package infer

import (
	"testing"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/stages/infer/model"
)

func BenchmarkPreprocess640x480(b *testing.B) {
	f := astiav.AllocFrame()
	defer f.Free()
	f.SetWidth(640)
	f.SetHeight(480)
	f.SetPixelFormat(astiav.PixelFormatYuv420P)
	if err := f.AllocBuffer(0); err != nil {
		b.Fatal(err)
	}
	card, _ := model.Lookup("ultraface-rfb-320")
	p := newPreprocessor(card.Inputs[0])
	defer p.close()
	dst := make([]float32, 3*320*240)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, _, err := p.fill(f, dst); err != nil {
			b.Fatal(err)
		}
	}
}
