// Package draw is the draw stage: it draws detection boxes, labels, scores,
// recognised text and track ids onto video frames.
package draw

import (
	"context"
	"fmt"
	"strings"
	"unicode"

	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
	"github.com/avflow/avflow/stages/infer/detections"
)

func init() {
	pipeline.MustRegister(pipeline.Spec{
		Kind:    "draw",
		Summary: "Draw detection boxes with label, score, text and track id onto video frames.",
		Params: []pipeline.Param{
			{Name: "thickness", Type: pipeline.TypeInt, Default: 2, Doc: "box line width in pixels"},
			{Name: "scale", Type: pipeline.TypeInt, Default: 2, Doc: "label font size (multiples of a 5x7 font)"},
			{Name: "labels", Type: pipeline.TypeBool, Default: true, Doc: "write label, score and track id above each box"},
		},
		MinInputs: 1, MaxInputs: 1,
		Ports: func(_ pipeline.Params, in []pipeline.PortType) ([]pipeline.Port, error) {
			if in[0].Kind != envelope.KindFrame || in[0].Media == envelope.MediaAudio {
				return nil, fmt.Errorf("draw takes video frames carrying detections, got %s", in[0])
			}
			return []pipeline.Port{{Name: "out", Type: in[0]}}, nil
		},
		Replicable: func(pipeline.Params) error { return nil }, // each frame on its own
		New: func(_ context.Context, in pipeline.Init) (stage.Stage, error) {
			return &Stage{thick: max(1, in.Params.Int("thickness")), scale: max(1, in.Params.Int("scale")), labels: in.Params.Bool("labels"),
				guard: detections.Guard{Log: in.Log, Stage: in.Name}}, nil
		},
	})
}

// Stage draws detections.
type Stage struct {
	stage.Base
	thick, scale int
	labels       bool
	guard        detections.Guard // detections are outside bytes: checked before drawing
}

// colour is a Y, U, V triple.
type colour [3]byte

// palette gives each class or track a stable, bright colour (BT.601 YUV).
var palette = []colour{
	{145, 54, 34},   // green
	{82, 90, 240},   // red
	{41, 240, 110},  // blue
	{210, 16, 146},  // yellow
	{170, 166, 16},  // cyan
	{107, 202, 222}, // magenta
}

// Process draws on each frame that has detections.
func (s *Stage) Process(_ context.Context, in stage.Batch) (stage.Batch, error) {
	out := make(stage.Batch, 0, len(in))
	for _, e := range in {
		s.guard.Check(e)
		if len(e.Detections) > 0 {
			if err := s.draw(e); err != nil {
				return out, err
			}
		}
		out = append(out, e.Pass())
	}
	return out, nil
}

func (s *Stage) draw(e *stage.Msg) error {
	f, err := codecs.FrameOf(e)
	if err != nil {
		return err
	}
	if err := codecs.MakeWritable(f); err != nil {
		return err
	}
	pl, st, err := codecs.YUVPlanes(f)
	if err != nil {
		return fmt.Errorf("draw: %w", err)
	}
	c := canvas{pl: pl, st: st, w: f.Width(), h: f.Height()}
	for _, d := range e.Detections {
		col := colourOf(d)
		x1, y1 := int(d.X1*float32(c.w)), int(d.Y1*float32(c.h))
		x2, y2 := int(d.X2*float32(c.w)), int(d.Y2*float32(c.h))
		for t := 0; t < s.thick; t++ {
			c.rect(x1+t, y1+t, x2-t, y2-t, col)
		}
		if s.labels {
			c.text(x1, y1-8*s.scale-2, s.scale, Label(d), col)
		}
	}
	return nil
}

// colourOf is a detection's colour: its track's, or its class's (any
// class, negative ones too).
func colourOf(d envelope.Detection) colour {
	key := int64(d.Class)
	if d.Track > 0 {
		key = d.Track
	}
	n := int64(len(palette))
	return palette[(key%n+n)%n]
}

// Label is the text drawn above a detection: label (or recognised text),
// score in percent, track id.
func Label(d envelope.Detection) string {
	var parts []string
	name := d.Label
	if d.Text != "" {
		name = d.Text
	}
	if name != "" {
		parts = append(parts, name)
	}
	parts = append(parts, fmt.Sprintf("%d%%", int(d.Score*100+0.5)))
	if d.Track > 0 {
		parts = append(parts, fmt.Sprintf("#%d", d.Track))
	}
	return strings.Join(parts, " ")
}

type canvas struct {
	pl   [3][]byte
	st   [3]int
	w, h int
}

func (c canvas) set(x, y int, col colour) {
	if x < 0 || y < 0 || x >= c.w || y >= c.h {
		return
	}
	c.pl[0][y*c.st[0]+x] = col[0]
	c.pl[1][(y/2)*c.st[1]+x/2] = col[1]
	c.pl[2][(y/2)*c.st[2]+x/2] = col[2]
}

func (c canvas) rect(x1, y1, x2, y2 int, col colour) {
	for x := x1; x <= x2; x++ {
		c.set(x, y1, col)
		c.set(x, y2, col)
	}
	for y := y1; y <= y2; y++ {
		c.set(x1, y, col)
		c.set(x2, y, col)
	}
}

// text writes s with the 5x7 font; letters without a glyph are skipped.
func (c canvas) text(x, y, scale int, s string, col colour) {
	if y < 0 {
		y = 0
	}
	for _, r := range s {
		if x >= c.w {
			return // the rest is off the frame
		}
		g, ok := font5x7[unicode.ToUpper(r)]
		if !ok {
			x += 6 * scale
			continue
		}
		for row := 0; row < 7; row++ {
			for bit := 0; bit < 5; bit++ {
				if g[row]&(0x10>>bit) == 0 {
					continue
				}
				for dy := 0; dy < scale; dy++ {
					for dx := 0; dx < scale; dx++ {
						c.set(x+bit*scale+dx, y+row*scale+dy, col)
					}
				}
			}
		}
		x += 6 * scale
	}
}

// Status reports the detections dropped as unusable.
func (s *Stage) Status() stage.Status { return stage.Status{Counts: s.guard.Counts()} }
