// Package render is the render stage: one viewer variant's look of a
// shared video stream (personalisation). It crops the frame to the
// variant's layout with a window that follows the subject (Camera),
// blurs faces for privacy, scales to the rendition's height and draws the
// variant's text overlays (Go templates over the viewer and the frame's
// HUD text) and images. The personalise stage adds one render stage per
// variant to the running graph, in front of its encoder and sink.
package render

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/asticode/go-astiav"

	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
	"github.com/avflow/avflow/pipeline/viewers"
	"github.com/avflow/avflow/stages/infer/detections"
	"github.com/avflow/avflow/stages/redact"
)

// ErrParams reports render params that cannot work.
var ErrParams = errors.New("render: bad params")

// DefaultFont is the font text overlays are drawn with (Debian's
// fonts-dejavu-core, which make setup installs).
const DefaultFont = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"

func init() {
	pipeline.MustRegister(pipeline.Spec{
		Kind:    "render",
		Summary: "One viewer variant's look: crop to a layout following the subject, blur faces, scale, draw text and image overlays.",
		Params: []pipeline.Param{
			{Name: "layout", Type: pipeline.TypeString, Default: viewers.LayoutSource, Enum: []string{viewers.LayoutLandscape, viewers.LayoutVertical, viewers.LayoutSquare, viewers.LayoutSource},
				Doc: "the output's shape: landscape 16:9, vertical 9:16, square, or source (the input's own)"},
			{Name: "height", Type: pipeline.TypeInt, Default: 0, Doc: "output height in pixels (0: the crop window's own); never above max_height"},
			{Name: "max_height", Type: pipeline.TypeInt, Default: 0, Doc: "the rendition's height at most (0: no ceiling)"},
			{Name: "privacy", Type: pipeline.TypeString, Default: viewers.PrivacyNone, Enum: []string{viewers.PrivacyNone, viewers.PrivacyBlurFaces}, Doc: "blur-faces: blur every detection labelled follow_label's faces (label face) on this variant"},
			{Name: "overlays", Type: pipeline.TypeString, Doc: `the variant's overlays as the viewer profile's JSON list, e.g. [{"text":"Hi {{.Viewer.Name}}","position":"top"}]`},
			{Name: "viewer_id", Type: pipeline.TypeString, Doc: "the viewer {{.Viewer.ID}} names in templates"},
			{Name: "viewer_name", Type: pipeline.TypeString, Doc: "the viewer {{.Viewer.Name}} names in templates"},
			{Name: "follow", Type: pipeline.TypeString, Default: "face", Doc: "label of the detections the crop window follows (empty: any; none: no reframing, the window stays in the middle)"},
			{Name: "pick", Type: pipeline.TypeString, Default: "largest", Enum: []string{"largest", "central"}, Doc: "which detection to follow when there are several"},
			{Name: "max_speed", Type: pipeline.TypeFloat, Default: DefaultMaxSpeed, Doc: "fastest pan, in window sizes per second"},
			{Name: "max_accel", Type: pipeline.TypeFloat, Default: DefaultMaxAccel, Doc: "largest change of pan speed, in window sizes per second squared"},
			{Name: "dead_zone", Type: pipeline.TypeFloat, Default: DefaultDeadZone, Doc: "fraction of the window either side of its centre the subject may move in without moving the window"},
			{Name: "hold", Type: pipeline.TypeDuration, Default: "1s", Doc: "how long the window stays put once the subject is lost, before it eases back to the middle"},
			{Name: "look_ahead", Type: pipeline.TypeDuration, Default: DefaultLookAhead.String(), Doc: "how far ahead of each frame the window sees where the subject goes (at most 2s): the window heads for the subject's mean position from this long before the frame to this long after it, so it starts and stops with the subject rather than after it and ignores the detector's jitter; every frame is held this long (the latency reframing adds; 0: none)"},
			{Name: "align", Type: pipeline.TypeDuration, Default: "0s", Doc: "start output at the first frame whose time reaches a multiple of this interval (the shared GOP: a variant joining mid-stream starts on the keyframe every variant has)"},
			{Name: "font", Type: pipeline.TypeString, Default: DefaultFont, Doc: "TrueType font of text overlays"},
		},
		MinInputs: 1, MaxInputs: 1,
		Ports: func(_ pipeline.Params, in []pipeline.PortType) ([]pipeline.Port, error) {
			if in[0].Kind != envelope.KindFrame || in[0].Media != envelope.MediaVideo {
				return nil, fmt.Errorf("render takes decoded video frames, got %s", in[0])
			}
			return []pipeline.Port{{Name: "out", Type: in[0]}}, nil
		},
		Check: check,
		New:   newStage,
	})
}

