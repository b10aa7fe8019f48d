package inferwire_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/stages/infer/inferwire"
	"github.com/vmihailenco/msgpack/v5"
)

func request(w, h, c int) inferwire.Request {
	return inferwire.Request{Model: "m", Caller: "p/s/i", W: w, H: h, C: c, Pixels: make([]byte, w*h*c)}
}

func TestRequestRoundTrip(t *testing.T) {
	r := request(4, 3, 3)
	r.Threshold = 0.5
	r.Pixels[5] = 7
	b, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := inferwire.UnmarshalRequest(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.V != inferwire.Version || got.Model != "m" || got.W != 4 || got.H != 3 || got.C != 3 || got.Threshold != 0.5 || got.Pixels[5] != 7 {
		t.Errorf("round trip gave %+v", got)
	}
}

// TestRequestBounds: every request that breaks a bound is refused as
// malformed, naming what is wrong.
func TestRequestBounds(t *testing.T) {
	edit := func(f func(*inferwire.Request)) inferwire.Request {
		r := request(4, 3, 3)
		r.V = inferwire.Version
		f(&r)
		return r
	}
	tests := []struct {
		name string
		r    inferwire.Request
		want string
	}{
		{"version 0", edit(func(r *inferwire.Request) { r.V = 0 }), "version 0"},
		{"a later version", edit(func(r *inferwire.Request) { r.V = inferwire.Version + 1 }), "version 2"},
		{"no width", edit(func(r *inferwire.Request) { r.W = 0 }), "image 0x3"},
		{"too wide", edit(func(r *inferwire.Request) { r.W = inferwire.MaxSide + 1 }), "each side"},
		{"2 channels", edit(func(r *inferwire.Request) { r.C = 2 }), "2 channels"},
		{"short pixels", edit(func(r *inferwire.Request) { r.Pixels = r.Pixels[:10] }), "10 bytes of pixels"},
		{"too big", edit(func(r *inferwire.Request) { r.W, r.H = 4096, 4096 }), "at most"},
		{"negative threshold", edit(func(r *inferwire.Request) { r.Threshold = -1 }), "threshold -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := msgpack.Marshal(&tt.r)
			if err != nil {
				t.Fatal(err)
			}
			_, err = inferwire.UnmarshalRequest(b)
			if !errors.Is(err, inferwire.ErrMalformed) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want ErrMalformed naming %q", err, tt.want)
			}
		})
	}
}

func TestReplyRoundTrip(t *testing.T) {
	r := inferwire.Reply{Boxes: []envelope.Detection{{X1: 0.1, Y1: 0.2, X2: 0.3, Y2: 0.4, Score: 0.9, Label: "face"}}}
	b, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := inferwire.UnmarshalReply(b)
	if err != nil || len(got.Boxes) != 1 || got.Boxes[0] != r.Boxes[0] {
		t.Fatalf("round trip gave %+v, %v", got, err)
	}
	if _, err := inferwire.UnmarshalReply([]byte{0x81, 0xa1, 'v', 0x09}); !errors.Is(err, inferwire.ErrMalformed) {
		t.Errorf("a reply of version 9: %v", err)
	}
}

// FuzzUnmarshalRequest: outside bytes never panic, and what parses
// keeps the bounds.
func FuzzUnmarshalRequest(f *testing.F) {
	r := request(2, 2, 3)
	b, _ := r.Marshal()
	f.Add(b)
	f.Add([]byte{0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := inferwire.UnmarshalRequest(b)
		if err == nil && len(r.Pixels) != r.W*r.H*r.C {
			t.Fatalf("accepted %d pixel bytes for %dx%dx%d", len(r.Pixels), r.W, r.H, r.C)
		}
	})
}

// FuzzUnmarshalReply: outside bytes never panic.
func FuzzUnmarshalReply(f *testing.F) {
	r := inferwire.Reply{Boxes: []envelope.Detection{{X2: 1, Y2: 1, Score: 1}}}
	b, _ := r.Marshal()
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) { _, _ = inferwire.UnmarshalReply(b) })
}

// A caller writes one image and reads the boxes back.
func Example() {
	req := inferwire.Request{Model: "ultraface-rfb-320", Caller: "cams/faces/1", W: 320, H: 240, C: 3, Pixels: make([]byte, 320*240*3)}
	body, _ := req.Marshal()
	fmt.Println(inferwire.Subject(req.Model), inferwire.ServiceName(req.Model), len(body) > 320*240*3)
	// Output: avflow.infer.ultraface-rfb-320 avflow-infer-ultraface-rfb-320 true
}
