// Package track is the track stage: it gives detections stable ids across
// frames (IoU matching with a constant-velocity prediction) and carries the
// boxes over frames the model skipped (infer interval > 1).
package track

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
	"github.com/avflow/avflow/stages/infer/detections"
)

func init() {
	pipeline.MustRegister(pipeline.Spec{
		Kind:    "track",
		Summary: "Give detections stable track ids and carry boxes across frames the model skipped.",
		Params: []pipeline.Param{
			{Name: "iou", Type: pipeline.TypeFloat, Default: 0.3, Doc: "minimum overlap for a detection to continue a track"},
			{Name: "max_age", Type: pipeline.TypeInt, Default: 15, Doc: "frames a track survives without a matching detection"},
			{Name: "grow", Type: pipeline.TypeFloat, Default: 0.0, Doc: "enlarge carried boxes by this fraction per missed frame (safety margin for redaction)"},
		},
		MinInputs: 1, MaxInputs: 1,
		Ports: func(_ pipeline.Params, in []pipeline.PortType) ([]pipeline.Port, error) {
			if in[0].Kind != envelope.KindFrame {
				return nil, fmt.Errorf("track takes frames carrying detections (after infer), got %s", in[0])
			}
			return []pipeline.Port{{Name: "out", Type: in[0]}}, nil
		},
		New: func(_ context.Context, in pipeline.Init) (stage.Stage, error) {
			return &Stage{cfg: Config{IoU: float32(in.Params.Float("iou")), MaxAge: in.Params.Int("max_age"), Grow: float32(in.Params.Float("grow"))},
				trackers: map[string]*Tracker{}, guard: detections.Guard{Log: in.Log, Stage: in.Name}}, nil
		},
	})
}

// Config tunes a tracker.
type Config struct {
	IoU    float32
	MaxAge int
	Grow   float32
}

type trk struct {
	id                 int64
	box                envelope.Detection
	vx1, vy1, vx2, vy2 float32 // per-frame velocity of each edge
	missed             int
}

// Tracker tracks the detections of one stream.
type Tracker struct {
	cfg    Config
	tracks []*trk
	next   int64
}

// NewTracker returns an empty tracker.
func NewTracker(cfg Config) *Tracker { return &Tracker{cfg: cfg, next: 1} }

func iou(a, b envelope.Detection) float32 {
	ix1, iy1, ix2, iy2 := max(a.X1, b.X1), max(a.Y1, b.Y1), min(a.X2, b.X2), min(a.Y2, b.Y2)
	if ix2 <= ix1 || iy2 <= iy1 {
		return 0
	}
	in := (ix2 - ix1) * (iy2 - iy1)
	return in / ((a.X2-a.X1)*(a.Y2-a.Y1) + (b.X2-b.X1)*(b.Y2-b.Y1) - in)
}

func clamp(v float32) float32 { return min(max(v, 0), 1) }

// predict moves every track one frame along its velocity.
func (t *Tracker) predict() {
	for _, k := range t.tracks {
		b := &k.box
		b.X1, b.Y1, b.X2, b.Y2 = clamp(b.X1+k.vx1), clamp(b.Y1+k.vy1), clamp(b.X2+k.vx2), clamp(b.Y2+k.vy2)
	}
}

// Update takes a frame's detections (inferred true) or none (the model
// skipped it) and returns the frame's boxes with track ids.
func (t *Tracker) Update(dets []envelope.Detection, inferred bool) []envelope.Detection {
	t.predict()
	if !inferred {
		out := make([]envelope.Detection, 0, len(t.tracks))
		for _, k := range t.tracks {
			k.missed++
			b := k.box
			if g := t.cfg.Grow * float32(k.missed); g > 0 {
				w, h := (b.X2-b.X1)*g/2, (b.Y2-b.Y1)*g/2
				b.X1, b.Y1, b.X2, b.Y2 = clamp(b.X1-w), clamp(b.Y1-h), clamp(b.X2+w), clamp(b.Y2+h)
			}
			b.Kept = true
			out = append(out, b)
		}
		t.expire()
		return out
	}
	// Greedy matching, best overlaps first.
	type pair struct {
		d, k int
		v    float32
	}
	var pairs []pair
	for di, d := range dets {
		for ki, k := range t.tracks {
			if k.box.Class != d.Class {
				continue
			}
			if v := iou(d, k.box); v >= t.cfg.IoU {
				pairs = append(pairs, pair{di, ki, v})
			}
		}
	}
	sort.Slice(pairs, func(i, j int) bool { return pairs[i].v > pairs[j].v })
	usedD, usedK := map[int]bool{}, map[int]bool{}
	out := make([]envelope.Detection, len(dets))
	for _, p := range pairs {
		if usedD[p.d] || usedK[p.k] {
			continue
		}
		usedD[p.d], usedK[p.k] = true, true
		k, d := t.tracks[p.k], dets[p.d]
		steps := float32(k.missed + 1)
		// Smoothed velocity from the last observed box.
		const a = 0.5
		prev := k.box
		k.vx1 = a*k.vx1 + (1-a)*(d.X1-prev.X1)/steps
		k.vy1 = a*k.vy1 + (1-a)*(d.Y1-prev.Y1)/steps
		k.vx2 = a*k.vx2 + (1-a)*(d.X2-prev.X2)/steps
		k.vy2 = a*k.vy2 + (1-a)*(d.Y2-prev.Y2)/steps
		d.Track = k.id
		k.box, k.missed = d, 0
		out[p.d] = d
	}
	nTracks := len(t.tracks)
	for di, d := range dets {
		if usedD[di] {
			continue
		}
		d.Track = t.next
		k := &trk{id: t.next, box: d}
		t.next++
		t.tracks = append(t.tracks, k)
		out[di] = d
	}
	for ki, k := range t.tracks {
		if ki < nTracks && !usedK[ki] {
			k.missed++
		}
	}
	t.expire()
	return out
}

func (t *Tracker) expire() {
	keep := t.tracks[:0]
	for _, k := range t.tracks {
		if k.missed <= t.cfg.MaxAge {
			keep = append(keep, k)
		}
	}
	t.tracks = keep
}

// Stage tracks every stream of its input separately.
type Stage struct {
	stage.Base
	cfg      Config
	trackers map[string]*Tracker
	guard    detections.Guard // detections are outside bytes: checked before tracking
}

// Process attaches tracked boxes to each frame.
func (s *Stage) Process(_ context.Context, in stage.Batch) (stage.Batch, error) {
	out := make(stage.Batch, 0, len(in))
	for _, e := range in {
		key := e.Stream
		t := s.trackers[key]
		if t == nil {
			t = NewTracker(s.cfg)
			s.trackers[key] = t
		}
		inferred := false
		for k := range e.Meta {
			if strings.HasPrefix(k, "infer.") {
				inferred = true
			}
		}
		s.guard.Check(e)
		cp := e.Pass()
		cp.Detections = t.Update(e.Detections, inferred)
		out = append(out, cp)
	}
	return out, nil
}

// Status reports the detections dropped as unusable.
func (s *Stage) Status() stage.Status { return stage.Status{Counts: s.guard.Counts()} }
