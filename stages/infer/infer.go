package infer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/accelerators"
	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
	"github.com/avflow/avflow/stages/infer/model"
	"github.com/avflow/avflow/stages/infer/onnx"
)

// ErrInfer wraps failures of the infer stage.
var ErrInfer = errors.New("infer")

func init() {
	pipeline.MustRegister(pipeline.Spec{
		Kind:    "infer",
		Summary: "Run an ONNX model (a model card) on video frames or audio; attach boxes, classes, text or speech segments.",
		Params: []pipeline.Param{
			{Name: "model", Type: pipeline.TypeString, Required: true, Doc: "model card: a built-in name (avflow models list) or a card file path"},
			{Name: "recognizer", Type: pipeline.TypeString, Doc: "second model run on each detected box (OCR: ppocr-v4-rec reads the text ppocr-v4-det finds)"},
			{Name: "threshold", Type: pipeline.TypeFloat, Default: 0.0, Doc: "minimum score (0: the card's)"},
			{Name: "scaler", Type: pipeline.TypeString, Default: "bilinear", Enum: ScalerNames, Doc: "swscale algorithm that sizes frames for the model (the names of ffmpeg's scale flags=; the ffmpeg CLI's default is bicubic)"},
			{Name: "pad", Type: pipeline.TypeFloat, Default: 0.0, Doc: "mirror the frame into a border of this fraction of its width and height on every side before the model sees it (0 to 1): a face or object that the frame's edge cuts looks whole to the model; no extra run, but everything is that much smaller in the model's input; boxes are cut back to the frame"},
			{Name: "interval", Type: pipeline.TypeInt, Default: 1, Doc: "run the model on every Nth video frame of each stream, by the frame's place in the stream, so replicas (here or served elsewhere) pick the same frames (a track stage carries boxes between)"},
			{Name: "regions", Type: pipeline.TypeMap, Doc: "read the text of these named regions of the frame (name: x1,y1,x2,y2 as fractions of the frame) with a text recognizer model (model: ppocr-v4-rec) instead of running a detector: a HUD whose text sits in fixed places. Each region becomes a detection labelled with its name, its text in Text (templates see it as {{.HUD.<name>}}); frames between reads (interval) carry the last one"},
			{Name: "max_batch", Type: pipeline.TypeInt, Default: 1, Doc: "frames (from any stream) taken together per call"},
			{Name: "max_wait", Type: pipeline.TypeDuration, Default: "0s", Doc: "how long a batch may wait to fill (0: take what is queued)"},
			{Name: "threads", Type: pipeline.TypeInt, Default: 0, Doc: "ONNX Runtime intra-op threads (0: one per core)"},
			{Name: "spin", Type: pipeline.TypeBool, Default: false, Doc: "let ONNX Runtime's worker threads spin between runs (for a model with cores to itself; in a pipeline they take cores other stages need)"},
			{Name: "overlap", Type: pipeline.TypeBool, Default: false, Doc: "preprocess the next frames while the model runs (throughput where cores are spare; results leave one call later)"},
			{Name: "optimization", Type: pipeline.TypeString, Default: "all", Enum: []string{"disable", "basic", "extended", "all"}, Doc: "ONNX Runtime graph optimisation level"},
			{Name: "remote", Type: pipeline.TypeBool, Default: false, Doc: "run the model in the shared inference service avflow-infer-<model> on NATS (avflow serve --infer MODEL): frames are scaled to the model's input here and only that image crosses the wire (230 KB for a 320x240 model, not a 3 MB 1080p frame); the service batches the images of every caller. Not the stage-level remote: true, which runs the whole stage in another process"},
			{Name: "timeout", Type: pipeline.TypeDuration, Default: "2s", Doc: "remote: how long a frame waits for its answer"},
			{Name: "on_timeout", Type: pipeline.TypeString, Default: "", Enum: []string{"", PolicyHold, PolicySkip, PolicyFail}, Doc: "remote: a frame whose answer does not come in time (service gone or slow): hold keeps the stream's last boxes (marked kept), skip gives none, fail fails the stage; empty: hold in drop-oldest (live) flow, fail in block flow; counted (remote_timeouts, remote_held, remote_skipped)"},
			{Name: "service_wait", Type: pipeline.TypeDuration, Default: "10s", Doc: "remote: how long the stage waits at start for an instance of the service"},
		},
		MinInputs: 1, MaxInputs: 1,
		Ports: func(p pipeline.Params, in []pipeline.PortType) ([]pipeline.Port, error) {
			if in[0].Kind != envelope.KindFrame {
				return nil, fmt.Errorf("infer takes raw frames, got %s: put a decode stage before it", in[0])
			}
			return []pipeline.Port{
				{Name: "out", Type: in[0]},
				{Name: "meta", Type: pipeline.PortType{Kind: envelope.KindData, Media: in[0].Media}},
			}, nil
		},
		Check: func(p pipeline.Params, dir string) error {
			if err := CheckPad("pad", p.Float("pad")); err != nil {
				return err
			}
			if rs := p.Map("regions"); len(rs) > 0 {
				if _, err := parseRegions(rs); err != nil {
					return err
				}
				if p.Bool("remote") || p.String("recognizer") != "" {
					return errors.New("regions: the model itself is the text recognizer, run here: no recognizer, no remote")
				}
			}
			if p.Bool("remote") {
				switch {
				case p.String("recognizer") != "":
					return errors.New("remote: the shared service runs one model; a recognizer runs here only")
				case p.Bool("overlap"):
					return errors.New("remote: the service overlaps runs itself; turn overlap off")
				case p.Duration("timeout") <= 0:
					return errors.New("remote: timeout must be > 0")
				}
			}
			for _, k := range []string{"model", "recognizer"} {
				if v := p.String(k); v != "" {
					if _, err := lookup(v, dir); err != nil {
						return err
					}
				}
			}
			return nil
		},
		New:          New,
		Accelerators: []accelerators.Kind{accelerators.CPU, accelerators.GPU, accelerators.NPU},
		DeviceCheck:  deviceCheck,
		Replicable:   replicable,
	})
}

