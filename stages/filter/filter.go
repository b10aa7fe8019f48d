// Package filter is the filter stage: an FFmpeg filter graph (scale, fps,
// format, crop, drawtext, aresample...) applied to raw frames, on the CPU
// or, with FFmpeg's device filters (scale_cuda, overlay_vaapi,
// scale_vulkan...), on a GPU.
package filter

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/accelerators"
	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
)

// ErrDevice reports a graph that cannot run where the stage is bound.
var ErrDevice = errors.New("filter: graph and device do not match")

// DefaultMaxPixels is the largest frame a filter stage makes unless its
// max_pixels says otherwise: 8192x8192, above 8K UHD (7680x4320) and the
// largest pictures H.264 and HEVC levels allow (8192x4320).
const DefaultMaxPixels = 8192 * 8192

func init() {
	pipeline.MustRegister(pipeline.Spec{
		Kind:    "filter",
		Summary: "Apply an FFmpeg filter graph with one input and one output to raw video or audio frames, on the CPU or with FFmpeg's GPU filters.",
		Params: []pipeline.Param{
			{Name: "graph", Type: pipeline.TypeString, Required: true, Doc: `FFmpeg filter graph, e.g. "scale=1280:720" or "fps=30,format=yuv420p" (audio: "aresample=48000"); on a GPU, its device filters: "scale_cuda=1280:720", "scale_vaapi=w=1280:h=720"`},
			{Name: "cpu_graph", Type: pipeline.TypeString, Doc: "the graph to run when a stage whose graph uses GPU filters ends up on the CPU (fallback), e.g. scale=1280:720"},
			{Name: "threads", Type: pipeline.TypeInt, Default: 0, Doc: "filter graph threads (0: FFmpeg's default)"},
			{Name: "max_pixels", Type: pipeline.TypeInt, Default: DefaultMaxPixels, Doc: "refuse, at the first frame, a graph that makes video frames of more pixels than this (width x height; default 8192x8192; 0: no limit): scale=16000:16000 makes 384 MB frames, too large to encode in reasonable time or to carry over NATS"},
		},
		MinInputs: 1, MaxInputs: 1,
		Ports: func(_ pipeline.Params, in []pipeline.PortType) ([]pipeline.Port, error) {
			if in[0].Kind != envelope.KindFrame {
				return nil, fmt.Errorf("filter takes raw frames, got %s: put a decode stage before it", in[0])
			}
			return []pipeline.Port{{Name: "out", Type: in[0]}}, nil
		},
		New:          New,
		Accelerators: []accelerators.Kind{accelerators.CPU, accelerators.GPU},
		AcceleratorsFor: func(in []pipeline.PortType) []accelerators.Kind {
			if len(in) == 1 && in[0].Media == envelope.MediaVideo {
				return []accelerators.Kind{accelerators.CPU, accelerators.GPU}
			}
			return []accelerators.Kind{accelerators.CPU}
		},
		DeviceCheck: func(p pipeline.Params, _ []pipeline.PortType, d accelerators.Device) error {
			kind, _, _, _ := accelerators.FFmpegDevice(d.ID)
			if !slices.Contains(deviceKinds(p.String("graph")), kind) {
				return fmt.Errorf("graph %q has no filter for %s (scale_%s, ...)", p.String("graph"), d.ID, kind)
			}
			return nil
		},
	})
}

// filterName finds the filter names in a graph description: a name
// starts a chain or follows ',' or ';' (after any [label]s).
var filterName = regexp.MustCompile(`(?:^|[,;])\s*(?:\[[^\]]*\]\s*)*([A-Za-z0-9_]+)`)

// suffixKinds maps device filters' name suffixes to FFmpeg device kinds.
var suffixKinds = map[string]string{"_cuda": "cuda", "_npp": "cuda", "_vaapi": "vaapi", "_vulkan": "vulkan"}

// quoted matches FFmpeg's quoting and escapes in filter arguments.
var quoted = regexp.MustCompile(`\\.|'[^']*'`)

// deviceKinds lists the device kinds whose filters a graph uses.
func deviceKinds(graph string) []string {
	var out []string
	for _, m := range filterName.FindAllStringSubmatch(quoted.ReplaceAllString(graph, "_"), -1) {
		for suffix, kind := range suffixKinds {
			if strings.HasSuffix(m[1], suffix) && !slices.Contains(out, kind) {
				out = append(out, kind)
			}
		}
	}
	slices.Sort(out)
	return out
}

