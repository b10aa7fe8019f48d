package envelope

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// HeaderChunk is the NATS header set on each part of a chunked message:
// "<message id> <index> <count>", index counting from 0. A message without
// the header is whole.
const HeaderChunk = "Avflow-Chunk"

// ErrChunk reports a chunk sequence that cannot be reassembled.
var ErrChunk = errors.New("envelope: bad chunk")

// MaxChunks bounds how many chunks one message may have (with 1 MiB chunks, 1 GiB).
const MaxChunks = 1024

// DefaultMaxMessageBytes is the largest message a Reassembler joins unless
// told otherwise: an 8192x8192 RGBA frame, the largest a filter makes.
const DefaultMaxMessageBytes = 256 << 20

// Chunk is one part of a split message.
type Chunk struct {
	ID    uint64
	Index int
	Count int
	Data  []byte
}

// Header renders the chunk's header value.
func (c Chunk) Header() string {
	return strconv.FormatUint(c.ID, 10) + " " + strconv.Itoa(c.Index) + " " + strconv.Itoa(c.Count)
}

// ParseChunkHeader parses a HeaderChunk value.
func ParseChunkHeader(v string) (id uint64, index, count int, err error) {
	f := strings.Fields(v)
	if len(f) != 3 {
		return 0, 0, 0, fmt.Errorf("%w: header %q", ErrChunk, v)
	}
	id, err1 := strconv.ParseUint(f[0], 10, 64)
	index, err2 := strconv.Atoi(f[1])
	count, err3 := strconv.Atoi(f[2])
	if err := errors.Join(err1, err2, err3); err != nil {
		return 0, 0, 0, fmt.Errorf("%w: header %q", ErrChunk, v)
	}
	if count < 1 || count > MaxChunks || index < 0 || index >= count {
		return 0, 0, 0, fmt.Errorf("%w: index %d of %d", ErrChunk, index, count)
	}
	return id, index, count, nil
}

// Split cuts b into parts of at most max bytes. A b that fits is one part.
// The parts alias b; nothing is copied.
func Split(id uint64, b []byte, max int) ([]Chunk, error) {
	if max <= 0 {
		return nil, fmt.Errorf("%w: chunk size %d", ErrChunk, max)
	}
	n := (len(b) + max - 1) / max
	if n == 0 {
		n = 1
	}
	if n > MaxChunks {
		return nil, fmt.Errorf("%w: %d bytes need %d chunks of %d, over %d", ErrChunk, len(b), n, max, MaxChunks)
	}
	out := make([]Chunk, n)
	for i := range out {
		lo, hi := i*max, min((i+1)*max, len(b))
		out[i] = Chunk{ID: id, Index: i, Count: n, Data: b[lo:hi]}
	}
	return out, nil
}

// Reassembler joins the chunks of one producer's messages, which NATS
// delivers in order. A gap or a new id before the last part drops the partial
// message and reports ErrChunk; the next message starts fresh. It holds one
// partial message at most, of at most MaxBytes: a message that would be
// larger is refused from its first part on.
type Reassembler struct {
	// MaxBytes is the largest message it joins (0: DefaultMaxMessageBytes).
	MaxBytes int

	id    uint64
	next  int
	count int
	buf   []byte
}

func (r *Reassembler) maxBytes() int {
	if r.MaxBytes > 0 {
		return r.MaxBytes
	}
	return DefaultMaxMessageBytes
}

// Pending is the number of bytes it holds of a partial message.
func (r *Reassembler) Pending() int { return len(r.buf) }

// Add takes one chunk. It returns the whole message once its last part arrives.
func (r *Reassembler) Add(c Chunk) ([]byte, error) {
	if c.Count < 1 || c.Count > MaxChunks || c.Index < 0 || c.Index >= c.Count {
		r.reset()
		return nil, fmt.Errorf("%w: index %d of %d", ErrChunk, c.Index, c.Count)
	}
	if c.Index == 0 {
		lost := r.next != 0
		r.reset()
		// Every part but the last is as long as the first.
		if max := r.maxBytes(); len(c.Data) > max || (c.Count-1)*len(c.Data) > max {
			return nil, fmt.Errorf("%w: message %d of %d parts of %d bytes is over %d bytes", ErrChunk, c.ID, c.Count, len(c.Data), max)
		}
		r.id, r.count = c.ID, c.Count
		if c.Count == 1 {
			r.reset()
			return append([]byte(nil), c.Data...), nil
		}
		r.buf = append([]byte(nil), c.Data...)
		r.next = 1
		if lost {
			return nil, fmt.Errorf("%w: message %d lost its tail", ErrChunk, r.id)
		}
		return nil, nil
	}
	if c.ID != r.id || c.Index != r.next || c.Count != r.count {
		r.reset()
		return nil, fmt.Errorf("%w: got part %d/%d of message %d, expected part %d of message %d", ErrChunk, c.Index, c.Count, c.ID, r.next, r.id)
	}
	if max := r.maxBytes(); len(r.buf)+len(c.Data) > max {
		r.reset()
		return nil, fmt.Errorf("%w: message %d is over %d bytes", ErrChunk, c.ID, max)
	}
	r.buf = append(r.buf, c.Data...)
	r.next++
	if r.next < r.count {
		return nil, nil
	}
	out := r.buf
	r.buf = nil
	r.next, r.count = 0, 0
	return out, nil
}

// reset drops the partial message and the memory it held.
func (r *Reassembler) reset() {
	r.buf = nil
	r.next, r.count = 0, 0
}