// ScalerNames are the swscale algorithms a detector can size frames with,
// by the names ffmpeg's scale filter takes in flags=.
var ScalerNames = []string{"bilinear", "fast_bilinear", "bicubic", "neighbor", "area", "bicublin", "gauss", "sinc", "lanczos", "spline"}

var scalers = map[string]astiav.SoftwareScaleContextFlag{
	"bilinear": astiav.SoftwareScaleContextFlagBilinear, "fast_bilinear": astiav.SoftwareScaleContextFlagFastBilinear,
	"bicubic": astiav.SoftwareScaleContextFlagBicubic, "neighbor": astiav.SoftwareScaleContextFlagPoint,
	"area": astiav.SoftwareScaleContextFlagArea, "bicublin": astiav.SoftwareScaleContextFlagBicublin,
	"gauss": astiav.SoftwareScaleContextFlagGauss, "sinc": astiav.SoftwareScaleContextFlagSinc,
	"lanczos": astiav.SoftwareScaleContextFlagLanczos, "spline": astiav.SoftwareScaleContextFlagSpline,
}

// scalerFlags are the swscale flags of a scaler name.
func scalerFlags(name string) (astiav.SoftwareScaleContextFlag, error) {
	f, ok := scalers[name]
	if !ok {
		return 0, fmt.Errorf("%w: unknown scaler %q (one of %s)", ErrInfer, name, strings.Join(ScalerNames, ", "))
	}
	return f, nil
}

// ParseScalers splits a comma-separated list of scaler names (see
// ScalerNames), refusing an unknown name or an empty list.
func ParseScalers(list string) ([]string, error) {
	var out []string
	for _, name := range strings.Split(list, ",") {
		if name = strings.TrimSpace(name); name == "" {
			continue
		}
		if _, err := scalerFlags(name); err != nil {
			return nil, err
		}
		out = append(out, name)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no scaler in %q (one or more of %s)", ErrInfer, list, strings.Join(ScalerNames, ", "))
	}
	return out, nil
}

