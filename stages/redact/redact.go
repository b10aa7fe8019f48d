// Package redact is the redact stage: it blurs or pixelates the regions
// that detections mark (faces, plates, text), with a margin around them.
package redact

import (
	"context"
	"errors"
	"fmt"
	"github.com/asticode/go-astiav"
	"math"
	"strings"

	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
	"github.com/avflow/avflow/stages/infer"
	"github.com/avflow/avflow/stages/infer/detections"
)

// ErrParams reports redact params that cannot work.
var ErrParams = errors.New("redact: bad params")

func init() {
	pipeline.MustRegister(pipeline.Spec{
		Kind:    "redact",
		Summary: "Blur or pixelate the regions detections mark, with a margin (privacy).",
		Params: []pipeline.Param{
			{Name: "mode", Type: pipeline.TypeString, Default: "blur", Enum: []string{"blur", "pixelate", "fill"}, Doc: "how regions are hidden"},
			{Name: "margin", Type: pipeline.TypeFloat, Default: 0.25, Doc: "grow each box by this fraction of its size on every side"},
			{Name: "strength", Type: pipeline.TypeFloat, Default: 0.25, Doc: "blur radius or pixel block size, as a fraction of the box's larger side"},
			{Name: "labels", Type: pipeline.TypeString, Doc: "comma-separated labels to hide (empty: every detection)"},
			{Name: "min_score", Type: pipeline.TypeFloat, Default: 0.0, Doc: "ignore detections scoring below this"},
			{Name: "verify_model", Type: pipeline.TypeString, Doc: "model card run again on the redacted frame; what it still finds is hidden too (a detector can find a new \"face\" once the real one is gone)"},
			{Name: "verify_threshold", Type: pipeline.TypeFloat, Default: 0.3, Doc: "score at which the verify pass hides a region"},
			{Name: "verify_scalers", Type: pipeline.TypeString, Default: "bilinear", Doc: "comma-separated swscale algorithms the verify model's input is sized with (infer's scaler names: bilinear, bicubic, area, ...): each verify round runs the model once with each and hides what any of them finds, since a detector's scores depend on how the frame was scaled (the ffmpeg CLI's default is bicubic)"},
			{Name: "verify_passes", Type: pipeline.TypeInt, Default: 3, Doc: "most verify rounds per frame"},
			{Name: "threads", Type: pipeline.TypeInt, Default: 0, Doc: "ONNX Runtime threads of the verify model (0: one per core)"},
			{Name: "optimization", Type: pipeline.TypeString, Default: "all", Enum: []string{"disable", "basic", "extended", "all"}, Doc: "ONNX Runtime graph optimisation of the verify model"},
			{Name: "spin", Type: pipeline.TypeBool, Default: false, Doc: "let the verify model's ONNX Runtime worker threads spin between runs (see infer)"},
		},
		MinInputs: 1, MaxInputs: 1,
		Ports: func(_ pipeline.Params, in []pipeline.PortType) ([]pipeline.Port, error) {
			if in[0].Kind != envelope.KindFrame || in[0].Media == envelope.MediaAudio {
				return nil, fmt.Errorf("redact takes video frames carrying detections, got %s", in[0])
			}
			return []pipeline.Port{{Name: "out", Type: in[0]}}, nil
		},
		Check:      check,
		Replicable: func(pipeline.Params) error { return nil }, // each frame on its own
		New: func(ctx context.Context, in pipeline.Init) (stage.Stage, error) {
			r := &Stage{Hider: Hider{Mode: in.Params.String("mode"), Margin: float32(in.Params.Float("margin")),
				Strength: float32(in.Params.Float("strength")), MinScore: float32(in.Params.Float("min_score")), Labels: map[string]bool{}},
				passes: in.Params.Int("verify_passes"), guard: detections.Guard{Log: in.Log, Stage: in.Name}}
			for _, l := range strings.Split(in.Params.String("labels"), ",") {
				if l = strings.TrimSpace(l); l != "" {
					r.Labels[l] = true
				}
			}
			if m := in.Params.String("verify_model"); m != "" {
				scalers, err := infer.ParseScalers(in.Params.String("verify_scalers"))
				if err != nil {
					return nil, fmt.Errorf("%w: verify_scalers: %w", ErrParams, err)
				}
				r.verify, err = infer.NewDetector(ctx, in, m, infer.DetectorOptions{Threshold: float32(in.Params.Float("verify_threshold")), Scalers: scalers})
				if err != nil {
					return nil, err
				}
			}
			return r, nil
		},
	})
}

