// Package decode is the decode stage: compressed packets in, raw frames out,
// through libavcodec.
package decode

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/accelerators"
	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
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
			{Name: "hw_format", Type: pipeline.TypeString, Default: "auto", Enum: []string{"auto", "planar", "native", "device"},
				Doc: "on a GPU: frames leave in system memory in the planar format a CPU decoder gives (yuv420p) or the device's own layout (nv12), or stay in GPU memory (device: each CPU stage, and NATS, copies them off where it needs them); auto: device when a stage on the same GPU takes them in this process, else planar"},
		},
		MinInputs: 1, MaxInputs: 1,
		Ports: func(_ pipeline.Params, in []pipeline.PortType) ([]pipeline.Port, error) {
			if in[0].Kind != envelope.KindPacket {
				return nil, fmt.Errorf("decode takes packets, got %s", in[0])
			}
			return []pipeline.Port{{Name: "out", Type: pipeline.PortType{Kind: envelope.KindFrame, Media: in[0].Media}}}, nil
		},
		New:          New,
		Accelerators: []accelerators.Kind{accelerators.CPU, accelerators.GPU},
		DeviceCheck: func(_ pipeline.Params, _ []pipeline.PortType, d accelerators.Device) error {
			if kind, _, _, _ := accelerators.FFmpegDevice(d.ID); kind != "cuda" && kind != "vaapi" {
				return fmt.Errorf("%s is not a device FFmpeg decodes on (NVDEC through CUDA, VA-API)", d.ID)
			}
			return nil
		},
		AcceleratorsFor: func(in []pipeline.PortType) []accelerators.Kind {
			if len(in) == 1 && in[0].Media == envelope.MediaAudio {
				return []accelerators.Kind{accelerators.CPU}
			}
			return []accelerators.Kind{accelerators.CPU, accelerators.GPU}
		},
	})
}

// Decoder decodes one stream.
type Decoder struct {
	stage.Base
	in        pipeline.Init
	cc        *astiav.CodecContext
	frame     *astiav.Frame
	media     envelope.Media
	tb        astiav.Rational
	frameRate astiav.Rational
	codec     string
	bad       int          // undecodable packets in a row
	skipped   atomic.Int64 // undecodable packets in all
	frames    int64
	hw        *hardware // nil: decoding on the CPU
	// CPUFallback reports the CPU when FFmpeg has no hardware path for
	// the stream's codec or profile, which the decoder learns at the first
	// packet (see Status).
	pipeline.CPUFallback
}

// hardware is a decoder bound to a GPU through an FFmpeg device context
// (NVDEC through CUDA, or VA-API), as in go-astiav's
// examples/hardware_decoding.
type hardware struct {
	kind, name string // FFmpeg device kind and name: cuda, 0
	typ        astiav.HardwareDeviceType
	pixFmt     astiav.PixelFormat // the decoder's pixel format for frames on the device
	dl         *codecs.Downloader
	soft       bool // the stream fell back to software decoding inside FFmpeg
	keep       bool // frames stay in device memory
}

// New returns a decoder that opens on the first packet, from its codec parameters.
func New(_ context.Context, in pipeline.Init) (stage.Stage, error) {
	d := &Decoder{in: in, frame: astiav.AllocFrame()}
	if in.Device.Kind == accelerators.GPU {
		kind, name, typ, ok := accelerators.FFmpegDevice(in.Device.ID)
		if !ok {
			d.frame.Free()
			return nil, fmt.Errorf("%w: device %s cannot decode video", ErrOpen, in.Device.ID)
		}
		d.hw = &hardware{kind: kind, name: name, typ: typ, pixFmt: astiav.PixelFormatNone}
	}
	return d, nil
}

