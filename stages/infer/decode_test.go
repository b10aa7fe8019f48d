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
