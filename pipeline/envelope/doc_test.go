package envelope

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// mpReader is a msgpack reader written from the msgpack spec for this test
// alone, independent of the library avflow encodes with: docs/envelope.md
// must be readable by anyone's msgpack code, not only by ours. Values come
// back as JSON-ready Go values: ints and floats as json.Number, bin as
// {"$bin": "<hex>"}.
type mpReader struct {
	b []byte
	i int
}

var errShort = errors.New("msgpack: short input")

func (r *mpReader) take(n int) ([]byte, error) {
	if n < 0 || r.i+n > len(r.b) {
		return nil, errShort
	}
	out := r.b[r.i : r.i+n]
	r.i += n
	return out, nil
}

func (r *mpReader) uint(n int) (uint64, error) {
	b, err := r.take(n)
	if err != nil {
		return 0, err
	}
	var v uint64
	for _, c := range b {
		v = v<<8 | uint64(c)
	}
	return v, nil
}

func (r *mpReader) value() (any, error) {
	t, err := r.take(1)
	if err != nil {
		return nil, err
	}
	c := t[0]
	switch {
	case c <= 0x7f:
		return json.Number(strconv.Itoa(int(c))), nil
	case c >= 0xe0:
		return json.Number(strconv.Itoa(int(int8(c)))), nil
	case c >= 0x80 && c <= 0x8f:
		return r.mapOf(int(c & 0x0f))
	case c >= 0x90 && c <= 0x9f:
		return r.arrayOf(int(c & 0x0f))
	case c >= 0xa0 && c <= 0xbf:
		return r.str(int(c & 0x1f))
	}
	size := map[byte]int{0xc4: 1, 0xc5: 2, 0xc6: 4, 0xd9: 1, 0xda: 2, 0xdb: 4, 0xdc: 2, 0xdd: 4, 0xde: 2, 0xdf: 4,
		0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8, 0xd0: 1, 0xd1: 2, 0xd2: 4, 0xd3: 8, 0xca: 4, 0xcb: 8}
	switch c {
	case 0xc0:
		return nil, nil
	case 0xc2:
		return false, nil
	case 0xc3:
		return true, nil
	}
	n, ok := size[c]
	if !ok {
		return nil, fmt.Errorf("msgpack: type byte %#x not handled", c)
	}
	v, err := r.uint(n)
	if err != nil {
		return nil, err
	}
	switch c {
	case 0xc4, 0xc5, 0xc6:
		b, err := r.take(int(v))
		return map[string]any{"$bin": hex.EncodeToString(b)}, err
	case 0xd9, 0xda, 0xdb:
		return r.str(int(v))
	case 0xdc, 0xdd:
		return r.arrayOf(int(v))
	case 0xde, 0xdf:
		return r.mapOf(int(v))
	case 0xcc, 0xcd, 0xce, 0xcf:
		return json.Number(strconv.FormatUint(v, 10)), nil
	case 0xd0:
		return json.Number(strconv.Itoa(int(int8(v)))), nil
	case 0xd1:
		return json.Number(strconv.Itoa(int(int16(v)))), nil
	case 0xd2:
		return json.Number(strconv.Itoa(int(int32(v)))), nil
	case 0xd3:
		return json.Number(strconv.FormatInt(int64(v), 10)), nil
	case 0xca:
		return json.Number(strconv.FormatFloat(float64(math.Float32frombits(uint32(v))), 'g', -1, 32)), nil
	default: // 0xcb
		return json.Number(strconv.FormatFloat(math.Float64frombits(v), 'g', -1, 64)), nil
	}
}

func (r *mpReader) str(n int) (any, error) {
	b, err := r.take(n)
	return string(b), err
}

func (r *mpReader) arrayOf(n int) (any, error) {
	out := make([]any, 0, min(n, 64))
	for range n {
		v, err := r.value()
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

func (r *mpReader) mapOf(n int) (any, error) {
	out := map[string]any{}
	for range n {
		k, err := r.value()
		if err != nil {
			return nil, err
		}
		ks, ok := k.(string)
		if !ok {
			return nil, fmt.Errorf("msgpack: map key %v is not a string", k)
		}
		if out[ks], err = r.value(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// docExample is one example of docs/envelope.md: its bytes and its JSON.
type docExample struct {
	name string
	wire []byte
	json string
}

var exampleRE = regexp.MustCompile("(?s)<!-- example (\\w+) -->\\s*```hex\\n(.*?)```\\s*```json\\n(.*?)```")

func docExamples(t *testing.T) []docExample {
	t.Helper()
	doc, err := os.ReadFile("../../docs/envelope.md")
	if err != nil {
		t.Fatal(err)
	}
	var out []docExample
	for _, m := range exampleRE.FindAllSubmatch(doc, -1) {
		wire, err := hex.DecodeString(strings.Join(strings.Fields(string(m[2])), ""))
		if err != nil {
			t.Fatalf("example %s: %v", m[1], err)
		}
		out = append(out, docExample{name: string(m[1]), wire: wire, json: string(m[3])})
	}
	if len(out) < 4 {
		t.Fatalf("docs/envelope.md has %d examples, want eos, data, frame and packet", len(out))
	}
	return out
}

// canonical renders a JSON-ready value with sorted keys and numbers as written.
func canonical(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestEnvelopeDocExamples: every example of docs/envelope.md decodes, with
// a msgpack reader independent of avflow's, to the JSON beside it; avflow
// reads it, and writes the very same bytes back.
func TestEnvelopeDocExamples(t *testing.T) {
	for _, ex := range docExamples(t) {
		t.Run(ex.name, func(t *testing.T) {
			r := &mpReader{b: ex.wire}
			got, err := r.value()
			if err != nil {
				t.Fatal(err)
			}
			if r.i != len(ex.wire) {
				t.Fatalf("%d bytes after the array", len(ex.wire)-r.i)
			}
			dec := json.NewDecoder(strings.NewReader(ex.json))
			dec.UseNumber()
			var want any
			if err := dec.Decode(&want); err != nil {
				t.Fatalf("the example's JSON: %v", err)
			}
			if g, w := canonical(t, got), canonical(t, want); g != w {
				t.Fatalf("the bytes decode to\n%s\nthe document says\n%s", g, w)
			}
			e, err := Unmarshal(ex.wire)
			if err != nil {
				t.Fatalf("avflow does not read the example: %v", err)
			}
			back, err := Marshal(e)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(back, ex.wire) {
				t.Fatalf("avflow writes the message as\n%x\nnot as the document shows\n%x", back, ex.wire)
			}
		})
	}
}

// TestEnvelopeDocChunks: the document's reassembly rule (concatenate the
// parts in index order) gives back the message, for a frame split as a
// publisher splits it.
func TestEnvelopeDocChunks(t *testing.T) {
	var frame []byte
	for _, ex := range docExamples(t) {
		if ex.name == "frame" {
			frame = ex.wire
		}
	}
	parts, err := Split(1, frame, 64)
	if err != nil {
		t.Fatal(err)
	}
	var joined []byte
	for i, p := range parts {
		id, idx, n, err := ParseChunkHeader(p.Header())
		if err != nil || id != 1 || idx != i || n != len(parts) {
			t.Fatalf("part %d header %q: %d %d %d %v", i, p.Header(), id, idx, n, err)
		}
		joined = append(joined, p.Data...)
	}
	if !bytes.Equal(joined, frame) {
		t.Fatal("concatenated parts differ from the message")
	}
	if len(parts) < 2 {
		t.Fatal("the frame example should need several parts at 64 bytes")
	}
}
