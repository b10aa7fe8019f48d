package draw

import (
	"testing"

	"github.com/avflow/avflow/pipeline/envelope"
)

func TestLabel(t *testing.T) {
	tests := []struct {
		d    envelope.Detection
		want string
	}{
		{envelope.Detection{Label: "face", Score: .934, Track: 7}, "face 93% #7"},
		{envelope.Detection{Label: "text", Text: "SCORE 1234", Score: .5}, "SCORE 1234 50%"},
		{envelope.Detection{Score: 1}, "100%"},
	}
	for _, tt := range tests {
		if got := Label(tt.d); got != tt.want {
			t.Errorf("Label(%+v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

func TestFontCoversLabels(t *testing.T) {
	for _, r := range "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ.#:-% " {
		if _, ok := font5x7[r]; !ok {
			t.Errorf("no glyph for %q", r)
		}
	}
}

func TestCanvasDrawsInside(t *testing.T) {
	w, h := 16, 8
	c := canvas{w: w, h: h, st: [3]int{w, w / 2, w / 2}}
	c.pl[0], c.pl[1], c.pl[2] = make([]byte, w*h), make([]byte, w/2*h/2), make([]byte, w/2*h/2)
	c.rect(-5, -5, 100, 100, colour{200, 1, 2}) // clipped, no panic
	c.rect(2, 2, 5, 5, colour{200, 1, 2})
	if c.pl[0][2*w+2] != 200 || c.pl[0][3*w+3] != 0 {
		t.Fatalf("rect outline wrong")
	}
}
