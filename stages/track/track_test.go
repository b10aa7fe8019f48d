package track

import (
	"context"
	"math"
	"testing"

	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
)

func det(x float32) envelope.Detection {
	return envelope.Detection{X1: x, Y1: .4, X2: x + .2, Y2: .6, Score: .9, Class: 1}
}

func TestTrackIDsStableAndCarried(t *testing.T) {
	tr := NewTracker(Config{IoU: .3, MaxAge: 3})
	a := tr.Update([]envelope.Detection{det(.1), det(.6)}, true)
	if a[0].Track == 0 || a[1].Track == 0 || a[0].Track == a[1].Track {
		t.Fatalf("ids: %+v", a)
	}
	// Both faces move right by .02 per frame; the model runs every 3rd frame.
	b := tr.Update([]envelope.Detection{det(.66), det(.12)}, true)
	if b[0].Track != a[1].Track || b[1].Track != a[0].Track {
		t.Fatalf("ids not kept: %+v then %+v", a, b)
	}
	c := tr.Update(nil, false)
	if len(c) != 2 || !c[0].Kept || c[0].Track == 0 || c[1].Track == 0 {
		t.Fatalf("skipped frame should carry 2 boxes with their ids: %+v", c)
	}
	for _, d := range c {
		if d.Track == a[0].Track && d.X1 <= .12 {
			t.Fatalf("carried box did not move with its velocity: %+v", d)
		}
	}
	// Without detections, tracks expire after MaxAge frames.
	for i := 0; i < 4; i++ {
		tr.Update(nil, true)
	}
	if got := tr.Update(nil, false); len(got) != 0 {
		t.Fatalf("tracks did not expire: %+v", got)
	}
	// A new face gets a new id.
	d := tr.Update([]envelope.Detection{det(.3)}, true)
	if d[0].Track <= b[0].Track {
		t.Fatalf("new track reused an id: %+v", d)
	}
}

// TestStageOutsideDetections: boxes as an outside client may send them
// (NaN, infinite, a billion frames wide, upside down, negative ids) never
// give a track NaN or out-of-frame boxes, on the frame they arrive on or
// on the frames the tracker carries them over.
func TestStageOutsideDetections(t *testing.T) {
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	tests := []struct {
		name string
		d    envelope.Detection
		kept bool
	}{
		{"NaN box", envelope.Detection{X1: nan, Y1: .1, X2: .3, Y2: .3, Class: 1}, false},
		{"NaN score", envelope.Detection{X1: .1, Y1: .1, X2: .3, Y2: .3, Score: nan, Class: 1}, true},
		{"infinite box", envelope.Detection{X1: -inf, Y1: -inf, X2: inf, Y2: inf, Class: 1}, true},
		{"box of -1e9..1e9", envelope.Detection{X1: -1e9, Y1: -1e9, X2: 1e9, Y2: 1e9, Class: 1}, true},
		{"x1 > x2", envelope.Detection{X1: .5, Y1: .5, X2: .1, Y2: .1, Class: 1}, true},
		{"negative class and track", envelope.Detection{X1: .1, Y1: .1, X2: .3, Y2: .3, Class: -1, Track: -4}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &Stage{cfg: Config{IoU: .3, MaxAge: 5, Grow: .1}, trackers: map[string]*Tracker{}}
			for i := 0; i < 4; i++ {
				e := &stage.Msg{Envelope: envelope.Envelope{Kind: envelope.KindFrame, Media: envelope.MediaVideo, Stream: "cam"}}
				if i%2 == 0 { // inferred frames carry the box, the others are carried over
					e.Meta = map[string]string{"infer.m": "1"}
					e.Detections = []envelope.Detection{tt.d}
				}
				out, err := s.Process(context.Background(), stage.Batch{e})
				if err != nil || len(out) != 1 {
					t.Fatalf("frame %d: %d out, %v", i, len(out), err)
				}
				if got := len(out[0].Detections); (got == 1) != tt.kept || got > 1 {
					t.Fatalf("frame %d: %d boxes, want kept=%v", i, got, tt.kept)
				}
				for _, d := range out[0].Detections {
					if !(d.X1 >= 0 && d.X1 < d.X2 && d.X2 <= 1 && d.Y1 >= 0 && d.Y1 < d.Y2 && d.Y2 <= 1) || d.Track <= 0 || d.Score != d.Score {
						t.Fatalf("frame %d: unusable box %+v", i, d)
					}
				}
			}
		})
	}
}
