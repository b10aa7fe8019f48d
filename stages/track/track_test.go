package track

import (
	"testing"

	"github.com/avflow/avflow/pipeline/envelope"
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