// check refuses a margin or strength that would hide nothing or hang.
func check(p pipeline.Params, _ string) error {
	if m := p.Float("margin"); math.IsNaN(m) || math.IsInf(m, 0) || m < 0 {
		return fmt.Errorf("%w: margin must be a finite number >= 0 (a fraction of the box size), got %v", ErrParams, m)
	}
	if v := p.Float("strength"); math.IsNaN(v) || math.IsInf(v, 0) || v <= 0 {
		return fmt.Errorf("%w: strength must be a finite number > 0 (a fraction of the box size), got %v", ErrParams, v)
	}
	if p.String("verify_model") != "" {
		if _, err := infer.ParseScalers(p.String("verify_scalers")); err != nil {
			return fmt.Errorf("%w: verify_scalers: %w", ErrParams, err)
		}
	}
	return nil
}

// Stage hides detected regions.
type Stage struct {
	stage.Base
	Hider
	verify   *infer.Detector
	passes   int
	guard    detections.Guard // detections are outside bytes: checked before hiding
	Hidden   int64
	Verified int64 // regions the verify pass found and hid
}

// Status reports the malformed detections dropped.
func (s *Stage) Status() stage.Status { return stage.Status{Counts: s.guard.Counts()} }

// Process hides the regions of each frame's detections.
func (s *Stage) Process(_ context.Context, in stage.Batch) (stage.Batch, error) {
	out := make(stage.Batch, 0, len(in))
	for _, e := range in {
		s.guard.Check(e)
		if len(e.Detections) > 0 {
			if err := s.hide(e, e.Detections); err != nil {
				return out, err
			}
		}
		if s.verify != nil {
			if err := s.recheck(e); err != nil {
				return out, err
			}
		}
		out = append(out, e.Pass())
	}
	return out, nil
}

// recheck runs the verify model on the redacted frame and hides what it
// still finds, until it finds nothing or the passes run out.
func (s *Stage) recheck(e *stage.Msg) error {
	f, err := codecs.FrameOf(e)
	if err != nil {
		return err
	}
	for pass := 0; pass < max(1, s.passes); pass++ {
		found, err := s.verify.Detect(f)
		if err != nil {
			return err
		}
		if len(found) == 0 {
			return nil
		}
		if err := s.hide(e, found); err != nil {
			return err
		}
		s.Verified += int64(len(found))
		e.Detections = append(e.Detections[:len(e.Detections):len(e.Detections)], found...) // never into a shared array
	}
	return nil
}

func (s *Stage) hide(e *stage.Msg, dets []envelope.Detection) error {
	f, err := codecs.FrameOf(e)
	if err != nil {
		return err
	}
	if err := codecs.MakeWritable(f); err != nil {
		return err
	}
	n, err := s.Hide(f, dets)
	s.Hidden += int64(n)
	return err
}

// Hider hides regions of frames: the redact stage's, and any stage's that
// hides faces on frames it owns (render's privacy).
type Hider struct {
	Mode     string  // blur, pixelate or fill
	Margin   float32 // grow each box by this fraction of its size on every side
	Strength float32 // blur radius or block size, as a fraction of the box's larger side
	MinScore float32
	Labels   map[string]bool // hide only these labels (empty: every detection)
	tmp      []int32
}

// Hide hides dets (boxes normalised to f) on f, which must be writable
// (codecs.MakeWritable), and returns how many regions it hid.
func (h *Hider) Hide(f *astiav.Frame, dets []envelope.Detection) (int, error) {
	planes, strides, err := codecs.YUVPlanes(f)
	if err != nil {
		return 0, fmt.Errorf("redact: %w", err)
	}
	hidden := 0
	for _, d := range dets {
		if d.Score < h.MinScore || (len(h.Labels) > 0 && !h.Labels[d.Label]) {
			continue
		}
		r, ok := region(d, h.Margin, f.Width(), f.Height())
		if !ok {
			continue
		}
		size := blurSize(h.Strength, r)
		for p := 0; p < 3; p++ {
			pr, sz := r, size
			if p > 0 {
				pr, sz = r.chroma(), max(size>>1, 1)
			}
			h.hideRect(planes[p], strides[p], pr, sz, p)
		}
		hidden++
	}
	return hidden, nil
}

// hideRect hides r of one plane (p: 0 luma, 1 and 2 chroma) with the
// mode; size is the blur radius or pixel block.
func (h *Hider) hideRect(pl []byte, stride int, r rect, size, p int) {
	switch h.Mode {
	case "pixelate":
		pixelate(pl, stride, r, size)
	case "fill":
		v := byte(16) // black
		if p > 0 {
			v = 128
		}
		fill(pl, stride, r, v)
	default:
		// Three box blurs approximate a gaussian; each pass covers the whole region.
		for pass := 0; pass < 3; pass++ {
			h.tmp = boxBlur(pl, stride, r, size, h.tmp)
		}
	}
}

