// Package envelope defines the versioned msgpack message that carries media
// between avflow stages over NATS subjects.
//
// Wire format (version 1): a msgpack array of two elements,
//
//	[ header, payload ]
//
// where header is a msgpack map with the short keys listed on the struct
// fields below, and payload is msgpack bin (or nil). Any msgpack library
// decodes it; avflow itself decodes the header and takes the payload in
// place, without copying it. Unknown header keys are ignored, so later minor
// additions stay readable by older consumers; a message whose "v" is higher
// than [Version] is refused with [ErrVersion].
//
// A message larger than the server's max payload is split into chunks; see
// [Split] and [Reassembler]. docs/envelope.md documents every key, type,
// unit and sentinel, with example bytes.
package envelope

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/vmihailenco/msgpack/v5"
)

// Version is the envelope version this build writes and the highest it reads.
const Version = 1

// Exported sentinels, checked with errors.Is.
var (
	ErrVersion   = errors.New("envelope: unsupported version")
	ErrMalformed = errors.New("envelope: malformed message")
)

// Kind tells what an envelope carries.
type Kind uint8

const (
	KindPacket Kind = 1 // compressed packet (Codec is set)
	KindFrame  Kind = 2 // raw decoded frame (Video or Audio is set)
	KindEOS    Kind = 3 // end of stream on this edge; carries no media
	KindData   Kind = 4 // application data (Payload, Meta)
)