// CheckPad refuses a pad (see the pad param) that is not a number from 0 to 1.
func CheckPad(name string, v float64) error {
	if !(v >= 0 && v <= 1) {
		return fmt.Errorf("%w: %s must be a fraction of the frame from 0 to 1, got %v", ErrInfer, name, v)
	}
	return nil
}

func lookup(name, dir string) (*model.Card, error) {
	if strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml") {
		name = pipeline.ResolvePath(dir, name)
	}
	return model.Lookup(name)
}

// loaded is a card with its session and files.
type loaded struct {
	card     *model.Card
	sess     *onnx.Session
	files    model.Files
	provider string // execution provider in use ("": CPU)
}

func load(ctx context.Context, in pipeline.Init, name string) (*loaded, error) {
	card, err := lookup(name, in.Dir)
	if err != nil {
		return nil, err
	}
	o := onnx.Options{IntraOpThreads: in.Params.Int("threads"), OptLevel: in.Params.String("optimization"), Spin: in.Params.Bool("spin")}
	o.Provider, o.ProviderOptions = provider(in.Device)
	sess, files, err := OpenCard(card, o, in.Log)
	if errors.Is(err, onnx.ErrProvider) && !in.Strict {
		in.Log.Warn("accelerator fallback: the model runs on the CPU", "wanted", in.Device.ID, "model", card.Name, "why", err)
		o.Provider, o.ProviderOptions = "", nil
		sess, files, err = OpenCard(card, o, in.Log)
	}
	if err != nil {
		return nil, err
	}
	return &loaded{card: card, sess: sess, files: files, provider: o.Provider}, nil
}

// device is where a loaded model runs: the device the stage was bound
// to, or the CPU when its execution provider would not load.
func (m *loaded) device(in pipeline.Init) string {
	if m.provider == "" {
		return accelerators.CPUID
	}
	return in.Device.ID
}

// Status reports where the model runs.
func (s *Video) Status() stage.Status {
	if s.remote != nil { // preprocessing runs here, on the CPU
		return stage.Status{Device: accelerators.CPUID, Counts: s.remote.counts()}
	}
	return stage.Status{Device: s.m.device(s.in)}
}

// provider maps the device a stage is bound to onto an ONNX Runtime
// execution provider and its options ("" for the CPU).
func provider(d accelerators.Device) (string, map[string]string) {
	name, ok := strings.CutPrefix(d.ID, "ort:")
	if !ok || d.Kind == accelerators.CPU {
		return "", nil
	}
	switch name {
	case "CUDAExecutionProvider", "TensorrtExecutionProvider":
		return name, map[string]string{"device_id": "0"}
	case "OpenVINOExecutionProvider":
		return name, map[string]string{"device_type": strings.ToUpper(string(d.Kind))}
	}
	return name, nil
}

// replicable: several instances of an image model may share the input
// (interval counts a frame's place in its stream, which every instance
// sees); overlapping calls and audio models' running state may not be
// split.
func replicable(p pipeline.Params) error {
	switch {
	case p.Bool("overlap"):
		return errors.New("overlap returns frames a call late: turn it off with replicas")
	}
	if card, err := lookup(p.String("model"), ""); err == nil && card.Decoder.Type == "silero-vad" {
		return errors.New("an audio model keeps state from chunk to chunk")
	}
	return nil
}

// deviceCheck: the infer stage reaches GPUs and NPUs through ONNX Runtime's
// execution providers, not through FFmpeg's device contexts.
func deviceCheck(_ pipeline.Params, _ []pipeline.PortType, d accelerators.Device) error {
	if !strings.HasPrefix(d.ID, "ort:") {
		return fmt.Errorf("%s is a device for FFmpeg; infer needs an ONNX Runtime execution provider for it", d.ID)
	}
	return nil
}

