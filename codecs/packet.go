package codecs

import (
	"fmt"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
)

// Packet is an FFmpeg packet travelling with a message (stage.Msg.Local) inside one process.
type Packet struct{ P *astiav.Packet }

// PayloadSize is the packet's size.
func (p *Packet) PayloadSize() (int, error) { return p.P.Size(), nil }

// WritePayload copies the packet data into dst.
func (p *Packet) WritePayload(dst []byte) error {
	copy(dst, p.P.Data())
	return nil
}

// Clone returns a new reference to the same data.
func (p *Packet) Clone() (stage.Local, error) {
	c := p.P.Clone()
	if c == nil {
		return nil, fmt.Errorf("codecs: cloning packet failed")
	}
	return &Packet{P: c}, nil
}

// Free releases the reference.
func (p *Packet) Free() { p.P.Free() }

// MediaOf maps FFmpeg's media type.
func MediaOf(t astiav.MediaType) envelope.Media {
	switch t {
	case astiav.MediaTypeVideo:
		return envelope.MediaVideo
	case astiav.MediaTypeAudio:
		return envelope.MediaAudio
	}
	return envelope.MediaUnknown
}

// PacketMsg wraps a packet in a message, taking ownership of p.
func PacketMsg(p *astiav.Packet, media envelope.Media, cp *envelope.CodecParams, tb astiav.Rational) *stage.Msg {
	return stage.New(envelope.Envelope{
		Kind: envelope.KindPacket, Media: media, PTS: p.Pts(), DTS: p.Dts(), Duration: p.Duration(),
		TimeBase: Rat(tb), Key: p.Flags().Has(astiav.PacketFlagKey), Codec: cp,
	}, &Packet{P: p})
}

// PacketOf returns the message's packet: the in-process one, or one rebuilt
// from the payload (kept as e.Local). The packet belongs to the message.
func PacketOf(e *stage.Msg) (*astiav.Packet, error) {
	if l, ok := e.Local.(*Packet); ok {
		return l.P, nil
	}
	if e.Kind != envelope.KindPacket {
		return nil, fmt.Errorf("%w: got a %s, want a packet", ErrNoMedia, e.Kind)
	}
	p := astiav.AllocPacket()
	if len(e.Payload) > 0 {
		if err := p.FromData(e.Payload); err != nil {
			p.Free()
			return nil, fmt.Errorf("codecs: packet from payload: %w", err)
		}
	}
	p.SetPts(e.PTS)
	p.SetDts(e.DTS)
	p.SetDuration(e.Duration)
	if e.Key {
		p.SetFlags(p.Flags().Add(astiav.PacketFlagKey))
	}
	e.Local = &Packet{P: p}
	return p, nil
}

// Params describes FFmpeg codec parameters for the envelope.
func Params(cp *astiav.CodecParameters, frameRate astiav.Rational) *envelope.CodecParams {
	p := &envelope.CodecParams{
		Codec: cp.CodecID().Name(), Tag: uint32(cp.CodecTag()), ExtraData: append([]byte(nil), cp.ExtraData()...),
		BitRate: cp.BitRate(), Profile: int32(cp.Profile()), Level: int32(cp.Level()),
	}
	switch cp.MediaType() {
	case astiav.MediaTypeVideo:
		p.Format = cp.PixelFormat().Name()
		p.Width, p.Height = int32(cp.Width()), int32(cp.Height())
		p.SAR = Rat(cp.SampleAspectRatio())
		p.FrameRate = Rat(frameRate)
	case astiav.MediaTypeAudio:
		p.Format = cp.SampleFormat().Name()
		p.SampleRate = int32(cp.SampleRate())
		l := cp.ChannelLayout()
		p.Channels = int32(l.NbChannels())
		p.ChannelMask = channelMask(l)
		p.FrameSize = int32(cp.FrameSize())
	}
	return p
}

// ToFFmpeg writes envelope codec parameters into FFmpeg's.
func ToFFmpeg(p *envelope.CodecParams, media envelope.Media, dst *astiav.CodecParameters) error {
	id, err := CodecID(p.Codec)
	if err != nil {
		return err
	}
	dst.SetCodecID(id)
	dst.SetCodecTag(astiav.CodecTag(p.Tag))
	if len(p.ExtraData) > 0 {
		if err := dst.SetExtraData(p.ExtraData); err != nil {
			return fmt.Errorf("codecs: setting extradata failed: %w", err)
		}
	}
	dst.SetProfile(astiav.Profile(p.Profile))
	dst.SetLevel(astiav.Level(p.Level))
	switch media {
	case envelope.MediaVideo:
		dst.SetMediaType(astiav.MediaTypeVideo)
		if p.Format != "" && p.Format != "none" {
			pf, err := PixelFormat(p.Format)
			if err != nil {
				return err
			}
			dst.SetPixelFormat(pf)
		}
		dst.SetWidth(int(p.Width))
		dst.SetHeight(int(p.Height))
		dst.SetSampleAspectRatio(AVRat(p.SAR))
	case envelope.MediaAudio:
		dst.SetMediaType(astiav.MediaTypeAudio)
		if p.Format != "" && p.Format != "none" {
			sf, err := SampleFormat(p.Format)
			if err != nil {
				return err
			}
			dst.SetSampleFormat(sf)
		}
		dst.SetSampleRate(int(p.SampleRate))
		dst.SetFrameSize(int(p.FrameSize))
		if p.Channels > 0 || p.ChannelMask != 0 {
			f := astiav.AllocFrame()
			defer f.Free()
			if err := setLayout(f, p.ChannelMask, int(p.Channels)); err != nil {
				return err
			}
			dst.SetChannelLayout(f.ChannelLayout())
		}
	}
	return nil
}