// region is the luma rectangle hidden for d in a w x h frame: the box
// grown by margin times its size on every side, clamped to the frame.
// A box the frame's edge cuts is bigger than it looks: it grows by margin
// times its larger side (in pixels) both ways, so a face cut at the top
// still gets a margin below its chin as wide as an uncut face's.
// False when less than 2 pixels of it either way are inside the frame.
func region(d envelope.Detection, margin float32, w, h int) (rect, bool) {
	bw, bh := d.X2-d.X1, d.Y2-d.Y1
	if d.X1 <= 0 || d.Y1 <= 0 || d.X2 >= 1 || d.Y2 >= 1 {
		side := max(bw*float32(w), bh*float32(h))
		bw, bh = side/float32(w), side/float32(h)
	}
	r := rect{
		x1: pixel(d.X1-bw*margin, w, 0), y1: pixel(d.Y1-bh*margin, h, 0),
		x2: pixel(d.X2+bw*margin, w, 0.5), y2: pixel(d.Y2+bh*margin, h, 0.5),
	}
	return r, r.x2-r.x1 >= 2 && r.y2-r.y1 >= 2
}

// pixel turns a frame-normalised coordinate into a pixel index in [0, n]:
// v*n + round, truncated; NaN and anything below the frame give 0,
// anything beyond it n (the float is clamped before it becomes an int).
func pixel(v float32, n int, round float32) int {
	f := v*float32(n) + round
	switch {
	case !(f > 0):
		return 0
	case f >= float32(n):
		return n
	}
	return int(f)
}

// blurSize is the blur radius (or pixel block) for a region: strength
// times its larger side, at least 2 and at most that side.
func blurSize(strength float32, r rect) int {
	side := max(r.x2-r.x1, r.y2-r.y1)
	return max(pixel(strength, side, 0), 2)
}

type rect struct{ x1, y1, x2, y2 int }

// chroma is the rectangle of a 4:2:0 chroma plane that covers every luma
// pixel of r (half the size, rounded outwards).
func (r rect) chroma() rect { return rect{r.x1 >> 1, r.y1 >> 1, (r.x2 + 1) >> 1, (r.y2 + 1) >> 1} }

// pixelate replaces each block x block square of r by its average (a
// block of 1 would change nothing: it is at least 2).
func pixelate(pl []byte, stride int, r rect, block int) {
	block = max(block, 2)
	for by := r.y1; by < r.y2; by += block {
		for bx := r.x1; bx < r.x2; bx += block {
			ex, ey := min(bx+block, r.x2), min(by+block, r.y2)
			sum, n := 0, 0
			for y := by; y < ey; y++ {
				for _, v := range pl[y*stride+bx : y*stride+ex] {
					sum += int(v)
				}
				n += ex - bx
			}
			avg := byte(sum / n)
			for y := by; y < ey; y++ {
				row := pl[y*stride+bx : y*stride+ex]
				for i := range row {
					row[i] = avg
				}
			}
		}
	}
}

// fill paints r with v.
func fill(pl []byte, stride int, r rect, v byte) {
	for y := r.y1; y < r.y2; y++ {
		row := pl[y*stride+r.x1 : y*stride+r.x2]
		for i := range row {
			row[i] = v
		}
	}
}

// boxBlur blurs the region horizontally then vertically with a running sum
// of radius rad (edges clamp to the region).
func boxBlur(pl []byte, stride int, r rect, rad int, tmp []int32) []int32 {
	w, h := r.x2-r.x1, r.y2-r.y1
	if n := max(w, h); cap(tmp) < n {
		tmp = make([]int32, n)
	}
	line := tmp[:max(w, h)]
	blur := func(get func(i int) byte, set func(i int, v byte), n int) {
		for i := 0; i < n; i++ {
			line[i] = int32(get(i))
		}
		var sum int32
		win := int32(2*rad + 1)
		at := func(i int) int32 { return line[min(max(i, 0), n-1)] }
		for i := -rad; i <= rad; i++ {
			sum += at(i)
		}
		for i := 0; i < n; i++ {
			set(i, byte(sum/win))
			sum += at(i+rad+1) - at(i-rad)
		}
	}
	for y := r.y1; y < r.y2; y++ {
		row := pl[y*stride+r.x1 : y*stride+r.x2]
		blur(func(i int) byte { return row[i] }, func(i int, v byte) { row[i] = v }, w)
	}
	for x := r.x1; x < r.x2; x++ {
		blur(func(i int) byte { return pl[(r.y1+i)*stride+x] }, func(i int, v byte) { pl[(r.y1+i)*stride+x] = v }, h)
	}
	return tmp
}

// Close frees the verify model.
func (s *Stage) Close() error {
	if s.verify != nil {
		return s.verify.Close()
	}
	return nil
}
