// Package decode is the decode stage: compressed packets in, raw frames out,
// through libavcodec.
package decode

import (
	"context"
	"errors"
	"fmt"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/envelope"
)

// Sentinel errors.
var (
	ErrOpen      = errors.New("decode: opening decoder failed")
	ErrNoDecoder = errors.New("decode: no decoder for codec")
	ErrDecode    = errors.New("decode: decoding failed")
)

// maxBadPackets is how many undecodable packets in a row end the stage.
const maxBadPackets = 50

func init() {
	pipeline.MustRegister(pipeline.Spec{
		Kind:    "decode",
		Summary: "Decode video or audio packets into raw frames with libavcodec.",
		Params: []pipeline.Param{
			{Name: "threads", Type: pipeline.TypeInt, Default: 0, Doc: "decoder threads (0: one per core)"},
			{Name: "thread_type", Type: pipeline.TypeString, Default: "auto", Enum: []string{"auto", "frame", "slice"}, Doc: "frame threading (throughput) or slice threading (latency)"},
		},
		MinInputs: 1, MaxInputs: 1,
		Ports: func(_ pipeline.Params, in []pipeline.PortType) ([]pipeline.Port, error) {
			if in[0].Kind != envelope.KindPacket {
				return nil, fmt.Errorf("decode takes packets, got %s", in[0])
			}
			return []pipeline.Port{{Name: "out", Type: pipeline.PortType{Kind: envelope.KindFrame, Media: in[0].Media}}}, nil
		},
		New: New,
	})
}

// Decoder decodes one stream.
type Decoder struct {
	in        pipeline.Init
	cc        *astiav.CodecContext
	frame     *astiav.Frame
	media     envelope.Media
	tb        astiav.Rational
	frameRate astiav.Rational
	codec     string
	bad       int
	frames    int64
}

// New returns a decoder that opens on the first packet, from its codec parameters.
func New(_ context.Context, in pipeline.Init) (pipeline.Stage, error) {
	return &Decoder{in: in, frame: astiav.AllocFrame()}, nil
}

func (d *Decoder) open(e *envelope.Envelope) error {
	if e.Codec == nil {
		return fmt.Errorf("%w: packet without codec parameters", ErrOpen)
	}
	id, err := codecs.CodecID(e.Codec.Codec)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNoDecoder, err)
	}
	c := astiav.FindDecoder(id)
	if c == nil {
		return fmt.Errorf("%w %q: this FFmpeg build has no decoder for it", ErrNoDecoder, e.Codec.Codec)
	}
	cp := astiav.AllocCodecParameters()
	defer cp.Free()
	if err := codecs.ToFFmpeg(e.Codec, e.Media, cp); err != nil {
		return fmt.Errorf("%w: %w", ErrOpen, err)
	}
	d.cc = astiav.AllocCodecContext(c)
	if d.cc == nil {
		return fmt.Errorf("%w: allocating context for %s", ErrOpen, c.Name())
	}
	if err := cp.ToCodecContext(d.cc); err != nil {
		return fmt.Errorf("%w: %w", ErrOpen, err)
	}
	d.tb = codecs.AVRat(e.TimeBase)
	d.cc.SetTimeBase(d.tb)
	d.cc.SetThreadCount(d.in.Params.Int("threads"))
	switch d.in.Params.String("thread_type") {
	case "frame":
		d.cc.SetThreadType(astiav.ThreadTypeFrame)
	case "slice":
		d.cc.SetThreadType(astiav.ThreadTypeSlice)
	}
	if err := d.cc.Open(c, nil); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrOpen, c.Name(), err)
	}
	d.media, d.codec = e.Media, e.Codec.Codec
	d.frameRate = codecs.AVRat(e.Codec.FrameRate)
	d.in.Log.Info("decoder opened", "codec", c.Name(), "media", e.Media.String(), "threads", d.cc.ThreadCount())
	return nil
}

// Process decodes one or more packets.
func (d *Decoder) Process(_ context.Context, in pipeline.Batch) (pipeline.Batch, error) {
	var out pipeline.Batch
	for _, e := range in {
		if d.cc == nil {
			if err := d.open(e); err != nil {
				return out, err
			}
		}
		pkt, err := codecs.PacketOf(e)
		if err != nil {
			return out, err
		}
		if err := d.cc.SendPacket(pkt); err != nil && !errors.Is(err, astiav.ErrEagain) {
			d.bad++
			if d.bad >= maxBadPackets {
				return out, fmt.Errorf("%w: %d %s packets in a row could not be decoded: %w", ErrDecode, d.bad, d.codec, err)
			}
			d.in.Log.Warn("packet could not be decoded; skipped", "pts", e.PTS, "error", err)
			continue
		}
		d.bad = 0
		if out, err = d.receive(out); err != nil {
			return out, err
		}
	}
	return out, nil
}

func (d *Decoder) receive(out pipeline.Batch) (pipeline.Batch, error) {
	for {
		if err := d.cc.ReceiveFrame(d.frame); err != nil {
			if errors.Is(err, astiav.ErrEagain) || errors.Is(err, astiav.ErrEof) {
				return out, nil
			}
			return out, fmt.Errorf("%w: %w", ErrDecode, err)
		}
		f := astiav.AllocFrame()
		f.MoveRef(d.frame)
		out = append(out, codecs.FrameEnvelope(f, d.media, d.tb, d.frameRate))
		d.frames++
	}
}

// Flush drains the decoder's delayed frames.
func (d *Decoder) Flush(context.Context) (pipeline.Batch, error) {
	if d.cc == nil {
		return nil, nil
	}
	if err := d.cc.SendPacket(nil); err != nil && !errors.Is(err, astiav.ErrEof) {
		return nil, fmt.Errorf("%w: flushing: %w", ErrDecode, err)
	}
	return d.receive(nil)
}

// Close frees the decoder.
func (d *Decoder) Close() error {
	if d.cc != nil {
		d.cc.Free()
		d.cc = nil
	}
	if d.frame != nil {
		d.frame.Free()
		d.frame = nil
	}
	return nil
}
