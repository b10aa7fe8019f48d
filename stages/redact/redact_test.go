package redact

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
	"github.com/vmihailenco/msgpack/v5"
)

func box(x1, y1, x2, y2 float32) envelope.Detection {
	return envelope.Detection{X1: x1, Y1: y1, X2: x2, Y2: y2, Score: .9, Class: 1, Label: "face"}
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name             string
		margin, strength float64
		ok               bool
	}{
		{"defaults", .25, .25, true},
		{"no margin", 0, .25, true},
		{"negative margin", -.1, .25, false},
		{"NaN margin", math.NaN(), .25, false},
		{"infinite margin", math.Inf(1), .25, false},
		{"zero strength", .25, 0, false},
		{"NaN strength", .25, math.NaN(), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := check(pipeline.Params{"margin": tt.margin, "strength": tt.strength}, "")
			if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrParams)) {
				t.Fatalf("check: %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

// frame returns an envelope with a w x h yuv420p frame whose every byte
// is a different-looking value (so a blur changes it), and copies of its
// planes.
func frame(t testing.TB, w, h int) (*stage.Msg, [3][]byte, [3]int) {
	t.Helper()
	f := astiav.AllocFrame()
	f.SetWidth(w)
	f.SetHeight(h)
	f.SetPixelFormat(astiav.PixelFormatYuv420P)
	if err := f.AllocBuffer(1); err != nil {
		f.Free()
		t.Fatal(err)
	}
	pl, st, err := codecs.YUVPlanes(f)
	if err != nil {
		f.Free()
		t.Fatal(err)
	}
	var before [3][]byte
	for p := range pl {
		for i := range pl[p] {
			pl[p][i] = byte((i*7919 + p*31) % 251) // no two neighbours alike
		}
		before[p] = append([]byte(nil), pl[p]...)
	}
	return codecs.FrameMsg(f, envelope.MediaVideo, astiav.NewRational(1, 30), astiav.NewRational(30, 1)), before, st
}

// redactOne runs a redact stage on one frame within limit and returns the
// frame's planes afterwards, checking it kept its size and format.
func redactOne(t testing.TB, s *Stage, e *stage.Msg, w, h int, limit time.Duration) ([3][]byte, []envelope.Detection) {
	t.Helper()
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
		t.Fatalf("redact took over %v on a %dx%d frame with %d detections", limit, w, h, len(e.Detections))
	}
	if r.err != nil || len(r.out) != 1 {
		t.Fatalf("redact: %d out, %v", len(r.out), r.err)
	}
	t.Cleanup(r.out[0].Release)
	f, err := codecs.FrameOf(r.out[0])
	if err != nil {
		t.Fatal(err)
	}
	if f.Width() != w || f.Height() != h || f.PixelFormat() != astiav.PixelFormatYuv420P {
		t.Fatalf("frame came out %dx%d %s, want %dx%d yuv420p", f.Width(), f.Height(), f.PixelFormat(), w, h)
	}
	pl, _, err := codecs.YUVPlanes(f)
	if err != nil {
		t.Fatal(err)
	}
	return pl, r.out[0].Detections
}

// TestRedactOutsideDetections: detections as an outside client may send
// them are hidden or dropped in bounded time, never a panic.
func TestRedactOutsideDetections(t *testing.T) {
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	tests := []struct {
		name    string
		d       envelope.Detection
		hidden  int64
		counted int64 // malformed_detections
	}{
		{"class -1", envelope.Detection{X1: .1, Y1: .1, X2: .5, Y2: .5, Score: .9, Class: -1}, 1, 0},
		{"box of -1e9..1e9", envelope.Detection{X1: -1e9, Y1: -1e9, X2: 1e9, Y2: 1e9, Score: .9}, 1, 0},
		{"infinite box", envelope.Detection{X1: -inf, Y1: -inf, X2: inf, Y2: inf}, 1, 0},
		{"x1 > x2", envelope.Detection{X1: .8, Y1: .8, X2: .2, Y2: .2, Score: .5}, 1, 0},
		{"NaN box", envelope.Detection{X1: nan, Y1: .1, X2: .5, Y2: nan}, 0, 1},
		{"NaN score", envelope.Detection{X1: .1, Y1: .1, X2: .5, Y2: .5, Score: nan}, 1, 0},
		{"negative track", envelope.Detection{X1: .1, Y1: .1, X2: .5, Y2: .5, Track: -1}, 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, _, _ := frame(t, 64, 48)
			e.Detections = []envelope.Detection{tt.d}
			s := &Stage{Hider: Hider{Mode: "blur", Margin: .25, Strength: .25}}
			_, out := redactOne(t, s, e, 64, 48, 10*time.Second)
			if s.Hidden != tt.hidden || int64(len(out)) != tt.hidden {
				t.Fatalf("hid %d regions, passed on %d detections; want %d", s.Hidden, len(out), tt.hidden)
			}
			if got := s.Status().Counts["malformed_detections"]; got != tt.counted {
				t.Fatalf("malformed_detections = %d, want %d", got, tt.counted)
			}
		})
	}
}

// FuzzRedact: any msgpack-encoded detections, on a frame of any size, in
// any mode, with any margin and strength, are hidden without a panic, in
// bounded time, and the frame keeps its size.
func FuzzRedact(f *testing.F) {
	modes := []string{"blur", "pixelate", "fill"}
	f.Fuzz(func(t *testing.T, w, h uint8, data []byte, mode byte, margin, strength float32) {
		var dets []envelope.Detection
		if msgpack.Unmarshal(data, &dets) != nil {
			return
		}
		W, H := max(int(w), 1), max(int(h), 1)
		e, _, _ := frame(t, W, H)
		e.Detections = dets
		s := &Stage{Hider: Hider{Mode: modes[int(mode)%len(modes)], Margin: margin, Strength: strength}}
		redactOne(t, s, e, W, H, 20*time.Second)
	})
}