// uploads are the filters that move system-memory frames onto each kind
// of device ahead of the stage's graph.
var uploads = map[string]string{"cuda": "hwupload", "vaapi": "format=nv12,hwupload", "vulkan": "hwupload"}

// New builds the stage: on a GPU, a graph whose filters get the device;
// on the CPU, the graph (or cpu_graph, when graph needs a GPU).
func New(_ context.Context, in pipeline.Init) (stage.Stage, error) {
	graph, threads := in.Params.String("graph"), in.Params.Int("threads")
	f := &Filter{in: in}
	if in.Device.Kind == accelerators.GPU {
		kind, name, _, _ := accelerators.FFmpegDevice(in.Device.ID)
		dev, err := accelerators.DeviceContext(kind, name)
		if err == nil {
			f.dev = dev
			f.g = codecs.NewDeviceGraph(graph, threads, dev, uploads[kind])
			f.g.Log, f.g.MaxPixels = in.Log, in.Params.Int("max_pixels")
			// FFmpeg 5.1's Vulkan filter output read back after its graph
			// has gone on to the next frame comes back with wrong pixels
			// now and then (seen with Mesa's lavapipe, even with every
			// Vulkan call serialised); read back at once it is exact. So
			// Vulkan frames leave this stage in system memory; CUDA and
			// VA-API frames travel on to the next stage on the device.
			f.hostOut = kind == "vulkan"
			return f, nil
		}
		if in.Strict || in.Params.String("cpu_graph") == "" {
			return nil, fmt.Errorf("%w: %s: %w", ErrDevice, in.Device.ID, err)
		}
		in.Log.Warn("accelerator fallback: filtering on the CPU with cpu_graph", "wanted", in.Device.ID, "why", err)
		f.FellBack()
	}
	if kinds := deviceKinds(graph); len(kinds) > 0 {
		cpu := in.Params.String("cpu_graph")
		if cpu == "" {
			return nil, fmt.Errorf("%w: graph %q uses %s filters, but the stage runs on %s: bind it to a GPU (accelerator: gpu) or give cpu_graph for the CPU",
				ErrDevice, graph, strings.Join(kinds, "/"), in.Device.ID)
		}
		graph = cpu
	}
	f.g = codecs.NewGraph(graph, threads)
	f.g.Log, f.g.MaxPixels = in.Log, in.Params.Int("max_pixels")
	return f, nil
}

// Filter runs one filter graph.
type Filter struct {
	stage.Base
	in    pipeline.Init
	g     *codecs.Graph
	dev   *astiav.HardwareDeviceContext // the GPU the graph runs on; nil: CPU
	media envelope.Media
	tb    envelope.Rational
	rate  envelope.Rational
	// CPUFallback reports the CPU when the GPU would not open and
	// cpu_graph runs instead (see Status).
	pipeline.CPUFallback
	// hostOut: frames leave in system memory, read back by this stage.
	hostOut bool
}

// Status reports the CPU once the filter fell back to it.
func (f *Filter) Status() stage.Status { return stage.Status{Device: f.Device()} }

// Process filters frames.
func (f *Filter) Process(_ context.Context, in stage.Batch) (stage.Batch, error) {
	var out stage.Batch
	for _, e := range in {
		fr, err := codecs.FrameOn(e, f.dev)
		if err != nil {
			return out, err
		}
		first := f.media == envelope.MediaUnknown
		f.media, f.tb = e.Media, e.TimeBase
		if e.Video != nil {
			f.rate = e.Video.FrameRate
		}
		res, err := f.g.Push(fr, e.Media, codecs.AVRat(e.TimeBase), codecs.AVRat(f.rate))
		if f.hostOut {
			for _, r := range res {
				if herr := r.Local.(*codecs.Frame).ToHost(r); herr != nil && err == nil {
					err = herr
				}
			}
		}
		out = append(out, res...)
		if errors.Is(err, codecs.ErrTooLarge) {
			return out, fmt.Errorf("%w (the stage's max_pixels): make them smaller, or raise max_pixels if such frames are meant", err)
		}
		if err != nil {
			return out, err
		}
		if first && f.dev != nil {
			where := "uploaded from system memory"
			if f.g.OnDevice {
				where = "already on the device"
			}
			f.in.Log.Info("filter graph on the GPU", "device", f.in.Device.ID, "input", where)
		}
	}
	return out, nil
}

// Flush drains frames the graph holds back.
func (f *Filter) Flush(context.Context) (stage.Batch, error) {
	return f.g.Push(nil, f.media, codecs.AVRat(f.tb), codecs.AVRat(f.rate))
}

// Close frees the graph.
func (f *Filter) Close() error { f.g.Close(); return nil }