// OpenCard pulls a card's files (sha256-verified), loads the model in ONNX
// Runtime and checks the card's shapes against it.
func OpenCard(card *model.Card, o onnx.Options, log *slog.Logger) (*onnx.Session, model.Files, error) {
	files, err := model.Pull(card, log)
	if err != nil {
		return nil, files, err
	}
	for _, in := range card.Inputs {
		if in.FreeBatch {
			o.FreeBatch = append(o.FreeBatch, in.Name)
		}
	}
	sess, err := onnx.Open(files.Model, o)
	if err != nil {
		return nil, files, fmt.Errorf("model %s: %w", card.Name, err)
	}
	ins, outs := map[string][]int64{}, map[string][]int64{}
	for _, t := range sess.Inputs {
		ins[t.Name] = t.Shape
	}
	for _, t := range sess.Outputs {
		outs[t.Name] = t.Shape
	}
	if err := card.CheckShapes(ins, outs); err != nil {
		sess.Close()
		return nil, files, err
	}
	v, lib, _ := onnx.Version()
	log.Info("model loaded", "model", card.Name, "file", files.Model, "decoder", card.Decoder.Type, "onnxruntime", v, "library", lib)
	return sess, files, nil
}

// New loads the model (and recognizer), checking the card against it.
func New(ctx context.Context, in pipeline.Init) (stage.Stage, error) {
	if in.Params.Bool("remote") {
		return newRemoteVideo(ctx, in)
	}
	m, err := load(ctx, in, in.Params.String("model"))
	if err != nil {
		return nil, err
	}
	if len(in.Params.Map("regions")) > 0 {
		return newRegionReader(in, m)
	}
	if m.card.Decoder.Type == "silero-vad" {
		if in.Inputs[0].Media == envelope.MediaVideo {
			m.sess.Close()
			return nil, fmt.Errorf("%w: model %s is an audio model; its input gives video frames", ErrInfer, m.card.Name)
		}
		return newVAD(in, m)
	}
	if in.Inputs[0].Media == envelope.MediaAudio {
		m.sess.Close()
		return nil, fmt.Errorf("%w: model %s takes images; its input gives audio frames", ErrInfer, m.card.Name)
	}
	o := DetectorOptions{Threshold: float32(in.Params.Float("threshold")), Pad: in.Params.Float("pad"), Scalers: []string{in.Params.String("scaler")}}
	d, err := newDetector(ctx, in, m, o, in.Params.String("recognizer"))
	if err != nil {
		return nil, err
	}
	return &Video{in: in, Detector: d, interval: max(1, in.Params.Int("interval")), counts: map[string]int{},
		overlap: in.Params.Bool("overlap")}, nil
}

// newRemoteVideo is an infer stage whose model runs in the shared service:
// only the card is read here (no model file, no ONNX Runtime session).
func newRemoteVideo(ctx context.Context, in pipeline.Init) (stage.Stage, error) {
	card, err := lookup(in.Params.String("model"), in.Dir)
	if err != nil {
		return nil, err
	}
	switch {
	case in.Inputs[0].Media != envelope.MediaVideo:
		return nil, fmt.Errorf("%w: model %s: remote: true takes video frames", ErrInfer, card.Name)
	case card.Decoder.Type == "silero-vad":
		return nil, fmt.Errorf("%w: model %s is an audio model; remote: true serves image models", ErrInfer, card.Name)
	}
	o := DetectorOptions{Threshold: float32(in.Params.Float("threshold")), Pad: in.Params.Float("pad"), Scalers: []string{in.Params.String("scaler")}}
	d, err := newDetector(ctx, in, &loaded{card: card}, o, "")
	if err != nil {
		return nil, err
	}
	r, err := newRemote(in, d)
	if err != nil {
		d.Close()
		return nil, err
	}
	return &Video{in: in, Detector: d, interval: max(1, in.Params.Int("interval")), counts: map[string]int{}, remote: r}, nil
}

// Detector runs an image model (and an optional text recognizer) on frames.
// Other stages use it too (redact verifies its own output with one).
type Detector struct {
	m     *loaded
	views []*preprocessor // one per scaler; the Video stage has one
	rec   *recognizer
	thr   float32
	buf   []float32
	once  sync.Once
	runs  chan *modelRun // to the model thread (see start)
}