// Params of the camera and the look, checked.
func check(p pipeline.Params, dir string) error {
	if _, err := overlaysOf(p, dir); err != nil {
		return err
	}
	for _, name := range []string{"max_speed", "max_accel"} {
		if v := p.Float(name); !(v > 0) || math.IsInf(v, 0) {
			return fmt.Errorf("%w: %s must be a finite number > 0, got %v", ErrParams, name, v)
		}
	}
	if v := p.Float("dead_zone"); !(v >= 0 && v < 0.5) {
		return fmt.Errorf("%w: dead_zone must be in [0, 0.5), got %v", ErrParams, v)
	}
	if p.Int("height") < 0 || p.Int("max_height") < 0 || p.Duration("align") < 0 || p.Duration("hold") < 0 {
		return fmt.Errorf("%w: height, max_height, align and hold may not be negative", ErrParams)
	}
	if err := CheckLookAhead(p.Duration("look_ahead")); err != nil {
		return fmt.Errorf("%w: %w", ErrParams, err)
	}
	return nil
}

// safePath is what an overlay image's path may hold: FFmpeg's filter
// graph syntax gives other characters meanings.
var safePath = regexp.MustCompile(`^[A-Za-z0-9_./-]+$`)

// overlaysOf reads and checks the overlays param; image paths resolve
// against dir and must exist.
func overlaysOf(p pipeline.Params, dir string) ([]viewers.Overlay, error) {
	raw := p.String("overlays")
	if raw == "" {
		return nil, nil
	}
	var ovs []viewers.Overlay
	if err := json.Unmarshal([]byte(raw), &ovs); err != nil {
		return nil, fmt.Errorf("%w: overlays: %w", ErrParams, err)
	}
	prof := viewers.Profile{ID: orDefault(p.String("viewer_id"), "render"), Overlays: ovs}
	if err := prof.Check(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrParams, err)
	}
	for i := range ovs {
		if ovs[i].Image == "" {
			continue
		}
		path := pipeline.ResolvePath(dir, ovs[i].Image)
		if !safePath.MatchString(path) {
			return nil, fmt.Errorf("%w: overlays[%d].image %q: a path of letters, digits, _ . / and - only", ErrParams, i, ovs[i].Image)
		}
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("%w: overlays[%d].image: %w", ErrParams, i, err)
		}
		ovs[i].Image = path
	}
	return ovs, nil
}

func orDefault(v, d string) string {
	if v == "" {
		return d
	}
	return v
}

func newStage(_ context.Context, in pipeline.Init) (stage.Stage, error) {
	ovs, err := overlaysOf(in.Params, in.Dir)
	if err != nil {
		return nil, err
	}
	s := &Stage{
		p:       in.Params,
		profile: viewers.Profile{ID: orDefault(in.Params.String("viewer_id"), "render"), Name: in.Params.String("viewer_name"), Overlays: ovs},
		guard:   detections.Guard{Log: in.Log, Stage: in.Name},
		hider:   redact.Hider{Mode: "blur", Margin: 0.25, Strength: 0.25},
		log:     in.Log,
	}
	for _, o := range ovs {
		if o.Text != "" {
			if _, err := os.Stat(in.Params.String("font")); err != nil {
				return nil, fmt.Errorf("%w: font: %w (Debian: fonts-dejavu-core)", ErrParams, err)
			}
			break
		}
	}
	return s, nil
}

