package detections

import (
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/avflow/avflow/pipeline/envelope"
)

func TestFix(t *testing.T) {
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	box := func(x1, y1, x2, y2 float32) envelope.Detection {
		return envelope.Detection{X1: x1, Y1: y1, X2: x2, Y2: y2, Score: .8, Class: 1}
	}
	with := func(d envelope.Detection, f func(*envelope.Detection)) envelope.Detection { f(&d); return d }
	tests := []struct {
		name string
		in   envelope.Detection
		want envelope.Detection
		ok   bool
	}{
		{"valid box unchanged", box(.1, .2, .3, .4), box(.1, .2, .3, .4), true},
		{"huge box covers the frame", box(-1e9, -1e9, 1e9, 1e9), box(0, 0, 1, 1), true},
		{"infinite box covers the frame", box(-inf, -inf, inf, inf), box(0, 0, 1, 1), true},
		{"x1 > x2 and y1 > y2 swapped", box(.6, .7, .2, .3), box(.2, .3, .6, .7), true},
		{"partly outside clamped", box(-.2, .5, .4, 1.5), box(0, .5, .4, 1), true},
		{"NaN x1 dropped", box(nan, .1, .2, .3), envelope.Detection{}, false},
		{"NaN y2 dropped", box(.1, .1, .2, nan), envelope.Detection{}, false},
		{"wholly outside dropped", box(1.1, .1, 1.5, .3), envelope.Detection{}, false},
		{"zero width dropped", box(.3, .1, .3, .3), envelope.Detection{}, false},
		{"negative class kept", with(box(.1, .1, .2, .2), func(d *envelope.Detection) { d.Class = -1 }),
			with(box(.1, .1, .2, .2), func(d *envelope.Detection) { d.Class = -1 }), true},
		{"negative track cleared", with(box(.1, .1, .2, .2), func(d *envelope.Detection) { d.Track = -5 }), box(.1, .1, .2, .2), true},
		{"NaN score is 0", with(box(.1, .1, .2, .2), func(d *envelope.Detection) { d.Score = nan }),
			with(box(.1, .1, .2, .2), func(d *envelope.Detection) { d.Score = 0 }), true},
		{"score clamped", with(box(.1, .1, .2, .2), func(d *envelope.Detection) { d.Score = 1e30 }),
			with(box(.1, .1, .2, .2), func(d *envelope.Detection) { d.Score = 1 }), true},
		{"long label cut", with(box(.1, .1, .2, .2), func(d *envelope.Detection) { d.Label = strings.Repeat("a", 1<<20) }),
			with(box(.1, .1, .2, .2), func(d *envelope.Detection) { d.Label = strings.Repeat("a", MaxText) }), true},
		{"long text cut on a character", with(box(.1, .1, .2, .2), func(d *envelope.Detection) { d.Text = "a" + strings.Repeat("é", MaxText) }),
			with(box(.1, .1, .2, .2), func(d *envelope.Detection) { d.Text = "a" + strings.Repeat("é", MaxText/2-1) }), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := Fix(tt.in)
			if ok != tt.ok {
				t.Fatalf("Fix(%+v) ok = %v, want %v", tt.in, ok, tt.ok)
			}
			if ok && got != tt.want {
				t.Fatalf("Fix(%+v) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestSanitize(t *testing.T) {
	good := envelope.Detection{X1: .1, Y1: .1, X2: .2, Y2: .2, Score: .5}
	bad := envelope.Detection{X1: float32(math.NaN()), X2: .2, Y2: .2}
	huge := envelope.Detection{X1: -1e9, Y1: -1e9, X2: 1e9, Y2: 1e9}
	many := make([]envelope.Detection, MaxPerFrame+10)
	for i := range many {
		many[i] = good
	}
	tests := []struct {
		name           string
		in             []envelope.Detection
		wantN, dropped int
		same           bool // the input slice itself comes back
	}{
		{"none", nil, 0, 0, true},
		{"all valid: same slice", []envelope.Detection{good, good}, 2, 0, true},
		{"one NaN dropped", []envelope.Detection{good, bad, good}, 2, 1, false},
		{"huge box kept, clamped", []envelope.Detection{huge}, 1, 0, false},
		{"too many cut to the limit", many, MaxPerFrame, 10, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := append([]envelope.Detection(nil), tt.in...)
			got, dropped := Sanitize(tt.in)
			if len(got) != tt.wantN || dropped != tt.dropped {
				t.Fatalf("got %d detections, %d dropped; want %d, %d", len(got), dropped, tt.wantN, tt.dropped)
			}
			if same := len(got) > 0 && len(tt.in) > 0 && &got[0] == &tt.in[0]; same != (tt.same && len(got) > 0) {
				t.Fatalf("returned the input slice: %v, want %v", same, tt.same)
			}
			if fmt.Sprint(before) != fmt.Sprint(tt.in) {
				t.Fatal("the input detections were modified")
			}
			for _, d := range got {
				if _, ok := Fix(d); !ok || !(d.X1 >= 0 && d.X1 < d.X2 && d.X2 <= 1 && d.Y1 >= 0 && d.Y1 < d.Y2 && d.Y2 <= 1) {
					t.Fatalf("unusable detection kept: %+v", d)
				}
			}
		})
	}
}