// DetectorOptions say how a Detector shows frames to its model and which
// results it keeps (see the infer stage's params of the same names).
type DetectorOptions struct {
	Threshold float32  // minimum score; 0: the card's
	Pad       float64  // mirrored border around each frame, a fraction of its size
	Scalers   []string // swscale algorithms (ScalerNames), one model run each; none: bilinear
}

// NewDetector loads a model card for use on video frames. in supplies the
// folder, log and threads params.
func NewDetector(ctx context.Context, in pipeline.Init, modelName string, o DetectorOptions) (*Detector, error) {
	m, err := load(ctx, in, modelName)
	if err != nil {
		return nil, err
	}
	return newDetector(ctx, in, m, o, "")
}

func newDetector(ctx context.Context, in pipeline.Init, m *loaded, o DetectorOptions, recognizer string) (*Detector, error) {
	switch m.card.Decoder.Type {
	case "ultraface", "yolo", "dbnet", "classifier":
	default:
		if m.sess != nil { // a remote detector has none
			m.sess.Close()
		}
		return nil, fmt.Errorf("%w: model %s (decoder %s) does not take video frames", ErrInfer, m.card.Name, m.card.Decoder.Type)
	}
	d := &Detector{m: m, thr: o.Threshold}
	if len(o.Scalers) == 0 {
		o.Scalers = []string{"bilinear"}
	}
	for _, name := range o.Scalers {
		flags, err := scalerFlags(name)
		if err != nil {
			d.Close()
			return nil, err
		}
		d.views = append(d.views, newPreprocessor(m.card.Inputs[0], o.Pad, flags))
	}
	if d.thr == 0 {
		d.thr = m.card.Decoder.Threshold
	}
	if recognizer != "" {
		rm, err := load(ctx, in, recognizer)
		if err != nil {
			d.Close()
			return nil, err
		}
		if d.rec, err = newRecognizer(rm); err != nil {
			rm.sess.Close()
			d.Close()
			return nil, err
		}
	}
	return d, nil
}

// Model is the card name.
func (d *Detector) Model() string { return d.m.card.Name }

// Video runs an image model on frames.
//
// With overlap, the model runs on one call's frames while the
// next call preprocesses the following frames, so swscale and
// normalisation cost no throughput; each call returns the frames of the
// call before it, and Flush returns the last ones.
type Video struct {
	stage.Base
	*Detector
	in       pipeline.Init
	interval int
	counts   map[string]int
	Inferred int64
	overlap  bool
	flight   *inFlight
	spare    [2][]float32 // input buffers, one being run while the other fills
	next     int
	remote   *remote // the model runs in the shared service (remote: true)
}

// inFlight is a model run under way and the messages waiting for it.
type inFlight struct {
	run *modelRun
	in  stage.Batch // the call's messages, owned by the stage
	due []int       // which of them the run is for
}

// BatchLimits lets the runner hand over several frames at once.
func (s *Video) BatchLimits() (int, time.Duration) {
	return s.in.Params.Int("max_batch"), s.in.Params.Duration("max_wait")
}

