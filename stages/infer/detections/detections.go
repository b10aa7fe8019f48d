// Package detections checks the detections that reach a stage before it
// draws, hides or tracks them. Detections travel in envelopes, which any
// NATS client may publish, so they are outside bytes: a box may be NaN,
// infinite, a billion frames wide or upside down, a class or track id
// negative, a label a megabyte long. Sanitize turns them into boxes inside
// the frame that a stage can use in bounded time.
package detections

import (
	"log/slog"
	"sync/atomic"
	"unicode/utf8"

	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
)

// Limits on what one frame's detections may hold.
const (
	// MaxPerFrame is the most detections a frame keeps; the rest are dropped.
	MaxPerFrame = 1024
	// MaxText is the most bytes a label or recognised text keeps (cut on a
	// character boundary).
	MaxText = 256
)

// Sanitize returns ds with every detection made usable, and how many it
// dropped:
//   - a box with a NaN coordinate says nothing about where it is: dropped;
//   - coordinates are clamped to the frame, [0, 1] (an infinite or huge
//     box covers the whole frame), and swapped when x1 > x2 or y1 > y2;
//   - a box with no area left inside the frame is dropped;
//   - a NaN score becomes 0, other scores are clamped to [0, 1];
//   - a negative track id becomes 0 (no track);
//   - labels, texts and model names are cut to MaxText bytes;
//   - beyond MaxPerFrame detections the rest are dropped.
//
// Class is kept as it is (a negative class is allowed: users of it must
// not index with it). ds itself is never modified: when anything changes,
// the result is a new slice (envelopes passed on share their detections).
func Sanitize(ds []envelope.Detection) ([]envelope.Detection, int) {
	if clean(ds) {
		return ds, 0
	}
	out := make([]envelope.Detection, 0, min(len(ds), MaxPerFrame))
	dropped := 0
	for _, d := range ds {
		d, ok := Fix(d)
		if !ok || len(out) == MaxPerFrame {
			dropped++
			continue
		}
		out = append(out, d)
	}
	return out, dropped
}

// clean reports whether Sanitize would leave ds as it is.
func clean(ds []envelope.Detection) bool {
	if len(ds) > MaxPerFrame {
		return false
	}
	for _, d := range ds {
		if f, ok := Fix(d); !ok || f != d {
			return false
		}
	}
	return true
}

// Fix makes one detection usable (see Sanitize); false when it marks
// nothing inside the frame.
func Fix(d envelope.Detection) (envelope.Detection, bool) {
	for _, v := range [4]float32{d.X1, d.Y1, d.X2, d.Y2} {
		if v != v {
			return d, false
		}
	}
	d.X1, d.X2 = unit(min(d.X1, d.X2)), unit(max(d.X1, d.X2))
	d.Y1, d.Y2 = unit(min(d.Y1, d.Y2)), unit(max(d.Y1, d.Y2))
	if d.X2 <= d.X1 || d.Y2 <= d.Y1 {
		return d, false
	}
	if d.Score != d.Score {
		d.Score = 0
	}
	d.Score = unit(d.Score)
	d.Track = max(d.Track, 0)
	d.Label, d.Text, d.Model = cut(d.Label), cut(d.Text), cut(d.Model)
	return d, true
}

// unit clamps v (not NaN) to [0, 1].
func unit(v float32) float32 { return min(max(v, 0), 1) }

// cut shortens s to at most MaxText bytes without splitting a character.
func cut(s string) string {
	if len(s) <= MaxText {
		return s
	}
	n := MaxText
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Guard sanitizes the detections reaching one stage, counts what it
// drops and says so in the log the first time.
type Guard struct {
	Log     *slog.Logger
	Stage   string       // the stage's name, for the log
	Dropped atomic.Int64 // detections dropped so far (read by the metrics while the stage runs)
}

// Check sanitizes e's detections in place (a new slice when any changes).
func (g *Guard) Check(e *stage.Msg) {
	ds, dropped := Sanitize(e.Detections)
	e.Detections = ds
	if dropped == 0 {
		return
	}
	if g.Dropped.Load() == 0 && g.Log != nil {
		g.Log.Warn("dropping unusable detections (NaN box, no area inside the frame, or more than the limit per frame); later ones are only counted",
			"stage", g.Stage, "stream", e.Stream, "dropped", dropped, "limit", MaxPerFrame)
	}
	g.Dropped.Add(int64(dropped))
}

// Counts is the guard's counter for the run's metrics (a stage's
// stage.Status.Counts): "malformed_detections".
func (g *Guard) Counts() map[string]int64 {
	return map[string]int64{"malformed_detections": g.Dropped.Load()}
}
