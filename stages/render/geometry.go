package render

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/viewers"
)

// geometry is a variant's crop window in the source and its output size.
type geometry struct {
	sw, sh int // source
	cw, ch int // crop window
	ow, oh int // output
}

// aspects are the layouts' width/height ratios (source: the input's).
var aspects = map[string]float64{viewers.LayoutLandscape: 16.0 / 9, viewers.LayoutVertical: 9.0 / 16, viewers.LayoutSquare: 1}

// newGeometry fits the layout's largest window in the source, and sizes
// the output: height (0: the window's), at most maxHeight (0: no
// ceiling), never above the window (no upscaling), even sizes.
func newGeometry(layout string, sw, sh, height, maxHeight int) (*geometry, error) {
	if sw < 16 || sh < 16 {
		return nil, fmt.Errorf("render: a %dx%d frame is too small to reframe", sw, sh)
	}
	g := &geometry{sw: sw, sh: sh, cw: sw, ch: sh}
	if a, ok := aspects[layout]; ok {
		if float64(sw)/float64(sh) > a {
			g.cw = min(sw, evenDown(float64(sh)*a))
		} else {
			g.ch = min(sh, evenDown(float64(sw)/a))
		}
	}
	oh := g.ch
	if height > 0 {
		oh = min(height, g.ch)
	}
	if maxHeight > 0 {
		oh = min(oh, maxHeight)
	}
	g.oh = max(2, evenDown(float64(oh)))
	g.ow = max(2, evenDown(float64(g.oh)*float64(g.cw)/float64(g.ch)+1)) // round to the nearest even width
	return g, nil
}

func evenDown(v float64) int { return int(v) &^ 1 }

// mapDetections moves boxes normalised to the source into the window at
// (x, y), normalised to it; boxes outside it are left out.
func (g *geometry) mapDetections(ds []envelope.Detection, x, y int) []envelope.Detection {
	if len(ds) == 0 {
		return nil
	}
	out := make([]envelope.Detection, 0, len(ds))
	for _, d := range ds {
		d.X1 = clamp01((d.X1*float32(g.sw) - float32(x)) / float32(g.cw))
		d.X2 = clamp01((d.X2*float32(g.sw) - float32(x)) / float32(g.cw))
		d.Y1 = clamp01((d.Y1*float32(g.sh) - float32(y)) / float32(g.ch))
		d.Y2 = clamp01((d.Y2*float32(g.sh) - float32(y)) / float32(g.ch))
		if d.X2 > d.X1 && d.Y2 > d.Y1 {
			out = append(out, d)
		}
	}
	return out
}

func clamp01(v float32) float32 { return min(max(v, 0), 1) }

// spec is the variant's filter graph: the crop window (moved by commands,
// see moveWindow), the scale to the output, image overlays, and one
// drawtext per text overlay (its text set by commands, see updateTexts).
func (s *Stage) spec(x, y int) string {
	g := s.geo
	var b strings.Builder
	fmt.Fprintf(&b, "crop@cam=w=%d:h=%d:x=%d:y=%d,scale=%d:%d:flags=bicubic,setsar=1", g.cw, g.ch, x, y, g.ow, g.oh)
	margin := max(4, g.oh/25)
	n := 0
	s.texts = nil
	for _, o := range s.profile.Overlays {
		if o.Image == "" {
			continue
		}
		scale := scaleOr(o, 0.2)
		fmt.Fprintf(&b, "[base%d];movie=filename=%s,scale=%d:-2,format=rgba,colorchannelmixer=aa=%s[wm%d];[base%d][wm%d]overlay=%s:format=auto",
			n, o.Image, max(2, evenDown(scale*float64(g.ow))), num(opacity(o)), n, n, n, place(o.Position, "W", "H", "w", "h", margin))
		n++
	}
	for _, o := range s.profile.Overlays {
		if o.Text == "" {
			continue
		}
		size := max(8, int(scaleOr(o, 0.06)*float64(g.oh)+0.5))
		op := opacity(o)
		fmt.Fprintf(&b, ",drawtext@t%d=fontfile=%s:expansion=none:text=.:fontsize=%d:fontcolor=white@%s:box=1:boxcolor=black@%s:boxborderw=%d:%s",
			len(s.texts), s.p.String("font"), size, num(op), num(0.55*op), max(2, size/4), place(o.Position, "w", "h", "tw", "th", margin))
		s.texts = append(s.texts, ".")
	}
	return b.String()
}

// scaleOr is the overlay's scale, or the default d when it has none:
// of the frame's width for an image, of its height for a text.
func scaleOr(o viewers.Overlay, d float64) float64 {
	if o.Scale == 0 {
		return d
	}
	return o.Scale
}

func opacity(o viewers.Overlay) float64 {
	if o.Opacity == 0 {
		return 1
	}
	return o.Opacity
}

func num(v float64) string { return strconv.FormatFloat(v, 'f', 3, 64) }

// place is the x:y of a filter drawing something of size (w, h) on a
// frame of size (W, H) at a position, margin pixels from the edges.
func place(pos, W, H, w, h string, margin int) string {
	m := strconv.Itoa(margin)
	x := map[byte]string{'l': m, 'c': "(" + W + "-" + w + ")/2", 'r': W + "-" + w + "-" + m}
	y := map[byte]string{'t': m, 'c': "(" + H + "-" + h + ")/2", 'b': H + "-" + h + "-" + m}
	col, row := byte('c'), byte('b')
	switch pos {
	case "top-left":
		col, row = 'l', 't'
	case "top":
		row = 't'
	case "top-right":
		col, row = 'r', 't'
	case "left":
		col, row = 'l', 'c'
	case "center":
		row = 'c'
	case "right":
		col, row = 'r', 'c'
	case "bottom-left":
		col = 'l'
	case "bottom-right":
		col = 'r'
	}
	return "x=" + x[col] + ":y=" + y[row]
}
