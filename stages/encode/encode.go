// Package encode is the encode stage: raw frames in, compressed packets out
// (libx264, libx265, libvpx-vp9, libsvtav1, aac or any FFmpeg encoder), or
// "copy" to pass packets through untouched.
package encode

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/accelerators"
	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
)

// Sentinel errors.
var (
	ErrUnknownEncoder = errors.New("encode: unknown encoder")
	ErrOpen           = errors.New("encode: opening encoder failed")
	ErrEncode         = errors.New("encode: encoding failed")
	// ErrChromaSize reports a picture whose width or height is not a
	// multiple of its pixel format's chroma subsampling (641x481 in 4:2:0).
	ErrChromaSize = errors.New("picture size does not fit the chroma subsampling")
)

func init() {
	pipeline.MustRegister(pipeline.Spec{
		Kind:    "encode",
		Summary: "Encode raw frames with an FFmpeg encoder, or pass packets through with codec: copy.",
		Params: []pipeline.Param{
			{Name: "codec", Type: pipeline.TypeString, Required: true, Doc: "encoder: libx264, libx265, libvpx-vp9, libsvtav1, aac, ... or copy"},
			{Name: "preset", Type: pipeline.TypeString, Doc: "encoder preset (x264/x265: ultrafast..veryslow; svt-av1: 0-13)"},
			{Name: "tune", Type: pipeline.TypeString, Doc: "encoder tune (x264: film, zerolatency, ...)"},
			{Name: "crf", Type: pipeline.TypeInt, Doc: "constant quality (x264/x265 0-51, vp9/av1 0-63); unset: encoder default"},
			{Name: "bitrate", Type: pipeline.TypeString, Doc: `target bitrate, e.g. "3M" or "128k"`},
			{Name: "gop", Type: pipeline.TypeInt, Default: 0, Doc: "keyframe interval in frames (0: encoder default); see gop_duration for keyframes by time"},
			{Name: "gop_duration", Type: pipeline.TypeDuration, Doc: "video: force a keyframe at the first frame whose time reaches each multiple of this interval after the first frame (like ffmpeg -force_key_frames expr:gte(t,n_forced*2)), so HLS segments keep their length when frames are dropped; default: 2s in live runs (flow: drop-oldest; the sink's default hls_time), off for files; 0s: off"},
			{Name: "gop_align", Type: pipeline.TypeBool, Default: false, Doc: "video: count gop_duration's multiples from the stream's time 0, not from the first frame, so that encoders starting on one stream at different times (personalised variants) put keyframes on the same frames"},
			{Name: "threads", Type: pipeline.TypeInt, Default: 0, Doc: "encoder threads (0: encoder default)"},
			{Name: "pixel_format", Type: pipeline.TypeString, Doc: "convert frames to this pixel format first (default: keep, or the encoder's first)"},
			{Name: "sample_rate", Type: pipeline.TypeInt, Default: 0, Doc: "audio: resample to this rate (0: keep)"},
			{Name: "global_header", Type: pipeline.TypeBool, Default: true, Doc: "put codec headers in extradata (MP4, MKV, FLV need it; MPEG-TS/HLS work either way)"},
			{Name: "options", Type: pipeline.TypeMap, Doc: "encoder private options, e.g. {x264-params: keyint=60, sc_threshold: 0}"},
		},
		MinInputs: 1, MaxInputs: 1,
		Ports:        ports,
		Check:        checkParams,
		New:          New,
		Accelerators: []accelerators.Kind{accelerators.CPU, accelerators.GPU},
		AcceleratorsFor: func(in []pipeline.PortType) []accelerators.Kind {
			if len(in) == 1 && in[0].Media == envelope.MediaVideo && in[0].Kind == envelope.KindFrame {
				return []accelerators.Kind{accelerators.CPU, accelerators.GPU}
			}
			return []accelerators.Kind{accelerators.CPU}
		},
		DeviceCheck: func(p pipeline.Params, _ []pipeline.PortType, d accelerators.Device) error {
			if c := astiav.FindEncoderByName(p.String("codec")); c != nil {
				if hw, why := hardwareEncoder(c, d); hw == nil {
					return errors.New(why)
				}
			}
			return nil
		},
	})
}

