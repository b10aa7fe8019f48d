package envelope

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

func sample() *Envelope {
	return &Envelope{
		Kind: KindFrame, Media: MediaVideo, Stream: "src.video", Seq: 42,
		PTS: 3000, DTS: 3000, Duration: 1000, TimeBase: Rational{1, 30000}, Key: true,
		Video:   &VideoFormat{PixFmt: "yuv420p", Width: 4, Height: 2, Strides: []int32{4, 2, 2}, FrameRate: Rational{30, 1}},
		Payload: []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12},
		Meta:    map[string]string{"k": "v"},
		Stamps:  []Stamp{{Stage: "src", At: 1}, {Stage: "dec", At: 2}},
	}
}

func TestRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		in   *Envelope
	}{
		{"video frame", sample()},
		{"audio frame", &Envelope{Kind: KindFrame, Media: MediaAudio, Audio: &AudioFormat{SampleFmt: "fltp", SampleRate: 48000, Channels: 2, ChannelMask: 3, Samples: 1024}, Payload: make([]byte, 8192)}},
		{"packet", &Envelope{Kind: KindPacket, Media: MediaVideo, Codec: &CodecParams{Codec: "h264", ExtraData: []byte{1, 100}, Width: 1920, Height: 1080, Format: "yuv420p", FrameRate: Rational{25, 1}}, Payload: []byte{0, 0, 1}}},
		{"eos", &Envelope{Kind: KindEOS, Stream: "x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := Marshal(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Unmarshal(b)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.in) {
				t.Fatalf("round trip changed the envelope:\n got %+v\nwant %+v", got, tt.in)
			}
		})
	}
}

func TestUnmarshalRejects(t *testing.T) {
	wire := func(h map[string]any, payload any) []byte {
		b, err := msgpack.Marshal([]any{h, payload})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	future := wire(map[string]any{"v": Version + 1, "k": 1}, nil)
	noVersion := wire(map[string]any{"k": 1}, nil)
	badKind := wire(map[string]any{"v": 1, "k": 99}, nil)
	frameNoFmt := wire(map[string]any{"v": 1, "k": 2}, nil)
	good := wire(map[string]any{"v": 1, "k": 4}, []byte("abc"))
	lying := append([]byte(nil), good...)
	lying[len(lying)-4] = 9 // bin length 9, 3 bytes present
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"garbage", []byte{0xc1, 0xff, 0x00}, ErrMalformed},
		{"empty", nil, ErrMalformed},
		{"future version", future, ErrVersion},
		{"no version", noVersion, ErrMalformed},
		{"unknown kind", badKind, ErrMalformed},
		{"frame without format", frameNoFmt, ErrMalformed},
		{"payload length lies", lying, ErrMalformed},
		{"trailing bytes", append(append([]byte(nil), good...), 0), ErrMalformed},
		{"plain map (no array)", wire(map[string]any{"v": 1}, nil)[1:], ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Unmarshal(tt.in); !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

// Other msgpack libraries read the envelope as a plain [map, bin] array.
func TestWireIsPlainMsgpack(t *testing.T) {
	b, err := Marshal(sample())
	if err != nil {
		t.Fatal(err)
	}
	var v []any
	if err := msgpack.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	h, ok := v[0].(map[string]any)
	if len(v) != 2 || !ok || h["sid"] != "src.video" || !bytes.Equal(v[1].([]byte), sample().Payload) {
		t.Fatalf("decoded as %#v", v)
	}
	if _, err := Unmarshal([]byte{0x92}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("short message: %v", err)
	}
}

func TestSplitReassemble(t *testing.T) {
	payload := bytes.Repeat([]byte("avflow"), 1000) // 6000 bytes
	for _, max := range []int{1, 7, 1000, 5999, 6000, 6001, 1 << 20} {
		parts, err := Split(9, payload, max)
		if err != nil {
			if max == 1 { // 6000 chunks > MaxChunks
				continue
			}
			t.Fatal(err)
		}
		var r Reassembler
		var got []byte
		for i, p := range parts {
			id, idx, n, err := ParseChunkHeader(p.Header())
			if err != nil || id != 9 || idx != i || n != len(parts) {
				t.Fatalf("header %q parsed to %d %d %d %v", p.Header(), id, idx, n, err)
			}
			out, err := r.Add(p)
			if err != nil {
				t.Fatal(err)
			}
			if out != nil {
				if i != len(parts)-1 {
					t.Fatalf("max %d: message complete after part %d of %d", max, i, len(parts))
				}
				got = out
			}
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("max %d: reassembled %d bytes, want %d", max, len(got), len(payload))
		}
	}
}

func TestReassemblerRecoversFromGap(t *testing.T) {
	a, _ := Split(1, bytes.Repeat([]byte{1}, 30), 10)
	b, _ := Split(2, bytes.Repeat([]byte{2}, 30), 10)
	var r Reassembler
	r.Add(a[0])
	if _, err := r.Add(a[2]); !errors.Is(err, ErrChunk) {
		t.Fatalf("gap not reported: %v", err)
	}
	var out []byte
	for _, c := range b {
		o, err := r.Add(c)
		if err != nil {
			t.Fatal(err)
		}
		out = o
	}
	if !bytes.Equal(out, bytes.Repeat([]byte{2}, 30)) {
		t.Fatal("next message not reassembled after a gap")
	}
}

func FuzzUnmarshal(f *testing.F) {
	b, _ := Marshal(sample())
	f.Add(b)
	f.Add([]byte{0x80})
	withSrc := sample()
	withSrc.Src = &Origin{Stream: "dec.out", Seq: 9, After: 7}
	b, _ = Marshal(withSrc)
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := Unmarshal(data)
		if err != nil {
			return
		}
		// Whatever decodes must encode and decode to the same thing.
		b, err := Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		e2, err := Unmarshal(b)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(e, e2) {
			t.Fatalf("unstable round trip: %+v vs %+v", e, e2)
		}
	})
}

func FuzzChunks(f *testing.F) {
	f.Add([]byte("hello world"), uint16(3), "1 0 2")
	f.Add(bytes.Repeat([]byte("x"), 100), uint16(10), "77 0 1024") // announces a message over MaxBytes
	f.Add(bytes.Repeat([]byte("y"), 5000), uint16(1000), "1 0 2")  // is one
	f.Fuzz(func(t *testing.T, data []byte, max uint16, header string) {
		r := Reassembler{MaxBytes: 4096}
		if id, idx, n, err := ParseChunkHeader(header); err == nil {
			_, _ = r.Add(Chunk{ID: id, Index: idx, Count: n, Data: data})
		}
		if r.Pending() > r.MaxBytes {
			t.Fatalf("holds %d bytes, over its %d", r.Pending(), r.MaxBytes)
		}
		parts, err := Split(5, data, int(max))
		if err != nil {
			return
		}
		var got []byte
		for _, p := range parts {
			out, err := r.Add(p)
			if err != nil && p.Index != 0 && len(data) <= r.MaxBytes {
				t.Fatalf("in-order part %d rejected: %v", p.Index, err)
			}
			if out != nil {
				got = out
			}
			if r.Pending() > r.MaxBytes {
				t.Fatalf("holds %d bytes, over its %d", r.Pending(), r.MaxBytes)
			}
		}
		if len(data) > r.MaxBytes {
			if got != nil {
				t.Fatalf("joined a message of %d bytes, over its %d", len(got), r.MaxBytes)
			}
			return
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("reassembled %q, want %q", got, data)
		}
	})
}
