package envelope

import (
	"bytes"
	"errors"
	"testing"
)

// TestReassemblerBounds: a message over MaxBytes is refused, from its
// first part when the parts announce it, or at the part that passes the
// bound; what was held is let go, and the next message is joined.
func TestReassemblerBounds(t *testing.T) {
	big := func(count, size int) []Chunk {
		data := bytes.Repeat([]byte{7}, size) // every part shares it
		out := make([]Chunk, count)
		for i := range out {
			out[i] = Chunk{ID: 77, Index: i, Count: count, Data: data}
		}
		return out
	}
	short := big(4, 100)
	short[3].Data = short[3].Data[:10] // 310 bytes in all
	tests := []struct {
		name    string
		max     int
		parts   []Chunk
		refused int // the index of the part refused
	}{
		{"announced by the first part", 1000, big(1024, 100), 0},
		{"one part over", 50, big(1, 100), 0},
		{"a last part that is longer than the first", 250, append(big(2, 100)[:1], Chunk{ID: 77, Index: 1, Count: 2, Data: make([]byte, 200)}), 1},
		{"the default bound", 0, big(1024, 1<<20), 0},
		{"fits", 310, short, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Reassembler{MaxBytes: tt.max}
			for i, c := range tt.parts {
				out, err := r.Add(c)
				switch {
				case i == tt.refused:
					if !errors.Is(err, ErrChunk) || out != nil {
						t.Fatalf("part %d: got %d bytes, %v; want ErrChunk", i, len(out), err)
					}
					if r.Pending() != 0 {
						t.Fatalf("holds %d bytes after refusing the message", r.Pending())
					}
					next, _ := Split(78, []byte("next"), 2)
					for _, p := range next {
						out, err = r.Add(p)
					}
					if err != nil || string(out) != "next" {
						t.Fatalf("the next message: %q, %v", out, err)
					}
					return
				case err != nil:
					t.Fatalf("part %d: %v", i, err)
				case i == len(tt.parts)-1 && len(out) != 310:
					t.Fatalf("joined %d bytes, want 310", len(out))
				}
			}
			if tt.refused >= 0 {
				t.Fatalf("never refused")
			}
		})
	}
}