func ports(p pipeline.Params, in []pipeline.PortType) ([]pipeline.Port, error) {
	name := p.String("codec")
	if name == "copy" {
		if in[0].Kind != envelope.KindPacket {
			return nil, fmt.Errorf("codec copy takes packets, got %s", in[0])
		}
		return []pipeline.Port{{Name: "out", Type: in[0]}}, nil
	}
	c := astiav.FindEncoderByName(name)
	if c == nil {
		return nil, fmt.Errorf("%w %q: this FFmpeg build has no such encoder (try: %s)", ErrUnknownEncoder, name, strings.Join(encoders(in[0].Media), ", "))
	}
	if in[0].Kind != envelope.KindFrame {
		return nil, fmt.Errorf("encoder %s takes raw frames, got %s: put a decode stage before it, or use codec: copy", name, in[0])
	}
	media := codecs.MediaOf(c.ID().MediaType())
	if in[0].Media != envelope.MediaUnknown && media != in[0].Media {
		return nil, fmt.Errorf("encoder %s is for %s, but its input gives %s", name, media, in[0])
	}
	if _, err := pipeline.ParseBitrate(p.String("bitrate")); err != nil {
		return nil, err
	}
	return []pipeline.Port{{Name: "out", Type: pipeline.PortType{Kind: envelope.KindPacket, Media: media}}}, nil
}