// openHardware attaches the bound device to the decoder, or says why this
// stream decodes on the CPU instead.
func (d *Decoder) openHardware(c *astiav.Codec) error {
	h := d.hw
	for _, hc := range c.HardwareConfigs() {
		if hc.MethodFlags().Has(astiav.CodecHardwareConfigMethodFlagHwDeviceCtx) && hc.HardwareDeviceType() == h.typ {
			h.pixFmt = hc.PixelFormat()
			break
		}
	}
	if h.pixFmt == astiav.PixelFormatNone {
		why := fmt.Sprintf("FFmpeg's %s decoder has no %s hardware path", c.Name(), h.kind)
		if d.in.Strict {
			return fmt.Errorf("%w: %s (strict)", ErrNoDecoder, why)
		}
		d.in.Log.Warn("accelerator fallback: decoding on the CPU", "wanted", d.in.Device.ID, "why", why)
		d.hw = nil
		d.FellBack()
		return nil
	}
	hdc, err := accelerators.DeviceContext(h.kind, h.name)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrOpen, err)
	}
	// Not go-astiav's SetHardwareDeviceContext: its Free would release the
	// shared context's own reference (see codecs.SetDevice).
	if err := codecs.SetDevice(d.cc, hdc); err != nil {
		return fmt.Errorf("%w: %w", ErrOpen, err)
	}
	// go-astiav finds the format callback by the codec context's address;
	// frame threading calls it on per-thread copies it does not know (and
	// the decoder then gets no format at all). Slice threading keeps one
	// context, and the GPU does the decoding anyway.
	d.cc.SetThreadType(astiav.ThreadTypeSlice)
	d.cc.SetPixelFormatCallback(func(offered []astiav.PixelFormat) astiav.PixelFormat {
		for _, pf := range offered {
			if pf == h.pixFmt {
				return pf
			}
		}
		// The device cannot decode this profile (4:4:4, too large...):
		// FFmpeg decodes in software; say so once.
		if !h.soft {
			h.soft = true
			d.FellBack()
			d.in.Log.Warn("the GPU cannot decode this stream's profile; FFmpeg decodes it on the CPU", "device", d.in.Device.ID)
		}
		for _, pf := range offered {
			if !codecs.IsHardwarePixelFormat(pf) {
				return pf
			}
		}
		return astiav.PixelFormatNone
	})
	h.keep = keepOnDevice(d.in)
	if h.keep {
		// Frames held by later stages: edge queues, a frame being filtered,
		// an encoder's reorder and lookahead. VA-API decoders draw from a
		// fixed pool (CUDA's grows), so leave room for all of them.
		d.cc.SetExtraHardwareFrames(16)
		return nil
	}
	h.dl = codecs.NewDownloader(d.in.Params.String("hw_format") == "native")
	return nil
}

// keepOnDevice says whether a GPU decoder leaves its frames on the GPU:
// asked to, or (auto) when a stage on the same device takes them in this
// process and at most one other stage would have to copy them off.
func keepOnDevice(in pipeline.Init) bool {
	switch in.Params.String("hw_format") {
	case "device":
		return true
	case "auto":
		same := 0
		for _, d := range in.Downstream {
			if d == in.Device.ID {
				same++
			}
		}
		return same > 0 && len(in.Downstream)-same <= 1
	}
	return false
}

func (d *Decoder) open(e *stage.Msg) error {
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
	if d.hw != nil {
		if err := d.openHardware(c); err != nil {
			return err
		}
	}
	if err := d.cc.Open(c, nil); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrOpen, c.Name(), err)
	}
	d.media, d.codec = e.Media, e.Codec.Codec
	d.frameRate = codecs.AVRat(e.Codec.FrameRate)
	dev := "cpu"
	if d.hw != nil {
		dev = d.in.Device.ID + " (" + d.hw.pixFmt.Name() + ")"
		if d.hw.keep {
			dev += ", frames stay on the GPU"
		}
	}
	d.in.Log.Info("decoder opened", "codec", c.Name(), "media", e.Media.String(), "threads", d.cc.ThreadCount(), "device", dev)
	return nil
}

// Process decodes one or more packets.
func (d *Decoder) Process(_ context.Context, in stage.Batch) (stage.Batch, error) {
	var out stage.Batch
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
			d.skipped.Add(1)
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

func (d *Decoder) receive(out stage.Batch) (stage.Batch, error) {
	for {
		if err := d.cc.ReceiveFrame(d.frame); err != nil {
			if errors.Is(err, astiav.ErrEagain) || errors.Is(err, astiav.ErrEof) {
				return out, nil
			}
			return out, fmt.Errorf("%w: %w", ErrDecode, err)
		}
		var f *astiav.Frame
		if d.hw != nil && !d.hw.keep && d.frame.PixelFormat() == d.hw.pixFmt {
			var err error
			f, err = d.hw.dl.Download(d.frame)
			d.frame.Unref()
			if err != nil {
				return out, fmt.Errorf("%w: %w", ErrDecode, err)
			}
		} else {
			f = astiav.AllocFrame()
			f.MoveRef(d.frame)
		}
		out = append(out, codecs.FrameMsg(f, d.media, d.tb, d.frameRate))
		d.frames++
	}
}

// Status reports packets the decoder could not decode, and the CPU once
// it fell back to it.
func (d *Decoder) Status() stage.Status {
	return stage.Status{Device: d.Device(), Counts: map[string]int64{"undecodable_packets": d.skipped.Load()}}
}

// Flush drains the decoder's delayed frames.
func (d *Decoder) Flush(context.Context) (stage.Batch, error) {
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
		if d.hw != nil {
			d.cc.SetPixelFormatCallback(nil) // drops go-astiav's reference to it
		}
		d.cc.Free()
		d.cc = nil
	}
	if d.frame != nil {
		d.frame.Free()
		d.frame = nil
	}
	if d.hw != nil && d.hw.dl != nil {
		d.hw.dl.Close()
		d.hw.dl = nil
	}
	return nil
}
