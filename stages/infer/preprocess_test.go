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
	p := newPreprocessor(card.Inputs[0], 0, astiav.SoftwareScaleContextFlagBilinear)
	defer p.close()
	dst := make([]float32, 3*320*240)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, _, err := p.fill(f, dst); err != nil {
			b.Fatal(err)
		}
	}
}

func TestReflect(t *testing.T) {
	tests := []struct{ v, lo, hi, want int }{
		{5, 5, 8, 5}, {7, 5, 8, 7}, // inside
		{4, 5, 8, 6}, {3, 5, 8, 7}, // before: the edge pixel is not repeated
		{8, 5, 8, 6}, {9, 5, 8, 5},
		{2, 5, 8, 6}, {12, 5, 8, 6}, // beyond a whole reflection: it bounces back
		{3, 5, 6, 5}, // a picture one pixel wide
	}
	for _, tt := range tests {
		if got := reflect(tt.v, tt.lo, tt.hi); got != tt.want {
			t.Errorf("reflect(%d, %d, %d) = %d, want %d", tt.v, tt.lo, tt.hi, got, tt.want)
		}
	}
}

func TestMirror(t *testing.T) {
	const unset = -1
	tests := []struct {
		name       string
		tw, th, ch int
		nhwc       bool
		pic        rect
		pad        float64
		border     rect // what the mirror fills, the picture included
	}{
		{"border as wide as the tensor allows", 7, 5, 1, false, rect{2, 1, 5, 4}, 0.5, rect{0, 0, 7, 5}},
		{"letterbox space beyond the border stays", 11, 9, 1, false, rect{4, 3, 7, 6}, 0.5, rect{2, 1, 9, 8}},
		{"interleaved channels", 8, 6, 3, true, rect{2, 2, 6, 4}, 0.25, rect{1, 1, 7, 5}},
		{"planar channels", 8, 6, 3, false, rect{2, 2, 6, 4}, 0.25, rect{1, 1, 7, 5}},
		{"no pad", 6, 6, 1, false, rect{1, 1, 5, 5}, 0, rect{1, 1, 5, 5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			at := func(x, y, c int) int { return c*tt.tw*tt.th + y*tt.tw + x }
			if tt.nhwc {
				at = func(x, y, c int) int { return (y*tt.tw+x)*tt.ch + c }
			}
			pic := func(x, y, c int) float32 { return float32(100*c + 10*y + x) }
			dst := make([]float32, tt.tw*tt.th*tt.ch)
			for i := range dst {
				dst[i] = unset
			}
			for c := 0; c < tt.ch; c++ {
				for y := tt.pic.y1; y < tt.pic.y2; y++ {
					for x := tt.pic.x1; x < tt.pic.x2; x++ {
						dst[at(x, y, c)] = pic(x, y, c)
					}
				}
			}
			mirror(dst, tt.tw, tt.th, tt.ch, tt.nhwc, tt.pic, tt.pad)
			for c := 0; c < tt.ch; c++ {
				for y := 0; y < tt.th; y++ {
					for x := 0; x < tt.tw; x++ {
						want := float32(unset)
						if x >= tt.border.x1 && x < tt.border.x2 && y >= tt.border.y1 && y < tt.border.y2 {
							want = pic(reflect(x, tt.pic.x1, tt.pic.x2), reflect(y, tt.pic.y1, tt.pic.y2), c)
						}
						if got := dst[at(x, y, c)]; got != want {
							t.Fatalf("%d,%d channel %d: %v, want %v", x, y, c, got, want)
						}
					}
				}
			}
		})
	}
}

func TestSizeWithPad(t *testing.T) {
	stretch := model.Input{Name: "in", Shape: []int64{1, 3, 240, 320}, Resize: "stretch"}
	letterbox := model.Input{Name: "in", Shape: []int64{1, 3, 640, 640}, Resize: "letterbox"}
	fit := model.Input{Name: "in", Shape: []int64{1, 3, -1, -1}, Resize: "fit32", MaxSide: 960}
	tests := []struct {
		name           string
		in             model.Input
		pad            float64
		fw, fh         int
		tw, th, pw, ph int
	}{
		{"stretch, no pad", stretch, 0, 640, 480, 320, 240, 320, 240},
		{"stretch: the picture is 1/1.2 of the input", stretch, 0.1, 640, 480, 320, 240, 267, 200},
		{"letterbox: the frame and its border fit", letterbox, 0.1, 1280, 720, 640, 640, 533, 300},
		{"fit32: the frame and its border, rounded to 32", fit, 0.25, 640, 480, 960, 736, 640, 491},
		{"fit32, no pad", fit, 0, 640, 480, 640, 480, 640, 480},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPreprocessor(tt.in, tt.pad, astiav.SoftwareScaleContextFlagBilinear)
			defer p.close()
			tw, th, pw, ph, err := p.size(tt.fw, tt.fh)
			if err != nil || tw != tt.tw || th != tt.th || pw != tt.pw || ph != tt.ph {
				t.Fatalf("size = %d %d %d %d %v, want %d %d %d %d", tw, th, pw, ph, err, tt.tw, tt.th, tt.pw, tt.ph)
			}
		})
	}
}
