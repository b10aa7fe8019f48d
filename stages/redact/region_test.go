package redact

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline/envelope"
)

func TestRegion(t *testing.T) {
	nan := float32(math.NaN())
	tests := []struct {
		name   string
		d      envelope.Detection
		margin float32
		w, h   int
		want   rect
		ok     bool
	}{
		{"no margin", box(.25, .25, .75, .75), 0, 100, 100, rect{25, 25, 75, 75}, true},
		{"margin on every side", box(.2, .4, .4, .6), .25, 100, 100, rect{15, 35, 45, 65}, true},
		{"end rounds, start truncates", box(.101, .101, .204, .206), 0, 100, 100, rect{10, 10, 20, 21}, true},
		{"left edge: a cut box grows by its larger side, clamps to 0", box(0, .4, .1, .6), .5, 100, 100, rect{0, 30, 20, 70}, true},
		{"right edge clamps to the width", box(.9, .4, 1, .6), .5, 100, 100, rect{79, 30, 100, 70}, true},
		{"top edge: the margin below a cut face is as wide as an uncut one's", box(.4, 0, .6, .1), .5, 100, 100, rect{30, 0, 70, 20}, true},
		{"bottom edge clamps to the height", box(.4, .9, .6, 1), .5, 100, 100, rect{30, 79, 70, 100}, true},
		{"corner", box(.95, .95, 1, 1), 1, 64, 48, rect{57, 42, 64, 48}, true},
		{"inside: no growth beyond the margin", box(.1, .4, .2, .6), .5, 100, 100, rect{5, 30, 25, 70}, true},
		{"odd size, right and bottom edges", box(.9, .9, 1, 1), 0, 641, 481, rect{576, 432, 641, 481}, true},
		{"whole frame with a huge margin", box(.4, .4, .6, .6), 1e30, 641, 481, rect{0, 0, 641, 481}, true},
		{"under 2 pixels wide", box(.5, .1, .505, .9), 0, 100, 100, rect{50, 10, 51, 90}, false},
		{"under 2 pixels tall", box(.1, .5, .9, .505), 0, 100, 100, rect{10, 50, 90, 51}, false},
		{"NaN margin hides nothing rather than everything", box(.1, .1, .9, .9), nan, 100, 100, rect{0, 0, 0, 0}, false},
		{"1x1 frame", box(0, 0, 1, 1), .25, 1, 1, rect{0, 0, 1, 1}, false},
		{"2x2 frame", box(0, 0, 1, 1), .25, 2, 2, rect{0, 0, 2, 2}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := region(tt.d, tt.margin, tt.w, tt.h)
			if got != tt.want || ok != tt.ok {
				t.Fatalf("region = %+v, %v; want %+v, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestChroma(t *testing.T) {
	tests := []struct{ luma, want rect }{
		{rect{0, 0, 64, 48}, rect{0, 0, 32, 24}},
		{rect{3, 5, 9, 11}, rect{1, 2, 5, 6}},                // odd edges round outwards
		{rect{576, 432, 641, 481}, rect{288, 216, 321, 241}}, // 641x481: chroma is 321x241
		{rect{1, 1, 2, 2}, rect{0, 0, 1, 1}},
	}
	for _, tt := range tests {
		if got := tt.luma.chroma(); got != tt.want {
			t.Errorf("%+v.chroma() = %+v, want %+v", tt.luma, got, tt.want)
		}
	}
}

func TestBlurSize(t *testing.T) {
	tests := []struct {
		strength float32
		r        rect
		want     int
	}{
		{.2, rect{0, 0, 100, 50}, 20},
		{.2, rect{0, 0, 50, 100}, 20},  // the larger side
		{.01, rect{0, 0, 100, 100}, 2}, // at least 2
		{5, rect{0, 0, 100, 40}, 100},  // at most the larger side
		{1e30, rect{0, 0, 7, 3}, 7},
	}
	for _, tt := range tests {
		if got := blurSize(tt.strength, tt.r); got != tt.want {
			t.Errorf("blurSize(%v, %+v) = %d, want %d", tt.strength, tt.r, got, tt.want)
		}
	}
}

// TestHideRegions: on frames of odd and even sizes, boxes in the middle,
// at each edge, at a corner and beyond the frame are hidden exactly over
// their region (luma and both chroma planes), and nothing outside it
// changes, in every mode.
func TestHideRegions(t *testing.T) {
	boxes := []struct {
		name string
		d    envelope.Detection
	}{
		{"middle", box(.4, .4, .6, .6)},
		{"left edge", box(0, .3, .15, .6)},
		{"right edge", box(.85, .3, 1, .6)},
		{"top edge", box(.3, 0, .6, .15)},
		{"bottom edge", box(.3, .85, .6, 1)},
		{"corner", box(.9, .9, 1, 1)},
		{"half outside", box(.9, -.2, 1.3, .2)},
	}
	sizes := [][2]int{{64, 48}, {65, 49}, {33, 17}}
	for _, mode := range []string{"fill", "blur", "pixelate"} {
		for _, sz := range sizes {
			for _, b := range boxes {
				w, h := sz[0], sz[1]
				t.Run(fmt.Sprintf("%s/%s/%dx%d", mode, b.name, w, h), func(t *testing.T) {
					e, before, st := frame(t, w, h)
					e.Detections = []envelope.Detection{b.d}
					s := &Stage{Hider: Hider{Mode: mode, Margin: .25, Strength: .25}}
					after, _ := redactOne(t, s, e, w, h, 10*time.Second)
					fixed := b.d
					fixed.X1, fixed.Y1, fixed.X2, fixed.Y2 = max(fixed.X1, 0), max(fixed.Y1, 0), min(fixed.X2, 1), min(fixed.Y2, 1)
					r, ok := region(fixed, .25, w, h)
					if !ok {
						t.Fatalf("test box %+v hides nothing", b.d)
					}
					for p := 0; p < 3; p++ {
						pr, pw, ph := r, w, h
						if p > 0 {
							pr, pw, ph = r.chroma(), (w+1)/2, (h+1)/2
						}
						changed := 0
						for y := 0; y < ph; y++ {
							for x := 0; x < pw; x++ {
								i := y*st[p] + x
								in := x >= pr.x1 && x < pr.x2 && y >= pr.y1 && y < pr.y2
								if !in && after[p][i] != before[p][i] {
									t.Fatalf("plane %d: pixel %d,%d outside the region %+v changed", p, x, y, pr)
								}
								if in && after[p][i] != before[p][i] {
									changed++
								}
								if want := byte(16 + 112*min(p, 1)); in && mode == "fill" && after[p][i] != want {
									t.Fatalf("plane %d: pixel %d,%d in the region %+v is %d, want %d", p, x, y, pr, after[p][i], want)
								}
							}
						}
						if area := (pr.x2 - pr.x1) * (pr.y2 - pr.y1); changed < area/2 {
							t.Fatalf("plane %d: only %d of the region's %d pixels changed", p, changed, area)
						}
					}
					if s.Hidden != 1 {
						t.Fatalf("Hidden = %d, want 1", s.Hidden)
					}
				})
			}
		}
	}
}
