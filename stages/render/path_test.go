package render

import (
	"math"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
)

// TestPath: frames at 30 fps go through a look-ahead of 0.3 s. Each is
// held until 9 more have come (none with no look-ahead); every frame
// comes out once and in order (the rest at the end, as Flush takes
// them). The aim on a frame is: for a subject moving steadily, where it
// is (no lag, no lead); for a still subject the detector jitters, its
// mean place (the jitter shrinks); just before it stops, short of it
// (the window slows in time); before a jump, its place before the jump,
// and its place after it from the jump's own frame on (a steady subject
// is aimed where it is up to the jump: the frames either side are as
// many); without a
// subject on the frame, none; with no look-ahead, the frame's own.
func TestPath(t *testing.T) {
	const fps, dt = 30, 1.0 / 30
	jitter := []float64{0, 6, -6, 4, -4, 8, -8, 2, -2, 0}
	tests := []struct {
		name      string
		lookAhead float64
		x         func(i int) (float64, bool) // the subject on frame i
		check     func(t *testing.T, i int, got aim)
	}{
		{"steady", 0.3, func(i int) (float64, bool) { return 100 + 4*float64(i), true }, func(t *testing.T, i int, got aim) {
			if i >= 9 && i < 50 && math.Abs(got.x-(100+4*float64(i))) > 1e-9 {
				t.Errorf("frame %d: aim %.2f, want the subject's place %d", i, got.x, 100+4*i)
			}
		}},
		{"jitter", 0.3, func(i int) (float64, bool) { return 500 + jitter[i%len(jitter)], true }, func(t *testing.T, i int, got aim) {
			if i >= 9 && i < 50 && math.Abs(got.x-500) > 1.5 {
				t.Errorf("frame %d: aim %.2f, want within 1.5 px of 500 (the subject jitters by 8)", i, got.x)
			}
		}},
		{"stop", 0.3, func(i int) (float64, bool) { return 100 + 4*float64(min(i, 30)), true }, func(t *testing.T, i int, got aim) {
			if i > 21 && i < 30 && !(got.x < 100+4*float64(i)) {
				t.Errorf("frame %d: aim %.2f, want short of the subject at %d: it stops at frame 30", i, got.x, 100+4*i)
			}
		}},
		{"jump", 0.3, func(i int) (float64, bool) { return map[bool]float64{true: 1000, false: 200}[i >= 30], true }, func(t *testing.T, i int, got aim) {
			want := map[bool]float64{true: 1000, false: 200}[i >= 30]
			if got.x != want {
				t.Errorf("frame %d: aim %.2f, want %.0f (the jump is on frame 30, not before)", i, got.x, want)
			}
		}},
		{"steady, then a jump", 0.3, func(i int) (float64, bool) {
			return map[bool]float64{true: 1000, false: 100 + 4*float64(i)}[i >= 30], true
		}, func(t *testing.T, i int, got aim) {
			want := map[bool]float64{true: 1000, false: 100 + 4*float64(i)}[i >= 30]
			if math.Abs(got.x-want) > 1e-9 {
				t.Errorf("frame %d: aim %.2f, want the subject's place %.0f (as many frames either side, up to the jump)", i, got.x, want)
			}
		}},
		{"lost", 0.3, func(i int) (float64, bool) { return 300, i < 20 || i > 40 }, func(t *testing.T, i int, got aim) {
			if got.found != (i < 20 || i > 40) {
				t.Errorf("frame %d: found %v, want the frame's own", i, got.found)
			}
		}},
		{"none", 0, func(i int) (float64, bool) { return 100 + 4*float64(i), true }, func(t *testing.T, i int, got aim) {
			if got.x != 100+4*float64(i) {
				t.Errorf("frame %d: aim %.2f, want the frame's own %d", i, got.x, 100+4*i)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p path
			var out []int
			take := func() {
				m, d, a := p.next(135, 135, tt.lookAhead)
				if d != dt {
					t.Fatalf("duration %v, want %v", d, dt)
				}
				i := int(m.PTS)
				out = append(out, i)
				tt.check(t, i, a)
			}
			for i := range 60 {
				x, found := tt.x(i)
				p.add(stage.New(envelope.Envelope{PTS: int64(i)}, nil), dt, aim{x: x, y: 240, found: found})
				for p.due(tt.lookAhead) {
					take()
				}
				if want := max(0, i+1-int(math.Round(tt.lookAhead*fps))); len(out) != want {
					t.Fatalf("after frame %d: %d frames out, want %d (%v of look-ahead)", i, len(out), want, tt.lookAhead)
				}
			}
			for p.held() > 0 {
				take()
			}
			for i, got := range out {
				if got != i {
					t.Fatalf("frames out in the order %v", out)
				}
			}
			if len(out) != 60 {
				t.Fatalf("%d frames out, want 60", len(out))
			}
		})
	}
}

// TestPathWithoutDurations: frames that carry no duration (nor a rate)
// are held no more than the look-ahead's length at 60 fps (18 for 0.3
// s), not without end.
func TestPathWithoutDurations(t *testing.T) {
	var p path
	most := 0
	for i := range 100 {
		p.add(stage.New(envelope.Envelope{PTS: int64(i)}, nil), 0, aim{x: 100, found: true})
		most = max(most, p.held())
		for p.due(0.3) {
			p.next(135, 135, 0.3)
		}
	}
	if most != 19 || p.held() != 18 {
		t.Fatalf("at most %d frames held (%d at the end), want 19 at the most (18 after the oldest) and 18", most, p.held())
	}
}

// TestLookAheadWhereTheWindowMoves: frames are held only where the
// window can move: not with follow none, nor where the window is the
// whole frame (the source layout).
func TestLookAheadWhereTheWindowMoves(t *testing.T) {
	tests := []struct {
		layout, follow string
		want           float64
	}{
		{"vertical", "face", 0.3},
		{"vertical", "none", 0},
		{"source", "face", 0},
		{"landscape", "", 0}, // a 16:9 window of a 16:9 frame
		{"square", "", 0.3},
	}
	for _, tt := range tests {
		geo, err := newGeometry(tt.layout, 1280, 720, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		s := &Stage{geo: geo, p: pipeline.Params{"follow": tt.follow, "look_ahead": 300 * time.Millisecond}}
		if got := s.lookAhead(); got != tt.want {
			t.Errorf("%s, follow %q: look-ahead %v, want %v", tt.layout, tt.follow, got, tt.want)
		}
	}
}