// encoders lists well-known encoders this FFmpeg has, for error messages.
func encoders(m envelope.Media) []string {
	known := []string{"libx264", "libx265", "libvpx-vp9", "libsvtav1", "libaom-av1", "mpeg4", "aac", "libopus", "libmp3lame", "flac"}
	var out []string
	for _, n := range known {
		if c := astiav.FindEncoderByName(n); c != nil && (m == envelope.MediaUnknown || codecs.MediaOf(c.ID().MediaType()) == m) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// Encoder encodes one stream.
type Encoder struct {
	stage.Base
	in    pipeline.Init
	copy  bool
	codec *astiav.Codec
	cc    *astiav.CodecContext
	// conv adapts frames to the encoder: pixel format; sample format,
	// rate and layout, then frame size (two graphs, so that a change of
	// the input's audio format, which ends the first, cuts no frame short).
	conv []*codecs.Graph
	// opened is the format of the frames the encoder opened on; frames of
	// another size or pixel format are scaled to it by resize, to target
	// (the system-memory format it encodes, or uploads), after one warning.
	opened  codecs.FrameFormat
	target  astiav.PixelFormat
	resize  *codecs.Graph
	changed bool
	keys    *keyClock // keyframes by time (nil: by the encoder's GOP)
	pkt     *astiav.Packet
	media   envelope.Media
	tb      astiav.Rational
	params  *envelope.CodecParams
	frames  int64
	// soft is the software encoder to fall back to when the hardware
	// encoder the stage was bound to does not open (nil on the CPU).
	soft *astiav.Codec
	// input says how frames reach a hardware encoder; up is the reused
	// device frame uploads go into.
	input input
	up    *astiav.Frame
	// CPUFallback reports the CPU once a hardware encoder that would not
	// open gave way to the software one (see Status).
	pipeline.CPUFallback
}

// Status reports the CPU once the encoder fell back to it.
func (enc *Encoder) Status() stage.Status { return stage.Status{Device: enc.Device()} }

// input is how a video encoder takes its frames.
type input int

const (
	inputHost   input = iota // system-memory frames, as they are
	inputDevice              // the decoder's frames, in the same GPU's memory
	inputUpload              // system-memory frames uploaded to the device first
)

// New prepares the encoder; it opens on the first frame, from its format.
func New(_ context.Context, in pipeline.Init) (stage.Stage, error) {
	name := in.Params.String("codec")
	if name == "copy" {
		return &Encoder{in: in, copy: true}, nil
	}
	c := astiav.FindEncoderByName(name)
	if c == nil {
		return nil, fmt.Errorf("%w %q", ErrUnknownEncoder, name)
	}
	enc := &Encoder{in: in, codec: c, media: codecs.MediaOf(c.ID().MediaType())}
	fam, named := familyOf(name)
	switch {
	case in.Device.Kind == accelerators.GPU:
		hw, why := hardwareEncoder(c, in.Device)
		if hw == nil { // binding checked the device; this is a programming error
			return nil, fmt.Errorf("%w: %s on %s: %s", ErrOpen, name, in.Device.ID, why)
		}
		enc.codec, enc.soft = hw, c
		if named || in.Strict {
			enc.soft = nil
		}
	case named && fam.kind == "vaapi":
		return nil, fmt.Errorf("%w: %s encodes on a VA-API render node, but the stage runs on %s: set accelerator: gpu (device: vaapi:/dev/dri/renderD128)",
			ErrOpen, name, in.Device.ID)
	}
	enc.pkt = astiav.AllocPacket()
	return enc, nil
}

// open opens the encoder on the first frame's format; a hardware encoder
// that will not open (no device, driver without the encode library,
// session limit) gives way to the software one with a warning. It returns
// the frame to encode: a copy in system memory if f was a device frame
// the encoder that opened cannot take.
func (enc *Encoder) open(f *astiav.Frame, e *stage.Msg) (*astiav.Frame, error) {
	err := enc.openCodec(f, e)
	if err == nil || enc.soft == nil {
		return f, err
	}
	enc.in.Log.Warn("accelerator fallback: hardware encoder did not open; encoding on the CPU",
		"wanted", enc.in.Device.ID, "encoder", enc.soft.Name(), "why", err)
	if enc.cc != nil {
		enc.cc.Free()
		enc.cc = nil
	}
	enc.codec, enc.soft, enc.input = enc.soft, nil, inputHost
	enc.FellBack()
	if codecs.IsHardwarePixelFormat(f.PixelFormat()) {
		if f, err = codecs.FrameOf(e); err != nil {
			return nil, err
		}
	}
	return f, enc.openCodec(f, e)
}

// frame returns e's frame the way the encoder takes it: GPU frames stay
// on the GPU for a hardware encoder on that same device (the first frame
// decides, at open), and are copied to system memory for anything else.
func (enc *Encoder) frame(e *stage.Msg) (*astiav.Frame, error) {
	var dev *astiav.HardwareDeviceContext
	if _, hw := familyOf(enc.codec.Name()); hw && enc.media == envelope.MediaVideo && (enc.cc == nil || enc.input == inputDevice) {
		dev, _ = enc.device() // none: frames come to system memory, and open says why
	}
	return codecs.FrameOn(e, dev)
}

// deviceErr says which encoder could not use which device.
func (enc *Encoder) deviceErr(err error) error {
	return fmt.Errorf("%w: %s on %s: %w", ErrOpen, enc.codec.Name(), enc.in.Device.ID, err)
}

// device is the FFmpeg context of the device the stage is bound to.
func (enc *Encoder) device() (*astiav.HardwareDeviceContext, error) {
	kind, name, _, ok := accelerators.FFmpegDevice(enc.in.Device.ID)
	if !ok {
		return nil, fmt.Errorf("%s is not an FFmpeg device", enc.in.Device.ID)
	}
	return accelerators.DeviceContext(kind, name)
}

// bindVideo sets up how a hardware encoder takes its frames: the
// decoder's GPU frames as they are, uploads into a pool on the device
// (VA-API), or frames from system memory (NVENC, QSV). It returns the
// software pixel format the encoder will see.
func (enc *Encoder) bindVideo(cc *astiav.CodecContext, f *astiav.Frame, pf astiav.PixelFormat) (astiav.PixelFormat, error) {
	fam, hw := familyOf(enc.codec.Name())
	if !hw {
		return pf, nil
	}
	if codecs.IsHardwarePixelFormat(f.PixelFormat()) { // frame() checked it is on our device
		if err := codecs.TakeDeviceFrames(cc, f); err != nil {
			return pf, enc.deviceErr(err)
		}
		if want := enc.in.Params.String("pixel_format"); want != "" {
			enc.in.Log.Warn("pixel_format is ignored: the encoder takes the decoder's GPU frames as they are", "pixel_format", want)
		}
		enc.input = inputDevice
		if enc.up == nil { // for system-memory frames later on (the decoder gave up on the GPU)
			enc.up = astiav.AllocFrame()
		}
		return f.PixelFormat(), nil
	}
	if fam.kind != "vaapi" {
		enc.input = inputHost
		return pf, nil
	}
	dev, err := enc.device()
	if err != nil {
		return pf, enc.deviceErr(err)
	}
	if fam.suffix == "_qsv" { // QSV takes nv12 from system memory, in a session on this render node
		enc.input = inputHost
		if err := codecs.SetDerivedDevice(cc, dev, astiav.HardwareDeviceTypeQSV); err != nil {
			return pf, enc.deviceErr(err)
		}
		return pf, nil
	}
	sw := astiav.PixelFormatNv12
	if d := codecs.Depth(pf); d > 8 {
		sw = astiav.PixelFormatP010Le
	}
	if err := codecs.UploadPool(cc, dev, sw, f.Width(), f.Height()); err != nil {
		return pf, enc.deviceErr(err)
	}
	enc.input = inputUpload
	if enc.up == nil {
		enc.up = astiav.AllocFrame()
	}
	return sw, nil
}

func (enc *Encoder) openCodec(f *astiav.Frame, e *stage.Msg) error {
	p := enc.in.Params
	cc := astiav.AllocCodecContext(enc.codec)
	if cc == nil {
		return fmt.Errorf("%w: allocating %s", ErrOpen, enc.codec.Name())
	}
	enc.cc = cc
	for _, g := range enc.conv { // from a hardware encoder that did not open
		g.Close()
	}
	enc.conv = nil
	var convSpec string
	switch enc.media {
	case envelope.MediaVideo:
		pf := f.PixelFormat()
		if want := p.String("pixel_format"); want != "" {
			x, err := codecs.PixelFormat(want)
			if err != nil {
				return fmt.Errorf("%w: %w", ErrOpen, err)
			}
			pf = x
		}
		if fmts := softwareFormats(enc.codec); len(fmts) > 0 && !slices.Contains(fmts, pf) {
			pf = fmts[0]
		}
		sw, err := enc.bindVideo(cc, f, pf)
		if err != nil {
			return err
		}
		if sw != f.PixelFormat() && enc.input != inputDevice {
			convSpec = "format=" + sw.Name()
		}
		if enc.input == inputHost {
			cc.SetPixelFormat(sw)
		}
		enc.target = sw
		if enc.input == inputDevice {
			enc.target = codecs.SoftwareFormat(f)
		}
		if _, hw := familyOf(enc.codec.Name()); hw || slices.Contains(wholeChroma, enc.codec.Name()) {
			if err := chromaSizeError(enc.codec.Name(), f.Width(), f.Height(), enc.target); err != nil {
				return err
			}
		}
		cc.SetWidth(f.Width())
		cc.SetHeight(f.Height())
		cc.SetSampleAspectRatio(f.SampleAspectRatio())
		enc.tb = codecs.AVRat(e.TimeBase)
		if e.Video != nil && e.Video.FrameRate.Num > 0 {
			cc.SetFramerate(codecs.AVRat(e.Video.FrameRate))
		}
		if g := p.Int("gop"); g > 0 {
			cc.SetGopSize(g)
		}
		enc.keys = nil
		if d := keyInterval(enc.in); d > 0 {
			enc.keys = newKeyClock(d, enc.tb)
			enc.keys.aligned = p.Bool("gop_align")
		}
	case envelope.MediaAudio:
		sf := f.SampleFormat()
		if fmts := enc.codec.SampleFormats(); len(fmts) > 0 && !slices.Contains(fmts, sf) {
			sf = fmts[0]
		}
		rate := f.SampleRate()
		if r := p.Int("sample_rate"); r > 0 {
			rate = r
		}
		cc.SetSampleFormat(sf)
		cc.SetSampleRate(rate)
		cc.SetChannelLayout(f.ChannelLayout())
		enc.tb = astiav.NewRational(1, rate)
		convSpec = fmt.Sprintf("aresample=%d,aformat=sample_fmts=%s:channel_layouts=%s", rate, sf.Name(), cc.ChannelLayout().String())
	}
	cc.SetTimeBase(enc.tb)
	if br, _ := pipeline.ParseBitrate(p.String("bitrate")); br > 0 {
		cc.SetBitRate(br)
	}
	if t := p.Int("threads"); t > 0 {
		cc.SetThreadCount(t)
	}
	if p.Bool("global_header") {
		cc.SetFlags(cc.Flags().Add(astiav.CodecContextFlagGlobalHeader))
	}
	d := astiav.NewDictionary()
	defer d.Free()
	opts := map[string]string{}
	for k, v := range p.Map("options") {
		opts[k] = v
	}
	if v := p.String("preset"); v != "" {
		opts["preset"] = v
	}
	if v := p.String("tune"); v != "" {
		opts["tune"] = v
	}
	if p.Has("crf") {
		opts["crf"] = strconv.Itoa(p.Int("crf"))
		if enc.codec.Name() == "libvpx-vp9" && p.String("bitrate") == "" {
			cc.SetBitRate(0) // constant quality mode
		}
	}
	if dropped := hardwareOptions(opts, enc.codec.Name(), enc.in.Device.ID); len(dropped) > 0 {
		enc.in.Log.Warn("software-encoder options dropped for the hardware encoder", "encoder", enc.codec.Name(), "options", strings.Join(dropped, " "))
	}
	if o := forcedIDR(enc.codec.Name()); o != "" && enc.keys != nil {
		if _, set := opts[o]; !set {
			opts[o] = "1"
		}
	}
	for k, v := range opts {
		if err := d.Set(k, v, 0); err != nil {
			return fmt.Errorf("%w: option %s=%s: %w", ErrOpen, k, v, err)
		}
	}
	if err := cc.Open(enc.codec, d); err != nil {
		if enc.media == envelope.MediaVideo {
			if serr := chromaSizeError(enc.codec.Name(), f.Width(), f.Height(), enc.target); serr != nil {
				return fmt.Errorf("%w (%w)", serr, err)
			}
		}
		return fmt.Errorf("%w: %s (%dx%d %s): %w", ErrOpen, enc.codec.Name(), f.Width(), f.Height(), cc.PixelFormat().Name(), err)
	}
	if left := d.Get("", nil, astiav.NewDictionaryFlags(astiav.DictionaryFlagIgnoreSuffix)); left != nil {
		return fmt.Errorf("%w: %s does not know option %q", ErrOpen, enc.codec.Name(), left.Key())
	}
	if convSpec != "" {
		enc.conv = append(enc.conv, codecs.NewGraph(convSpec, 1))
	}
	if enc.media == envelope.MediaAudio && cc.FrameSize() > 0 {
		enc.conv = append(enc.conv, codecs.NewGraph(fmt.Sprintf("asetnsamples=n=%d:p=0", cc.FrameSize()), 1))
		convSpec += fmt.Sprintf(",asetnsamples=n=%d:p=0", cc.FrameSize())
	}
	enc.opened = codecs.FormatOf(f, enc.media)
	cp := astiav.AllocCodecParameters()
	defer cp.Free()
	if err := cp.FromCodecContext(cc); err != nil {
		return fmt.Errorf("%w: %w", ErrOpen, err)
	}
	var rate astiav.Rational
	if e.Video != nil {
		rate = codecs.AVRat(e.Video.FrameRate)
	}
	enc.params = codecs.Params(cp, rate)
	attrs := []any{"codec", enc.codec.Name(), "width", cc.Width(), "height", cc.Height(),
		"pixel_format", cc.PixelFormat().Name(), "sample_rate", cc.SampleRate(), "convert", convSpec, "input", enc.input.String()}
	if enc.media == envelope.MediaVideo {
		keys := "by frame count (gop)"
		if enc.keys != nil {
			keys = "every " + keyInterval(enc.in).String()
		}
		attrs = append(attrs, "keyframes", keys)
	}
	enc.in.Log.Info("encoder opened", attrs...)
	return nil
}

// Process encodes frames (or passes packets through with codec: copy).
func (enc *Encoder) Process(_ context.Context, in stage.Batch) (stage.Batch, error) {
	var out stage.Batch
	for _, e := range in {
		if enc.copy {
			cp := e.Pass() // the copy owns the packet now
			cp.Stream = ""
			cp.Stamps = append([]envelope.Stamp(nil), e.Stamps...)
			out = append(out, cp)
			continue
		}
		f, err := enc.frame(e)
		if err != nil {
			return out, err
		}
		if enc.cc == nil {
			if f, err = enc.open(f, e); err != nil {
				return out, err
			}
		} else if enc.formatChanged(f) {
			if out, err = enc.scale(out, e); err != nil {
				return out, err
			}
			continue
		}
		if out, err = enc.send(out, f, e); err != nil {
			return out, err
		}
	}
	return out, nil
}

// formatChanged reports a frame whose format differs from the one the
// encoder opened on (warning once): a video frame of another size or pixel
// format, which scale brings to the encoder's; or audio of another sample
// format, rate or layout, which the conversion graph resamples (it
// configures itself again for the new format).
func (enc *Encoder) formatChanged(f *astiav.Frame) bool {
	in := codecs.FormatOf(f, enc.media)
	var changed bool
	if enc.media == envelope.MediaVideo {
		changed = !in.SameSize(enc.opened)
	} else {
		changed = in != enc.opened
	}
	if changed && !enc.changed {
		enc.changed = true
		msg := "the input's picture size or pixel format changed mid-stream: frames are scaled to the size the encoder opened with"
		if enc.media == envelope.MediaAudio {
			msg = "the input's audio format changed mid-stream: it is resampled to the format the encoder opened with"
		}
		enc.in.Log.Warn(msg, "encoder", enc.codec.Name(), "opened", enc.opened.String(), "now", in.String())
	}
	return changed && enc.media == envelope.MediaVideo
}

// scale encodes a video frame of another size or pixel format than the
// encoder opened on, scaled (swscale, bicubic, as the ffmpeg CLI's
// autoscale does: the picture is stretched to fill the frame) to the
// encoder's size and format, in system memory.
func (enc *Encoder) scale(out stage.Batch, e *stage.Msg) (stage.Batch, error) {
	f, err := codecs.FrameOf(e) // a GPU frame is copied off its device
	if err != nil {
		return out, err
	}
	if enc.resize == nil {
		enc.resize = codecs.NewGraph(fmt.Sprintf("scale=%d:%d,format=%s", enc.opened.Width, enc.opened.Height, enc.target.Name()), 1)
	}
	tb, rate := timing(e)
	res, err := enc.resize.Push(f, enc.media, tb, rate)
	out, eerr := enc.encodeAll(out, res)
	if err != nil {
		return out, fmt.Errorf("%w: scaling %s to %dx%d: %w", ErrEncode, codecs.FormatOf(f, enc.media), enc.opened.Width, enc.opened.Height, err)
	}
	return out, eerr
}

// timing is the time base and frame rate of e's frame (zero for nil).
func timing(e *stage.Msg) (tb, rate astiav.Rational) {
	if e == nil {
		return tb, rate
	}
	if e.Video != nil {
		rate = codecs.AVRat(e.Video.FrameRate)
	}
	return codecs.AVRat(e.TimeBase), rate
}

// send encodes f (nil: flush), through the conversion graphs if there are any.
func (enc *Encoder) send(out stage.Batch, f *astiav.Frame, e *stage.Msg) (stage.Batch, error) {
	tb, rate := timing(e)
	if len(enc.conv) == 0 {
		if f != nil && tb != enc.tb {
			f.SetPts(astiav.RescaleQ(f.Pts(), tb, enc.tb))
		}
		return enc.encode(out, f)
	}
	res, err := enc.convert(enc.conv, f, tb, rate)
	out, eerr := enc.encodeAll(out, res)
	if err == nil {
		err = eerr
	}
	if err != nil || f != nil {
		return out, err
	}
	return enc.encode(out, nil)
}

// convert runs f (nil: end of stream) through the graphs of chain in
// turn and returns what comes out of the last.
func (enc *Encoder) convert(chain []*codecs.Graph, f *astiav.Frame, tb, rate astiav.Rational) ([]*stage.Msg, error) {
	res, err := chain[0].Push(f, enc.media, tb, rate)
	if err != nil || len(chain) == 1 {
		return res, err
	}
	var out []*stage.Msg
	for i, r := range res {
		rf, _ := codecs.FrameOf(r) // the graph's own frame
		more, err := enc.convert(chain[1:], rf, codecs.AVRat(r.TimeBase), rate)
		out = append(out, more...)
		r.Release()
		if err != nil {
			release(res[i+1:])
			return out, err
		}
	}
	if f != nil {
		return out, nil
	}
	more, err := enc.convert(chain[1:], nil, tb, rate)
	return append(out, more...), err
}

// encodeAll encodes the frames of a conversion graph, releasing them.
func (enc *Encoder) encodeAll(out stage.Batch, frames []*stage.Msg) (stage.Batch, error) {
	for i, c := range frames {
		cf, _ := codecs.FrameOf(c) // the graph's own frame
		cf.SetPts(astiav.RescaleQ(cf.Pts(), codecs.AVRat(c.TimeBase), enc.tb))
		var err error
		out, err = enc.encode(out, cf)
		c.Release()
		if err != nil {
			release(frames[i+1:])
			return out, err
		}
	}
	return out, nil
}

func release(es []*stage.Msg) {
	for _, e := range es {
		e.Release()
	}
}

func (enc *Encoder) encode(out stage.Batch, f *astiav.Frame) (stage.Batch, error) {
	if f != nil {
		pt := astiav.PictureTypeNone
		if enc.keys != nil && enc.keys.due(f.Pts()) {
			pt = astiav.PictureTypeI
		}
		f.SetPictureType(pt)
		if enc.input == inputUpload || (enc.input == inputDevice && !codecs.IsHardwarePixelFormat(f.PixelFormat())) {
			if err := codecs.Upload(enc.cc, enc.up, f); err != nil {
				return out, fmt.Errorf("%w: %s: %w", ErrEncode, enc.codec.Name(), err)
			}
			f = enc.up
		}
	}
	err := enc.cc.SendFrame(f)
	if enc.up != nil {
		enc.up.Unref()
	}
	if err != nil && !errors.Is(err, astiav.ErrEof) {
		return out, fmt.Errorf("%w: %s: %w", ErrEncode, enc.codec.Name(), err)
	}
	for {
		if err := enc.cc.ReceivePacket(enc.pkt); err != nil {
			if errors.Is(err, astiav.ErrEagain) || errors.Is(err, astiav.ErrEof) {
				return out, nil
			}
			return out, fmt.Errorf("%w: %s: %w", ErrEncode, enc.codec.Name(), err)
		}
		p := astiav.AllocPacket()
		p.MoveRef(enc.pkt)
		out = append(out, codecs.PacketMsg(p, enc.media, enc.params, enc.tb))
	}
}

// Flush drains the encoder.
func (enc *Encoder) Flush(context.Context) (stage.Batch, error) {
	if enc.copy || enc.cc == nil {
		return nil, nil
	}
	var out stage.Batch
	if enc.resize != nil {
		res, err := enc.resize.Push(nil, enc.media, astiav.Rational{}, astiav.Rational{})
		out, eerr := enc.encodeAll(out, res)
		if err = errors.Join(err, eerr); err != nil {
			return out, err
		}
	}
	return enc.send(out, nil, nil)
}

// Close frees the encoder.
func (enc *Encoder) Close() error {
	for _, g := range enc.conv {
		g.Close()
	}
	if enc.resize != nil {
		enc.resize.Close()
	}
	if enc.cc != nil {
		enc.cc.Free()
		enc.cc = nil
	}
	if enc.pkt != nil {
		enc.pkt.Free()
		enc.pkt = nil
	}
	if enc.up != nil {
		enc.up.Free()
		enc.up = nil
	}
	return nil
}

func (i input) String() string {
	return [...]string{"system memory", "GPU frames as they are", "uploaded to the device"}[i]
}

// softwareFormats lists the system-memory pixel formats an encoder takes
// (VA-API encoders list only their device format).
func softwareFormats(c *astiav.Codec) []astiav.PixelFormat {
	var out []astiav.PixelFormat
	for _, pf := range c.PixelFormats() {
		if !codecs.IsHardwarePixelFormat(pf) {
			out = append(out, pf)
		}
	}
	return out
}

// wholeChroma are the software encoders that refuse a picture whose size
// is not a multiple of its chroma subsampling (x264 says only "Generic
// error in an external library"); hardware encoders refuse it too. Others
// (libvpx-vp9, libaom-av1, mpeg4) take it.
var wholeChroma = []string{"libx264", "libx264rgb", "libx265", "libsvtav1", "libkvazaar", "libopenh264"}

// subsampling names chroma subsampling by its shifts (width, height).
var subsampling = map[[2]int]string{{1, 1}: "4:2:0", {1, 0}: "4:2:2", {2, 0}: "4:1:1", {2, 2}: "4:1:0", {0, 1}: "4:4:0"}

// chromaSizeError says why a w x h picture in pf cannot be encoded when its
// size is not a multiple of pf's chroma subsampling, and how to fix it; nil
// when it is.
func chromaSizeError(codec string, w, h int, pf astiav.PixelFormat) error {
	sw, sh, ok := codecs.ChromaShift(pf)
	mw, mh := 1<<sw, 1<<sh
	if !ok || (w%mw == 0 && h%mh == 0) {
		return nil
	}
	fit := func(dim string, m int) string {
		if m == 1 {
			return dim
		}
		return fmt.Sprintf("trunc(%s/%d)*%d", dim, m, m)
	}
	what := subsampling[[2]int{sw, sh}]
	if what == "" {
		what = fmt.Sprintf("1/%d of the width, 1/%d of the height", mw, mh)
	}
	return fmt.Errorf("%w: %w: %s cannot encode %dx%d %s: its chroma is subsampled (%s), so the width must be a multiple of %d and the height of %d; scale to such a size first, e.g. a filter stage before the encoder with graph: \"scale=%s:%s\"",
		ErrOpen, ErrChromaSize, codec, w, h, pf.Name(), what, mw, mh, fit("iw", mw), fit("ih", mh))
}
