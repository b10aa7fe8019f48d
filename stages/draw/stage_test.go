package draw

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
	"github.com/vmihailenco/msgpack/v5"
)

// frame returns an envelope holding a black yuv420p frame of w x h.
func frame(t testing.TB, w, h int) *stage.Msg {
	t.Helper()
	f := astiav.AllocFrame()
	f.SetWidth(w)
	f.SetHeight(h)
	f.SetPixelFormat(astiav.PixelFormatYuv420P)
	if err := f.AllocBuffer(1); err != nil {
		f.Free()
		t.Fatal(err)
	}
	if err := f.ImageFillBlack(); err != nil {
		f.Free()
		t.Fatal(err)
	}
	return codecs.FrameMsg(f, envelope.MediaVideo, astiav.NewRational(1, 30), astiav.NewRational(30, 1))
}

// drawOn runs a draw stage on one w x h frame carrying dets, within limit,
// and checks the frame that comes out is still a w x h yuv420p frame.
func drawOn(t testing.TB, w, h int, dets []envelope.Detection, limit time.Duration) []envelope.Detection {
	t.Helper()
	e := frame(t, w, h)
	e.Detections = dets
	s := &Stage{thick: 2, scale: 2, labels: true}
	type result struct {
		out stage.Batch
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := s.Process(context.Background(), stage.Batch{e})
		done <- result{out, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-time.After(limit):
		t.Fatalf("draw took over %v on a %dx%d frame with %d detections", limit, w, h, len(dets))
	}
	if r.err != nil || len(r.out) != 1 {
		t.Fatalf("draw: %d out, %v", len(r.out), r.err)
	}
	defer r.out[0].Release()
	f, err := codecs.FrameOf(r.out[0])
	if err != nil {
		t.Fatal(err)
	}
	if f.Width() != w || f.Height() != h || f.PixelFormat() != astiav.PixelFormatYuv420P {
		t.Fatalf("frame came out %dx%d %s, want %dx%d yuv420p", f.Width(), f.Height(), f.PixelFormat(), w, h)
	}
	return r.out[0].Detections
}

// TestDrawOutsideDetections: detections as an outside client may send
// them (negative class or track id, boxes a billion frames wide, NaN,
// infinite, upside down, huge labels) are drawn or dropped in bounded
// time, never a panic; what goes on is inside the frame.
func TestDrawOutsideDetections(t *testing.T) {
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	tests := []struct {
		name string
		d    envelope.Detection
		kept bool
	}{
		{"class -1", envelope.Detection{X1: .1, Y1: .1, X2: .5, Y2: .5, Score: .9, Class: -1}, true},
		{"negative class and track", envelope.Detection{X1: .1, Y1: .1, X2: .5, Y2: .5, Score: .9, Class: -7, Track: -3}, true},
		{"smallest class", envelope.Detection{X1: .1, Y1: .1, X2: .5, Y2: .5, Class: math.MinInt32}, true},
		{"box of -1e9..1e9", envelope.Detection{X1: -1e9, Y1: -1e9, X2: 1e9, Y2: 1e9, Score: .9}, true},
		{"infinite box", envelope.Detection{X1: -inf, Y1: -inf, X2: inf, Y2: inf}, true},
		{"x1 > x2", envelope.Detection{X1: .8, Y1: .8, X2: .2, Y2: .2, Score: .5}, true},
		{"NaN box", envelope.Detection{X1: nan, Y1: .1, X2: .5, Y2: nan}, false},
		{"NaN score", envelope.Detection{X1: .1, Y1: .1, X2: .5, Y2: .5, Score: nan}, true},
		{"megabyte label", envelope.Detection{X1: .1, Y1: .1, X2: .5, Y2: .5, Label: strings.Repeat("W", 1<<20)}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := drawOn(t, 64, 48, []envelope.Detection{tt.d}, 10*time.Second)
			if (len(out) == 1) != tt.kept {
				t.Fatalf("%d detections passed on, want kept=%v", len(out), tt.kept)
			}
			for _, d := range out {
				if !(d.X1 >= 0 && d.X1 < d.X2 && d.X2 <= 1 && d.Y1 >= 0 && d.Y1 < d.Y2 && d.Y2 <= 1) {
					t.Fatalf("passed on a box outside the frame: %+v", d)
				}
			}
		})
	}
}

func TestColourOfAnyClass(t *testing.T) {
	for _, c := range []int32{0, 1, 5, 6, -1, -6, -7, math.MinInt32, math.MaxInt32} {
		got := colourOf(envelope.Detection{Class: c})
		if want := palette[((int(c)%len(palette))+len(palette))%len(palette)]; got != want {
			t.Errorf("class %d: colour %v, want %v", c, got, want)
		}
	}
	if colourOf(envelope.Detection{Class: 1, Track: 2}) != palette[2] {
		t.Error("a tracked detection takes its track's colour")
	}
}

// FuzzDraw: any msgpack-encoded detections on a frame of any size are
// drawn without a panic, in bounded time, and the frame keeps its size.
func FuzzDraw(f *testing.F) {
	f.Fuzz(func(t *testing.T, w, h uint8, data []byte) {
		var dets []envelope.Detection
		if msgpack.Unmarshal(data, &dets) != nil {
			return
		}
		drawOn(t, max(int(w), 1), max(int(h), 1), dets, 20*time.Second)
	})
}

// TestDrawCountsMalformedDetections: what the guard drops is counted for
// the run's metrics (stage.Status.Counts).
func TestDrawCountsMalformedDetections(t *testing.T) {
	s := &Stage{thick: 2, scale: 2}
	nan := float32(math.NaN())
	for range 2 {
		e := frame(t, 64, 48)
		e.Detections = []envelope.Detection{{X1: nan, Y1: 0, X2: 0.5, Y2: 0.5}, {X1: 0.1, Y1: 0.1, X2: 0.2, Y2: 0.2, Score: 1}}
		out, err := s.Process(context.Background(), stage.Batch{e})
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range out {
			o.Release()
		}
		e.Release()
	}
	if got := s.Status().Counts["malformed_detections"]; got != 2 {
		t.Fatalf("malformed_detections = %d, want 2", got)
	}
}
