package render

import (
	"math"
	"testing"
)

// TestCamera: a window of 270 over a source of 1280 (a 9:16 crop of a
// 1280x480 canvas), stepped at 30 fps along subject paths. The subject
// stays in the window's middle third on at least 95% of the frames of a
// sweep and of jumps; the pan never exceeds its speed and acceleration
// bounds except at cuts; a still subject in the dead zone never moves it;
// a lost subject holds it, then brings it back to the middle.
func TestCamera(t *testing.T) {
	const window, size, fps = 270.0, 1280.0, 30.0
	dt := 1 / fps
	sweep := func(i int) (float64, bool) { // across and back in 8 s
		p := math.Mod(float64(i)/(4*fps), 2)
		if p > 1 {
			p = 2 - p
		}
		return 200 + p*880, true
	}
	jumps := func(i int) (float64, bool) { // a new place every 3 s
		return []float64{300, 1000, 640, 150, 1100}[(i/int(3*fps))%5], true
	}
	still := func(int) (float64, bool) { return 660, true } // 20 px off the middle: inside the dead zone
	lost := func(i int) (float64, bool) { return 1000, i < 30 }
	tests := []struct {
		name       string
		path       func(int) (float64, bool)
		frames     int
		minInThird float64
		check      func(t *testing.T, c *Camera, xs []float64)
	}{
		{"sweep", sweep, 480, 0.95, nil},
		{"jumps", jumps, 450, 0.95, func(t *testing.T, c *Camera, _ []float64) {
			if c.Cuts != 4 {
				t.Errorf("%d cuts, want one per jump (4)", c.Cuts)
			}
		}},
		{"still", still, 120, 1, func(t *testing.T, _ *Camera, xs []float64) {
			for i, x := range xs {
				if x != xs[0] {
					t.Fatalf("frame %d: the window moved to %v from %v for a subject in the dead zone", i, x, xs[0])
				}
			}
		}},
		{"lost", lost, 150, 0, func(t *testing.T, c *Camera, xs []float64) {
			held := xs[30+int(0.8*fps)] // 0.8 s after the subject went: still where it was
			if math.Abs(held+window/2-1000) > 1 {
				t.Errorf("0.8 s after losing the subject the window is centred at %v, want it held at 1000", held+window/2)
			}
			if end := xs[len(xs)-1] + window/2; math.Abs(end-size/2) > 1 {
				t.Errorf("long after losing the subject the window is centred at %v, want the middle (%v)", end, size/2)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewCamera(window, size)
			var xs []float64
			in, seen := 0, 0
			for i := range tt.frames {
				target, found := tt.path(i)
				x := c.Step(dt, target, found)
				if x < 0 || x+window > size {
					t.Fatalf("frame %d: window at %v leaves the source", i, x)
				}
				xs = append(xs, x)
				if found {
					seen++
					if target >= x+window/3 && target <= x+2*window/3 {
						in++
					}
				}
			}
			if seen > 0 && tt.minInThird > 0 {
				if share := float64(in) / float64(seen); share < tt.minInThird {
					t.Errorf("subject in the middle third on %.1f%% of frames, want at least %.0f%%", 100*share, 100*tt.minInThird)
				}
			}
			checkBounds(t, c, xs, dt)
			if tt.check != nil {
				tt.check(t, c, xs)
			}
		})
	}
}

// checkBounds: between cuts, speed and acceleration stay within the
// camera's bounds (but for the frame a pan arrives on: its last step is
// the rest of the way, a fraction of a frame's motion).
func checkBounds(t *testing.T, c *Camera, xs []float64, dt float64) {
	t.Helper()
	vmax, amax := c.MaxSpeed*c.window, c.MaxAccel*c.window
	for i := 2; i < len(xs); i++ {
		v1, v0 := (xs[i]-xs[i-1])/dt, (xs[i-1]-xs[i-2])/dt
		if math.Abs(v1) > c.window/2/dt {
			continue // a cut
		}
		if math.Abs(v1) > vmax*1.001 {
			t.Fatalf("frame %d: speed %.0f px/s over the bound %.0f", i, v1, vmax)
		}
		arrives := i+1 < len(xs) && xs[i+1] == xs[i]
		if !arrives && math.Abs(v0) <= c.window/2/dt && math.Abs(v1-v0)/dt > amax*1.001+1e-9 {
			t.Fatalf("frame %d: acceleration %.0f px/s² over the bound %.0f", i, (v1-v0)/dt, amax)
		}
	}
}