// Stage renders one variant.
type Stage struct {
	stage.Base
	p       pipeline.Params
	profile viewers.Profile
	guard   detections.Guard
	hider   redact.Hider
	log     interface{ Warn(string, ...any) }

	geo      *geometry
	camX     *Camera
	camY     *Camera
	path     path // the subject's positions around the frame being rendered
	g        *codecs.Graph
	texts    []string // the text each drawtext filter shows now
	started  bool     // past the alignment point
	lastPTS  int64
	havePrev bool
	lastX    int
	lastY    int

	waited      atomic.Int64 // frames dropped before the alignment point
	textErrors  atomic.Int64 // frames on which a template did not render
	cuts        atomic.Int64
	textErrOnce bool
}

// Status counts the frames dropped before the first aligned one, the
// templates that did not render and the camera's cuts.
func (s *Stage) Status() stage.Status {
	c := s.guard.Counts()
	if c == nil {
		c = map[string]int64{}
	}
	c["waited_frames"], c["template_errors"], c["camera_cuts"] = s.waited.Load(), s.textErrors.Load(), s.cuts.Load()
	return stage.Status{Counts: c}
}

// Process holds each frame for the look-ahead and renders those whose
// look-ahead has come.
func (s *Stage) Process(_ context.Context, in stage.Batch) (stage.Batch, error) {
	var out stage.Batch
	for _, e := range in {
		s.guard.Check(e)
		if !s.aligned(e) {
			s.waited.Add(1)
			continue
		}
		if err := s.hold(e); err != nil {
			return out, err
		}
		for s.path.due(s.lookAhead()) {
			res, err := s.renderNext()
			out = append(out, res...)
			if err != nil {
				return out, err
			}
		}
	}
	return out, nil
}

// hold takes a frame into the look-ahead, with where its subject is.
func (s *Stage) hold(e *stage.Msg) error {
	f, err := codecs.FrameOf(e)
	if err != nil {
		return err
	}
	if s.geo == nil {
		if err := s.setup(f); err != nil {
			return err
		}
	}
	x, y, found := s.subject(e.Detections)
	s.path.add(e.Pass(), frameTime(e), aim{x: x * float64(s.geo.sw), y: y * float64(s.geo.sh), found: found})
	return nil
}

// renderNext renders the oldest frame held, with the cameras heading for
// its subject's mean position over the look-ahead.
func (s *Stage) renderNext() (stage.Batch, error) {
	e, dt, a := s.path.next(float64(s.geo.cw)/2, float64(s.geo.ch)/2, s.lookAhead())
	defer e.Release()
	return s.render(e, s.follow(dt, a))
}

// lookAhead is the look-ahead in seconds: none when the window cannot
// move (no subject to follow, or a window as large as the frame), where
// holding frames would only add latency.
func (s *Stage) lookAhead() float64 {
	if s.p.String("follow") == "none" || s.geo.cw == s.geo.sw && s.geo.ch == s.geo.sh {
		return 0
	}
	return s.p.Duration("look_ahead").Seconds()
}

// frameTime is a frame's duration in seconds, from its own or its rate's.
func frameTime(e *stage.Msg) float64 {
	switch {
	case e.Duration > 0 && e.TimeBase.Den > 0:
		return float64(e.Duration) * float64(e.TimeBase.Num) / float64(e.TimeBase.Den)
	case e.Video != nil && e.Video.FrameRate.Num > 0:
		return float64(e.Video.FrameRate.Den) / float64(e.Video.FrameRate.Num)
	}
	return 0
}

