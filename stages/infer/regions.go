package infer

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
)

// region is a named part of the frame whose text is read (a game's HUD).
type region struct {
	name string
	box  box
}

// parseRegions reads the regions param: name -> "x1,y1,x2,y2", fractions
// of the frame.
func parseRegions(m map[string]string) ([]region, error) {
	var out []region
	for _, name := range slices.Sorted(maps.Keys(m)) {
		parts := strings.Split(m[name], ",")
		if len(parts) != 4 {
			return nil, fmt.Errorf("regions: %s: %q: want x1,y1,x2,y2 (fractions of the frame)", name, m[name])
		}
		var v [4]float32
		for i, p := range parts {
			f, err := strconv.ParseFloat(strings.TrimSpace(p), 32)
			if err != nil || f < 0 || f > 1 {
				return nil, fmt.Errorf("regions: %s: %q: want 4 numbers from 0 to 1", name, m[name])
			}
			v[i] = float32(f)
		}
		if v[2] <= v[0] || v[3] <= v[1] {
			return nil, fmt.Errorf("regions: %s: %q: x2,y2 must be right of and below x1,y1", name, m[name])
		}
		out = append(out, region{name: name, box: box{X1: v[0], Y1: v[1], X2: v[2], Y2: v[3]}})
	}
	return out, nil
}

// regionReader reads the text of fixed regions of each frame with a text
// recognizer (PP-OCR rec), without a detector: a game's or a broadcast's
// HUD, where the text always sits in the same place. Each region becomes
// a detection labelled with its name, the text in Text; frames between
// reads (interval) carry the last read, marked kept.
type regionReader struct {
	stage.Base
	rec      *recognizer
	regions  []region
	interval int
	frames   int64
	last     []envelope.Detection
	read     atomic.Int64
}

func newRegionReader(in pipeline.Init, m *loaded) (stage.Stage, error) {
	regions, err := parseRegions(in.Params.Map("regions"))
	if err != nil {
		m.sess.Close()
		return nil, fmt.Errorf("%w: %w", ErrInfer, err)
	}
	rec, err := newRecognizer(m)
	if err != nil {
		m.sess.Close()
		return nil, fmt.Errorf("%w (regions are read by a text recognizer: model ppocr-v4-rec)", err)
	}
	return &regionReader{rec: rec, regions: regions, interval: max(1, in.Params.Int("interval"))}, nil
}

// Process reads the regions of every interval-th frame and passes every
// frame on with the latest texts.
func (s *regionReader) Process(_ context.Context, in stage.Batch) (stage.Batch, error) {
	out := make(stage.Batch, 0, len(in))
	for _, e := range in {
		if e.Kind == envelope.KindFrame && e.Video != nil {
			if s.frames%int64(s.interval) == 0 {
				if err := s.readFrame(e); err != nil {
					return out, err
				}
			} else {
				for i := range s.last {
					s.last[i].Kept = true
				}
			}
			s.frames++
			e.Detections = append(slices.Clip(e.Detections), s.last...) // never into a shared array
		}
		out = append(out, e.Pass())
	}
	return out, nil
}

func (s *regionReader) readFrame(e *stage.Msg) error {
	f, err := codecs.FrameOf(e)
	if err != nil {
		return err
	}
	if err := s.rec.load(f); err != nil {
		return err
	}
	s.last = s.last[:0]
	for _, r := range s.regions {
		text, score, err := s.rec.readLoaded(r.box)
		if err != nil {
			return err
		}
		d := r.box
		d.Label, d.Text, d.Score, d.Model = r.name, text, score, s.rec.m.card.Name
		s.last = append(s.last, d)
	}
	s.read.Add(1)
	return nil
}

// Status counts the frames read.
func (s *regionReader) Status() stage.Status {
	return stage.Status{Counts: map[string]int64{"frames_read": s.read.Load()}}
}

// Close releases the recognizer.
func (s *regionReader) Close() error {
	s.rec.close() // and its session
	return nil
}
