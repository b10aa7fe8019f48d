package codecs

/*
#include "hwctx.h"
#include <libavfilter/buffersink.h>
#include <libavutil/imgutils.h>

// avf_sink_size gives the size and format of the frames a video graph's
// buffersink gives, and their size in bytes (-1: unknown).
static int64_t avf_sink_size(const AVFilterContext *sink, int *w, int *h, int *fmt) {
	*w = av_buffersink_get_w(sink);
	*h = av_buffersink_get_h(sink);
	*fmt = av_buffersink_get_format(sink);
	int n = av_image_get_buffer_size(*fmt, *w, *h, 1);
	return n < 0 ? -1 : n;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
)

// Sentinel errors.
var (
	// ErrFilter reports a filter graph that cannot be built or run.
	ErrFilter = errors.New("filter graph failed")
	// ErrTooLarge reports a graph that makes frames over its MaxPixels.
	ErrTooLarge = errors.New("frames too large")
)

// Graph is a one-input, one-output FFmpeg filter graph, configured from the
// format of the first frame it sees, and configured again (as the ffmpeg
// CLI does) whenever a frame comes in another format: another size or
// pixel format (or device frame pool), another sample rate, sample format
// or channel layout. The frames the old graph still holds come out first.
type Graph struct {
	// Log, if set, is told each time the graph is configured again for a
	// new input format.
	Log *slog.Logger
	// MaxPixels, if positive, bounds the frames a video graph may make
	// (width x height): a graph configured to make larger ones fails with
	// ErrTooLarge before it makes any.
	MaxPixels int
	spec      string
	threads   int
	media     envelope.Media
	in        FrameFormat // the input format the graph is configured for
	g         *astiav.FilterGraph
	src       *astiav.FilterContext
	sink      *astiav.FilterContext
	frame     *astiav.Frame
	outTB     astiav.Rational
	rate      astiav.Rational
	// dev is the device the graph's filters run on (nil: the CPU);
	// upload is put in front of spec when frames come from system memory.
	dev    *astiav.HardwareDeviceContext
	upload string
	// OnDevice is whether frames enter the graph in device memory, as
	// they are (known once the first frame built the graph).
	OnDevice bool
}

// NewGraph returns a graph for spec (e.g. "scale=1280:720"), built lazily.
func NewGraph(spec string, threads int) *Graph {
	return &Graph{spec: spec, threads: threads, frame: astiav.AllocFrame()}
}

// NewDeviceGraph returns a graph whose filters may run on dev
// (scale_cuda, overlay_vaapi, scale_vulkan...). Frames in dev's memory go
// in as they are; frames in system memory go through upload first
// ("hwupload", or "format=nv12,hwupload" for VA-API). Every filter gets
// the device, so hwupload and the device filters find it. Frames leave in
// whatever memory the graph's last filter puts them (device frames, unless
// the graph ends in hwdownload).
func NewDeviceGraph(spec string, threads int, dev *astiav.HardwareDeviceContext, upload string) *Graph {
	g := NewGraph(spec, threads)
	g.dev, g.upload = dev, upload
	return g
}

func (g *Graph) build(f *astiav.Frame, media envelope.Media, tb, frameRate astiav.Rational) (err error) {
	g.g = astiav.AllocFilterGraph()
	if g.g == nil {
		return fmt.Errorf("%w: allocating graph", ErrFilter)
	}
	g.g.SetThreadCount(g.threads)
	outputs := astiav.AllocFilterInOut()
	defer outputs.Free()
	inputs := astiav.AllocFilterInOut()
	defer inputs.Free()
	var srcName, sinkName string
	var args astiav.FilterArgs
	spec := g.spec
	g.OnDevice = g.dev != nil && IsHardwarePixelFormat(f.PixelFormat())
	if g.dev != nil && !g.OnDevice && g.upload != "" {
		spec = g.upload + "," + spec
	}
	switch media {
	case envelope.MediaVideo:
		srcName, sinkName = "buffer", "buffersink"
		args = astiav.FilterArgs{
			"pix_fmt":      strconv.Itoa(int(f.PixelFormat())),
			"pixel_aspect": sar(f.SampleAspectRatio()).String(),
			"time_base":    tb.String(),
			"video_size":   strconv.Itoa(f.Width()) + "x" + strconv.Itoa(f.Height()),
		}
		if frameRate.Num() > 0 {
			args["frame_rate"] = frameRate.String()
		}
	case envelope.MediaAudio:
		srcName, sinkName = "abuffer", "abuffersink"
		args = astiav.FilterArgs{
			"channel_layout": f.ChannelLayout().String(),
			"sample_fmt":     f.SampleFormat().Name(),
			"sample_rate":    strconv.Itoa(f.SampleRate()),
			"time_base":      tb.String(),
		}
	default:
		return fmt.Errorf("%w: unknown media", ErrFilter)
	}
	if g.src, err = g.g.NewFilterContext(astiav.FindFilterByName(srcName), "in", args); err != nil {
		return fmt.Errorf("%w: creating %s: %w", ErrFilter, srcName, err)
	}
	if g.OnDevice {
		if !OnDevice(f, g.dev) {
			return fmt.Errorf("%w: %q: the frames are on another device than the graph's", ErrFilter, g.spec)
		}
		if ret := C.avf_buffersrc_frames(filterPtr(g.src), cframe(f)); ret < 0 {
			return fmt.Errorf("%w: giving the device frames to %q: %w", ErrFilter, g.spec, astiav.Error(ret))
		}
	}
	if g.sink, err = g.g.NewFilterContext(astiav.FindFilterByName(sinkName), "out", nil); err != nil {
		return fmt.Errorf("%w: creating %s: %w", ErrFilter, sinkName, err)
	}
	outputs.SetName("in")
	outputs.SetFilterContext(g.src)
	outputs.SetPadIdx(0)
	outputs.SetNext(nil)
	inputs.SetName("out")
	inputs.SetFilterContext(g.sink)
	inputs.SetPadIdx(0)
	inputs.SetNext(nil)
	if err := g.g.Parse(spec, inputs, outputs); err != nil {
		return fmt.Errorf("%w: parsing %q: %w", ErrFilter, spec, err)
	}
	if g.dev != nil {
		if ret := C.avf_graph_set_device(graphPtr(g.g), devRef(g.dev)); ret < 0 {
			return fmt.Errorf("%w: giving %q its device: %w", ErrFilter, spec, astiav.Error(ret))
		}
	}
	if err := g.g.Configure(); err != nil {
		return fmt.Errorf("%w: configuring %q: %w", ErrFilter, spec, err)
	}
	if media == envelope.MediaVideo {
		if err := g.checkSize(f); err != nil {
			return err
		}
	}
	g.outTB = g.sink.Inputs()[0].TimeBase()
	g.media, g.rate = media, frameRate
	g.in = FormatOf(f, media)
	return nil
}

// checkSize refuses a graph whose frames are over MaxPixels.
func (g *Graph) checkSize(in *astiav.Frame) error {
	var w, h, pf C.int
	size := C.avf_sink_size(filterPtr(g.sink), &w, &h, &pf)
	if g.MaxPixels <= 0 || int64(w)*int64(h) <= int64(g.MaxPixels) {
		return nil
	}
	bytes := "size unknown"
	switch {
	case size >= 1<<20:
		bytes = fmt.Sprintf("%d MiB each", int64(size)>>20)
	case size >= 0:
		bytes = fmt.Sprintf("%d KiB each", int64(size)>>10)
	}
	return fmt.Errorf("%w: %w: %q makes %dx%d %s frames from %dx%d (%.1f megapixels, %s), over the limit of %d pixels",
		ErrFilter, ErrTooLarge, g.spec, w, h, astiav.PixelFormat(pf).Name(), in.Width(), in.Height(),
		float64(w)*float64(h)/1e6, bytes, g.MaxPixels)
}

func sar(r astiav.Rational) astiav.Rational {
	if r.Num() == 0 || r.Den() == 0 {
		return astiav.NewRational(1, 1)
	}
	return r
}

// Push sends a frame (nil: end of stream) and returns the frames that are
// ready. A frame in another format than the graph was configured for ends
// the graph (its last frames come out first) and configures a new one.
func (g *Graph) Push(f *astiav.Frame, media envelope.Media, tb, frameRate astiav.Rational) ([]*stage.Msg, error) {
	var out []*stage.Msg
	if f != nil && g.g != nil {
		if in := FormatOf(f, media); in != g.in {
			var err error
			if out, err = g.send(out, nil); err != nil {
				return out, err
			}
			if g.Log != nil {
				g.Log.Info("filter graph configured again: the input format changed", "graph", g.spec, "from", g.in.String(), "to", in.String())
			}
			g.g.Free()
			g.g = nil
		}
	}
	if g.g == nil {
		if f == nil {
			return out, nil
		}
		if err := g.Build(f, media, tb, frameRate); err != nil {
			return out, err
		}
	}
	return g.send(out, f)
}

// Build configures the graph for frames like f, if it is not yet: a stage
// that sends commands (Command) before its first frame goes through
// builds it first. Push builds it otherwise.
func (g *Graph) Build(f *astiav.Frame, media envelope.Media, tb, frameRate astiav.Rational) error {
	if g.g != nil {
		return nil
	}
	if err := g.build(f, media, tb, frameRate); err != nil {
		if g.g != nil {
			g.g.Free()
			g.g = nil
		}
		return err
	}
	return nil
}

// send feeds f (nil: end of stream) and appends the frames that are ready.
func (g *Graph) send(out []*stage.Msg, f *astiav.Frame) ([]*stage.Msg, error) {
	if err := g.src.BuffersrcAddFrame(f, astiav.NewBuffersrcFlags(astiav.BuffersrcFlagKeepRef)); err != nil {
		return out, fmt.Errorf("%w: feeding %q: %w", ErrFilter, g.spec, err)
	}
	for {
		if err := g.sink.BuffersinkGetFrame(g.frame, astiav.NewBuffersinkFlags()); err != nil {
			if errors.Is(err, astiav.ErrEagain) || errors.Is(err, astiav.ErrEof) {
				return out, nil
			}
			return out, fmt.Errorf("%w: %q: %w", ErrFilter, g.spec, err)
		}
		o := astiav.AllocFrame()
		o.MoveRef(g.frame)
		out = append(out, FrameMsg(o, g.media, g.outTB, g.rate))
	}
}

// Command sends a command to the filter named target (a filter given an
// instance name in the spec: "crop@cam=..." is target "crop@cam"), as
// ffmpeg's sendcmd does; it applies from the next frame. The graph must
// have been built (by the first Push).
func (g *Graph) Command(target, cmd, arg string) error {
	if g.g == nil {
		return fmt.Errorf("%w: %q: command %s to %s before the first frame", ErrFilter, g.spec, cmd, target)
	}
	if _, err := g.g.SendCommand(target, cmd, arg, astiav.NewFilterCommandFlags()); err != nil {
		return fmt.Errorf("%w: %q: command %s %s to %s failed: %w", ErrFilter, g.spec, cmd, arg, target, err)
	}
	return nil
}

// Built reports whether the graph has been configured (by a first Push).
func (g *Graph) Built() bool { return g.g != nil }

// Close frees the graph.
func (g *Graph) Close() {
	if g.g != nil {
		g.g.Free()
		g.g = nil
	}
	if g.frame != nil {
		g.frame.Free()
		g.frame = nil
	}
}