// aligned reports whether output has started: at the first frame whose
// time reaches a multiple of align (every variant's encoder puts a
// keyframe there), or at once without align.
func (s *Stage) aligned(e *stage.Msg) bool {
	if s.started {
		return true
	}
	align := s.p.Duration("align")
	if align <= 0 || e.TimeBase.Num <= 0 || e.TimeBase.Den <= 0 {
		s.started = true
		return true
	}
	step := astiav.RescaleQ(align.Nanoseconds(), astiav.NewRational(1, 1e9), codecs.AVRat(e.TimeBase))
	if step <= 0 {
		s.started = true
		return true
	}
	cur := floorDiv(e.PTS, step)
	switch {
	case e.PTS == cur*step: // on the boundary
		s.started = true
	case s.havePrev && cur > floorDiv(s.lastPTS, step): // the first frame past it
		s.started = true
	}
	s.lastPTS, s.havePrev = e.PTS, true
	return s.started
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// render crops the frame at the window (x, y), blurs, scales and draws.
func (s *Stage) render(e *stage.Msg, win window) (stage.Batch, error) {
	f, err := codecs.FrameOf(e)
	if err != nil {
		return nil, err
	}
	x, y := win.x, win.y
	if s.g == nil {
		s.lastX, s.lastY = x, y
		s.g = codecs.NewGraph(s.spec(x, y), 0)
		s.g.Log = nil
	}
	if s.p.String("privacy") == viewers.PrivacyBlurFaces {
		if err := s.blur(f, e.Detections); err != nil {
			return nil, err
		}
	}
	rate := envelope.Rational{}
	if e.Video != nil {
		rate = e.Video.FrameRate
	}
	tb, fr := codecs.AVRat(e.TimeBase), codecs.AVRat(rate)
	if err := s.g.Build(f, envelope.MediaVideo, tb, fr); err != nil {
		return nil, fmt.Errorf("render: %w", err)
	}
	if err := s.moveWindow(x, y); err != nil {
		return nil, err
	}
	if err := s.updateTexts(e); err != nil {
		return nil, err
	}
	res, err := s.g.Push(f, envelope.MediaVideo, tb, fr)
	for _, r := range res {
		r.Src, r.Meta = e.Src, s.withWindow(e.Meta, x, y)
		if len(e.Stamps) > 0 { // the frame's own (the host would give it the newest input's: a look-ahead later)
			r.Stamps = append(make([]envelope.Stamp, 0, len(e.Stamps)+1), e.Stamps...)
		}
		r.Detections = s.geo.mapDetections(e.Detections, x, y)
	}
	if err != nil {
		return res, fmt.Errorf("render: %w", err)
	}
	return res, nil
}

// WindowKey is the Meta key of a rendered frame's crop window in the
// source: "x,y,w,h" in pixels.
const WindowKey = "render.window"

// withWindow is meta (shared with the other variants: never written)
// with the frame's crop window added.
func (s *Stage) withWindow(meta map[string]string, x, y int) map[string]string {
	out := make(map[string]string, len(meta)+1)
	for k, v := range meta {
		out[k] = v
	}
	out[WindowKey] = fmt.Sprintf("%d,%d,%d,%d", x, y, s.geo.cw, s.geo.ch)
	return out
}

// setup fixes the geometry and the cameras at the first frame.
func (s *Stage) setup(f *astiav.Frame) error {
	geo, err := newGeometry(s.p.String("layout"), f.Width(), f.Height(), s.p.Int("height"), s.p.Int("max_height"))
	if err != nil {
		return err
	}
	s.geo = geo
	cam := func(window, size int) *Camera {
		c := NewCamera(float64(window), float64(size))
		c.MaxSpeed, c.MaxAccel, c.DeadZone, c.Hold = s.p.Float("max_speed"), s.p.Float("max_accel"), s.p.Float("dead_zone"), s.p.Duration("hold").Seconds()
		return c
	}
	s.camX, s.camY = cam(geo.cw, geo.sw), cam(geo.ch, geo.sh)
	return nil
}

// window is a crop window's corner in the source.
type window struct{ x, y int }

// follow steps the cameras dt seconds towards a (in source pixels) and
// returns the crop window.
func (s *Stage) follow(dt float64, a aim) window {
	before := s.camX.Cuts + s.camY.Cuts
	fx := s.camX.Step(dt, a.x, a.found)
	fy := s.camY.Step(dt, a.y, a.found)
	if d := s.camX.Cuts + s.camY.Cuts - before; d > 0 {
		s.cuts.Add(int64(d))
	}
	return window{even(fx), even(fy)}
}

// subject is the centre (normalised) of the detection to follow.
func (s *Stage) subject(dets []envelope.Detection) (x, y float64, found bool) {
	label, central := s.p.String("follow"), s.p.String("pick") == "central"
	if label == "none" {
		return 0, 0, false
	}
	best := math.Inf(-1)
	for _, d := range dets {
		if label != "" && d.Label != label {
			continue
		}
		cx, cy := float64(d.X1+d.X2)/2, float64(d.Y1+d.Y2)/2
		score := float64((d.X2 - d.X1) * (d.Y2 - d.Y1))
		if central {
			score = -math.Hypot(cx-0.5, cy-0.5)
		}
		if score > best {
			best, x, y, found = score, cx, cy, true
		}
	}
	return x, y, found
}

func even(v float64) int { return int(math.Round(v/2)) * 2 }

// moveWindow tells the crop filter where the window is now.
func (s *Stage) moveWindow(x, y int) error {
	if x != s.lastX {
		if err := s.g.Command("crop@cam", "x", strconv.Itoa(x)); err != nil {
			return fmt.Errorf("render: %w", err)
		}
		s.lastX = x
	}
	if y != s.lastY {
		if err := s.g.Command("crop@cam", "y", strconv.Itoa(y)); err != nil {
			return fmt.Errorf("render: %w", err)
		}
		s.lastY = y
	}
	return nil
}

// blur hides the faces on the (source) frame, on a copy of its pixels
// when other variants share them.
func (s *Stage) blur(f *astiav.Frame, dets []envelope.Detection) error {
	var faces []envelope.Detection
	for _, d := range dets {
		if d.Label == "face" || d.Label == "" {
			faces = append(faces, d)
		}
	}
	if len(faces) == 0 {
		return nil
	}
	if err := codecs.MakeWritable(f); err != nil {
		return err
	}
	_, err := s.hider.Hide(f, faces)
	return err
}

// updateTexts renders the text overlays for this frame and hands the
// drawtext filters the texts that changed. A template that fails on this
// frame (HUD text the frame lacks) keeps its last text, and is counted.
func (s *Stage) updateTexts(e *stage.Msg) error {
	if len(s.texts) == 0 {
		return nil
	}
	texts, err := s.profile.Texts(viewers.FrameOf(e.Detections))
	if err != nil {
		s.textErrors.Add(1)
		if !s.textErrOnce {
			s.textErrOnce = true
			s.log.Warn("a text overlay did not render on a frame: it keeps its last text", "error", err)
		}
		return nil
	}
	for i, t := range texts {
		if t == s.texts[i] {
			continue
		}
		if err := s.g.Command("drawtext@t"+strconv.Itoa(i), "reinit", "text="+optQuote(t)); err != nil {
			return fmt.Errorf("render: %w", err)
		}
		s.texts[i] = t
	}
	return nil
}

// optQuote quotes an option value for FFmpeg's option parser.
func optQuote(v string) string { return "'" + strings.ReplaceAll(v, "'", `'\''`) + "'" }

// Flush renders the frames still held for the look-ahead and drains the
// graph.
func (s *Stage) Flush(context.Context) (stage.Batch, error) {
	var out stage.Batch
	for s.path.held() > 0 {
		res, err := s.renderNext()
		out = append(out, res...)
		if err != nil {
			return out, err
		}
	}
	if s.g == nil || !s.g.Built() {
		return out, nil
	}
	res, err := s.g.Push(nil, envelope.MediaVideo, astiav.NewRational(1, 1), astiav.NewRational(0, 1))
	return append(out, res...), err
}

// Close frees the graph and the frames still held.
func (s *Stage) Close() error {
	s.path.release()
	if s.g != nil {
		s.g.Close()
	}
	return nil
}