func (k Kind) String() string {
	switch k {
	case KindPacket:
		return "packet"
	case KindFrame:
		return "frame"
	case KindEOS:
		return "eos"
	case KindData:
		return "data"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Media is the media type of the stream.
type Media uint8

const (
	MediaUnknown Media = 0
	MediaVideo   Media = 1
	MediaAudio   Media = 2
)

func (m Media) String() string {
	switch m {
	case MediaVideo:
		return "video"
	case MediaAudio:
		return "audio"
	}
	return "unknown"
}

// Rational is a fraction such as a time base (1/90000) or a frame rate (30000/1001).
type Rational struct {
	Num int32 `msgpack:"n"`
	Den int32 `msgpack:"d"`
}

// Float returns the value as a float64 (0 when Den is 0).
func (r Rational) Float() float64 {
	if r.Den == 0 {
		return 0
	}
	return float64(r.Num) / float64(r.Den)
}

// CodecParams describes a compressed stream, enough to open a decoder or a muxer.
type CodecParams struct {
	Codec       string   `msgpack:"codec"`           // FFmpeg codec name, e.g. "h264", "aac"
	Tag         uint32   `msgpack:"tag,omitempty"`   // container codec tag
	ExtraData   []byte   `msgpack:"extra,omitempty"` // e.g. H.264 avcC, AAC AudioSpecificConfig
	Format      string   `msgpack:"fmt,omitempty"`   // pixel or sample format name
	BitRate     int64    `msgpack:"br,omitempty"`
	Width       int32    `msgpack:"w,omitempty"`
	Height      int32    `msgpack:"h,omitempty"`
	SAR         Rational `msgpack:"sar,omitempty"`
	FrameRate   Rational `msgpack:"fr,omitempty"`
	SampleRate  int32    `msgpack:"sr,omitempty"`
	Channels    int32    `msgpack:"ch,omitempty"`
	ChannelMask uint64   `msgpack:"chm,omitempty"`
	FrameSize   int32    `msgpack:"fs,omitempty"`
	Profile     int32    `msgpack:"prof,omitempty"`
	Level       int32    `msgpack:"lvl,omitempty"`
}

// VideoFormat describes a raw video frame. The payload holds the planes
// back to back, each row Strides[i] bytes long (no padding between planes).
type VideoFormat struct {
	PixFmt    string   `msgpack:"pix"`
	Width     int32    `msgpack:"w"`
	Height    int32    `msgpack:"h"`
	Strides   []int32  `msgpack:"str,omitempty"`
	SAR       Rational `msgpack:"sar,omitempty"`
	FrameRate Rational `msgpack:"fr,omitempty"`
}

// AudioFormat describes a raw audio frame. The payload holds the planes back
// to back (one plane for packed formats, one per channel for planar ones).
type AudioFormat struct {
	SampleFmt   string `msgpack:"fmt"`
	SampleRate  int32  `msgpack:"sr"`
	Channels    int32  `msgpack:"ch"`
	ChannelMask uint64 `msgpack:"chm,omitempty"`
	Samples     int32  `msgpack:"ns"`
}

// Origin is a position in a stream: a producer's stream id and a seq there.
type Origin struct {
	Stream string `msgpack:"s"`
	Seq    uint64 `msgpack:"q"`
	// After is the seq of the message before this one in the stream as a
	// stage that saw all of it passed it on, plus one (0: not said): the
	// seqs in between were dropped upstream (given up, filtered out), and
	// a consumer putting the stream back in order does not wait for them.
	After uint64 `msgpack:"a,omitempty"`
}

// Stamp records when a stage emitted the message (Unix nanoseconds), for latency.
type Stamp struct {
	Stage string `msgpack:"s"`
	At    int64  `msgpack:"t"`
}

// Detection is one result of a model on a frame. Coordinates are
// normalised to the frame: 0,0 top left, 1,1 bottom right.
type Detection struct {
	X1    float32 `msgpack:"x1"`
	Y1    float32 `msgpack:"y1"`
	X2    float32 `msgpack:"x2"`
	Y2    float32 `msgpack:"y2"`
	Score float32 `msgpack:"s"`
	Class int32   `msgpack:"c"`
	Label string  `msgpack:"l,omitempty"`
	Text  string  `msgpack:"txt,omitempty"`  // recognised text (OCR)
	Track int64   `msgpack:"tid,omitempty"`  // stable id from a tracker (0: none)
	Model string  `msgpack:"mdl,omitempty"`  // model card that produced it
	Kept  bool    `msgpack:"kept,omitempty"` // carried by a tracker, not detected on this frame
}

// Segment is a time range of a stream, such as detected speech.
type Segment struct {
	Start float64 `msgpack:"b"`
	End   float64 `msgpack:"e"`
	Label string  `msgpack:"l,omitempty"`
	Score float32 `msgpack:"s,omitempty"`
}

// PayloadWriter is media held elsewhere (an FFmpeg frame in memory) that
// AppendMarshalFrom writes straight into the message, without a copy in
// between.
type PayloadWriter interface {
	// PayloadSize is the number of bytes WritePayload writes.
	PayloadSize() (int, error)
	// WritePayload writes the payload into dst (PayloadSize bytes).
	WritePayload(dst []byte) error
}

// Envelope is one message on an edge.
type Envelope struct {
	V        uint8             `msgpack:"v"`
	Kind     Kind              `msgpack:"k"`
	Media    Media             `msgpack:"m,omitempty"`
	Stream   string            `msgpack:"sid,omitempty"` // producer stream id, e.g. "src.video"
	Seq      uint64            `msgpack:"seq"`
	PTS      int64             `msgpack:"pts"`
	DTS      int64             `msgpack:"dts"`
	Duration int64             `msgpack:"dur,omitempty"`
	TimeBase Rational          `msgpack:"tb"`
	Key      bool              `msgpack:"key,omitempty"`
	Codec    *CodecParams      `msgpack:"cp,omitempty"`
	Video    *VideoFormat      `msgpack:"vf,omitempty"`
	Audio    *AudioFormat      `msgpack:"af,omitempty"`
	Payload  []byte            `msgpack:"-"` // second array element on the wire
	Meta     map[string]string `msgpack:"meta,omitempty"`
	// Detections are inference results attached to a frame (boxes normalised to the frame).
	Detections []Detection `msgpack:"det,omitempty"`
	// Segments are time ranges found in audio (speech), in seconds of media time.
	Segments []Segment `msgpack:"seg,omitempty"`
	Stamps   []Stamp   `msgpack:"ts,omitempty"`
	// Src is where the message entered the stream it is part of: the
	// first stage that published it, and its seq there. A stage that lets
	// messages through keeps it, so the consumer of a stage served by
	// several processes can put their outputs back in order.
	Src *Origin `msgpack:"src,omitempty"`
}

// Marshal encodes the envelope.
func Marshal(e *Envelope) ([]byte, error) { return AppendMarshal(nil, e) }

// AppendMarshal is Marshal appending to dst, so a publisher can reuse one
// buffer for every message instead of allocating (and zeroing) a new one.
func AppendMarshal(dst []byte, e *Envelope) ([]byte, error) { return AppendMarshalFrom(dst, e, nil) }

// AppendMarshalFrom is AppendMarshal with the payload written by p instead
// of taken from e.Payload (when p is not nil).
func AppendMarshalFrom(dst []byte, e *Envelope, p PayloadWriter) ([]byte, error) {
	if e.V == 0 {
		e.V = Version
	}
	hdr, err := msgpack.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("envelope: encoding header failed: %w", err)
	}
	n := len(e.Payload)
	if p != nil {
		if n, err = p.PayloadSize(); err != nil {
			return nil, fmt.Errorf("envelope: sizing payload failed: %w", err)
		}
	}
	buf := slices.Grow(dst, 1+len(hdr)+5+n)
	buf = append(buf, 0x92) // fixarray of 2
	buf = append(buf, hdr...)
	switch {
	case n == 0 && p == nil && e.Payload == nil:
		return append(buf, 0xc0), nil // nil
	case n <= 0xff:
		buf = append(buf, 0xc4, byte(n))
	case n <= 0xffff:
		buf = append(buf, 0xc5, byte(n>>8), byte(n))
	default:
		buf = append(buf, 0xc6, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	if p != nil {
		start := len(buf)
		buf = buf[:start+n]
		if err := p.WritePayload(buf[start:]); err != nil {
			return nil, fmt.Errorf("envelope: writing payload failed: %w", err)
		}
		return buf, nil
	}
	return append(buf, e.Payload...), nil
}

// Unmarshal decodes and checks an envelope.
// The payload aliases b: the caller must not reuse b while the envelope lives.
func Unmarshal(b []byte) (*Envelope, error) {
	e := new(Envelope)
	if err := UnmarshalInto(b, e); err != nil {
		return nil, err
	}
	return e, nil
}

// UnmarshalInto is Unmarshal into e, which must be zero.
func UnmarshalInto(b []byte, e *Envelope) error {
	if len(b) < 2 || b[0] != 0x92 {
		return fmt.Errorf("%w: not a [header, payload] array", ErrMalformed)
	}
	if err := CheckLengths(b, MaxElements); err != nil {
		return err
	}
	r := bytes.NewReader(b[1:])
	if err := msgpack.NewDecoder(r).Decode(e); err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	rest := b[len(b)-r.Len():]
	var n, h int
	switch {
	case len(rest) == 1 && rest[0] == 0xc0:
		h, n = 1, -1
	case len(rest) >= 2 && rest[0] == 0xc4:
		h, n = 2, int(rest[1])
	case len(rest) >= 3 && rest[0] == 0xc5:
		h, n = 3, int(binary.BigEndian.Uint16(rest[1:]))
	case len(rest) >= 5 && rest[0] == 0xc6:
		h, n = 5, int(binary.BigEndian.Uint32(rest[1:]))
	default:
		return fmt.Errorf("%w: payload is not msgpack bin", ErrMalformed)
	}
	if n >= 0 {
		if h+n != len(rest) {
			return fmt.Errorf("%w: payload declares %d bytes, message holds %d", ErrMalformed, n, len(rest)-h)
		}
		e.Payload = rest[h : h+n : h+n]
	} else if len(rest) != 1 {
		return fmt.Errorf("%w: trailing bytes", ErrMalformed)
	}
	if e.V == 0 {
		return fmt.Errorf("%w: missing version", ErrMalformed)
	}
	if e.V > Version {
		return fmt.Errorf("%w: got v%d, this build reads up to v%d", ErrVersion, e.V, Version)
	}
	switch e.Kind {
	case KindPacket, KindFrame, KindEOS, KindData:
	default:
		return fmt.Errorf("%w: unknown kind %d", ErrMalformed, e.Kind)
	}
	if e.Kind == KindFrame && e.Video == nil && e.Audio == nil {
		return fmt.Errorf("%w: frame without video or audio format", ErrMalformed)
	}
	return nil
}