// Process runs the model on the frames due for it (together, when the
// model takes batches) and passes every frame on.
func (s *Video) Process(ctx context.Context, in stage.Batch) (stage.Batch, error) {
	var due []int
	var frames []*astiav.Frame
	for i, e := range in {
		n := s.counts[e.Stream]
		s.counts[e.Stream] = n + 1
		if e.Src != nil {
			// The frame's place in its stream, the same in every
			// instance: replicas (here or in other processes) pick the
			// same frames as one instance would.
			n = int(e.Src.Seq % uint64(s.interval))
		}
		if n%s.interval != 0 {
			continue
		}
		f, err := codecs.FrameOf(e)
		if err != nil {
			return nil, err
		}
		due = append(due, i)
		frames = append(frames, f)
	}
	if s.remote != nil {
		return s.inferRemote(ctx, in, due, frames)
	}
	if !s.overlap {
		return s.inferNow(in, due, frames, nil)
	}
	// Preprocess this call's frames while the previous run executes.
	var r *modelRun
	if len(frames) > 0 {
		var err error
		if r, err = s.prepare(s.views[0], frames, s.spare[s.next]); err != nil {
			return nil, err
		}
		s.spare[s.next] = r.buf
	}
	out, err := s.drain()
	if err != nil || len(frames) == 0 {
		return s.emit(out, in, nil, nil), err
	}
	if len(r.frames) < len(frames) { // frames of several tensor sizes: run them here
		return s.inferNow(in, due, frames, out)
	}
	s.next ^= 1
	held := make(stage.Batch, len(in))
	for i, e := range in {
		held[i] = e.Pass() // the stage keeps the frames until the run is done
	}
	s.flight = &inFlight{run: r, in: held, due: due}
	s.start(r)
	return out, nil
}

// inferNow runs the model on frames and returns in with the results, after out.
func (s *Video) inferNow(in stage.Batch, due []int, frames []*astiav.Frame, out stage.Batch) (stage.Batch, error) {
	var res [][]box
	if len(frames) > 0 {
		var err error
		if res, err = s.DetectBatch(frames); err != nil {
			return out, err
		}
	}
	return s.emit(out, in, due, res), nil
}

// inferRemote asks the shared service about the frames and returns in
// with the results.
func (s *Video) inferRemote(ctx context.Context, in stage.Batch, due []int, frames []*astiav.Frame) (stage.Batch, error) {
	var res [][]box
	if len(frames) > 0 {
		streams := make([]string, len(due))
		for k, i := range due {
			streams[k] = in[i].Stream
		}
		var err error
		if res, err = s.remote.detect(ctx, frames, streams); err != nil {
			return nil, err
		}
		for _, dets := range res {
			s.label(dets)
		}
	}
	return s.emit(nil, in, due, res), nil
}

// drain waits for the run in flight and returns its messages with results.
func (s *Video) drain() (stage.Batch, error) {
	f := s.flight
	if f == nil {
		return nil, nil
	}
	s.flight = nil
	<-f.run.done
	res, err := s.finish(f.run, make([][]box, 0, len(f.due)))
	if err != nil {
		for _, e := range f.in {
			e.Release()
		}
		return nil, err
	}
	return s.emit(nil, f.in, f.due, res), nil
}

// emit appends to out the messages of in, with the results of the frames
// in due attached, and a metadata message for each of those.
func (s *Video) emit(out, in stage.Batch, due []int, res [][]box) stage.Batch {
	inferred := make([]bool, len(in))
	for k, i := range due {
		in[i].Detections = append(in[i].Detections, res[k]...)
		inferred[i] = true
	}
	s.Inferred += int64(len(due))
	for i, e := range in {
		cp := e.Pass()
		cp.Port = "out"
		if inferred[i] {
			meta := make(map[string]string, len(e.Meta)+1)
			for k, v := range e.Meta {
				meta[k] = v
			}
			meta["infer."+s.Model()] = "1"
			cp.Meta = meta
		}
		out = append(out, cp)
		if inferred[i] {
			out = append(out, &stage.Msg{Port: "meta", Envelope: envelope.Envelope{Kind: envelope.KindData, Media: e.Media, PTS: e.PTS, DTS: e.DTS,
				TimeBase: e.TimeBase, Detections: append([]envelope.Detection(nil), cp.Detections...),
				Meta: map[string]string{"stream": e.Stream, "model": s.Model()}, Stamps: append([]envelope.Stamp(nil), e.Stamps...)}})
		}
	}
	return out
}

// Flush returns the frames of the last run.
func (s *Video) Flush(context.Context) (stage.Batch, error) { return s.drain() }

// Close waits for a run in flight, then frees the models.
func (s *Video) Close() error {
	if f := s.flight; f != nil {
		<-f.run.done
		for _, e := range f.in {
			e.Release()
		}
		s.flight = nil
	}
	return s.Detector.Close()
}
