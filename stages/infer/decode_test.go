package infer

import (
	"testing"
)

func TestNMS(t *testing.T) {
	in := []box{
		{X1: 0, Y1: 0, X2: .5, Y2: .5, Score: .9},
		{X1: .01, Y1: .01, X2: .5, Y2: .5, Score: .8},
		{X1: .6, Y1: .6, X2: .9, Y2: .9, Score: .7},
		{X1: .01, Y1: .01, X2: .5, Y2: .5, Score: .95, Class: 2},
	}
	out := nms(in, .5)
	if len(out) != 3 || out[0].Score != .95 || out[1].Score != .9 || out[2].Score != .7 {
		t.Fatalf("nms: %+v", out)
	}
}

func TestUnion(t *testing.T) {
	tests := []struct {
		name string
		in   []box
		want []box
	}{
		{"one place seen twice: the box covering both, the better score",
			[]box{{X1: .1, Y1: .1, X2: .5, Y2: .5, Score: .4}, {X1: .15, Y1: .05, X2: .55, Y2: .45, Score: .6, Label: "b"}},
			[]box{{X1: .1, Y1: .05, X2: .55, Y2: .5, Score: .6, Label: "b"}}},
		{"apart: both kept, best first",
			[]box{{X1: 0, Y1: 0, X2: .2, Y2: .2, Score: .4}, {X1: .5, Y1: .5, X2: .7, Y2: .7, Score: .6}},
			[]box{{X1: .5, Y1: .5, X2: .7, Y2: .7, Score: .6}, {X1: 0, Y1: 0, X2: .2, Y2: .2, Score: .4}}},
		{"touching a little: both kept",
			[]box{{X1: 0, Y1: 0, X2: .5, Y2: .5, Score: .4}, {X1: .4, Y1: .4, X2: .9, Y2: .9, Score: .6}},
			[]box{{X1: .4, Y1: .4, X2: .9, Y2: .9, Score: .6}, {X1: 0, Y1: 0, X2: .5, Y2: .5, Score: .4}}},
		{"other classes stay apart",
			[]box{{X1: .1, Y1: .1, X2: .5, Y2: .5, Score: .4}, {X1: .1, Y1: .1, X2: .5, Y2: .5, Score: .6, Class: 1}},
			[]box{{X1: .1, Y1: .1, X2: .5, Y2: .5, Score: .6, Class: 1}, {X1: .1, Y1: .1, X2: .5, Y2: .5, Score: .4}}},
		{"none", nil, []box{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := union(tt.in, .3)
			if len(got) != len(tt.want) {
				t.Fatalf("union = %+v, want %+v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("union = %+v, want %+v", got, tt.want)
				}
			}
		})
	}
}

func TestInFrame(t *testing.T) {
	// A 320x240 input holding a 267x200 picture at 26,20: a 0.1 pad.
	g := geometry{inW: 320, inH: 240, sx: 267.0 / 320, sy: 200.0 / 240, offX: 26.0 / 320, offY: 20.0 / 240}
	px := func(x1, y1, x2, y2 float32) box {
		return box{X1: x1 / 320, Y1: y1 / 240, X2: x2 / 320, Y2: y2 / 240, Score: .9}
	}
	got := inFrame([]box{
		px(0, 100, 20, 140),    // wholly in the left border: a reflection
		px(10, 100, 50, 140),   // across the left edge: cut back to the frame
		px(100, 60, 160, 120),  // inside
		px(300, 226, 320, 240), // in the bottom-right corner of the border
	}, g)
	if len(got) != 2 {
		t.Fatalf("kept %d boxes, want 2: %+v", len(got), got)
	}
	near := func(a, b float32) bool { return a-b < 1e-4 && b-a < 1e-4 }
	if b := got[0]; b.X1 != 0 || !near(b.X2, 24.0/267) || !near(b.Y1, 80.0/200) {
		t.Errorf("edge box %+v, want x 0..%.4f from y %.4f", b, 24.0/267, 80.0/200)
	}
	if b := got[1]; !near(b.X1, 74.0/267) || !near(b.Y2, 100.0/200) {
		t.Errorf("inner box %+v", b)
	}
}

func TestDecodeUltraFace(t *testing.T) {
	scores := []float32{.9, .1, .2, .8, .3, .7}
	boxes := []float32{0, 0, 1, 1, .1, .1, .3, .3, .11, .1, .31, .3}
	out := decodeUltraFace(scores, boxes, .6, .3)
	if len(out) != 1 || out[0].Score != .8 || out[0].X1 != .1 {
		t.Fatalf("%+v", out)
	}
}

func TestDecodeYOLOLayouts(t *testing.T) {
	// One box at (cx 50, cy 40, w 20, h 10) in a 100x80 input, class 1 of 2.
	v5 := []float32{50, 40, 20, 10, .9, .1, .8, 10, 10, 4, 4, .1, .9, .1}
	out := decodeYOLO(v5, []int64{1, 2, 7}, "v5", 100, 80, .5, .5)
	if len(out) != 1 || out[0].Class != 1 || out[0].X1 != .4 || out[0].Y1 != .4375 {
		t.Fatalf("v5: %+v", out)
	}
	// v8: [1, 4+2, 3] attributes first; box 2 wins class 0.
	v8 := []float32{
		10, 20, 50, // cx
		10, 20, 40, // cy
		4, 4, 20, // w
		4, 4, 10, // h
		.1, .2, .9, // class 0
		.1, .3, .2, // class 1
	}
	out = decodeYOLO(v8, []int64{1, 6, 3}, "v8", 100, 80, .5, .5)
	if len(out) != 1 || out[0].Class != 0 || out[0].Score != .9 || out[0].X2 != .6 {
		t.Fatalf("v8: %+v", out)
	}
}

func TestDecodeClassifier(t *testing.T) {
	out := decodeClassifier([]float32{1, 3, 2}, 2)
	if len(out) != 2 || out[0].Class != 1 || out[1].Class != 2 || out[0].Score < .6 {
		t.Fatalf("%+v", out)
	}
}

func TestDecodeDBNet(t *testing.T) {
	w, h := 40, 20
	prob := make([]float32, w*h)
	for y := 5; y < 10; y++ {
		for x := 4; x < 30; x++ {
			prob[y*w+x] = .9
		}
	}
	prob[15*w+35] = .9 // a speck: too small
	out := decodeDBNet(prob, w, h, .3, .6, 1.5)
	if len(out) != 1 {
		t.Fatalf("%+v", out)
	}
	b := out[0]
	if b.X1 >= 4.0/40 || b.X2 <= 30.0/40 || b.Y1 >= 5.0/20 || b.Y2 <= 10.0/20 {
		t.Fatalf("box does not cover the region (unclipped): %+v", b)
	}
}

func TestDecodeCTC(t *testing.T) {
	charset := []string{"A", "B", "C"}
	classes := 5 // blank, A, B, C, space
	steps := [][]float32{
		{0, 1, 0, 0, 0}, {0, 1, 0, 0, 0}, {1, 0, 0, 0, 0}, {0, 1, 0, 0, 0},
		{0, 0, 0, 0, 1}, {0, 0, 0, 1, 0}, {1, 0, 0, 0, 0},
	}
	var probs []float32
	for _, s := range steps {
		probs = append(probs, s...)
	}
	text, score := decodeCTC(probs, len(steps), classes, charset, true)
	if text != "AA C" || score != 1 {
		t.Fatalf("got %q %v", text, score)
	}
}
