package infer

import (
	"fmt"
	"math"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/stages/infer/model"
)

// geometry maps boxes from model-input coordinates back to the frame.
type geometry struct {
	inW, inH   int     // tensor width and height
	sx, sy     float32 // fraction of the input the picture covers (letterbox < 1)
	offX, offY float32 // where the picture starts in the input, as a fraction
}

func (g geometry) toFrame(b box) box {
	if g.sx == 0 || g.sy == 0 {
		return b
	}
	b.X1 = clamp01((b.X1 - g.offX) / g.sx)
	b.X2 = clamp01((b.X2 - g.offX) / g.sx)
	b.Y1 = clamp01((b.Y1 - g.offY) / g.sy)
	b.Y2 = clamp01((b.Y2 - g.offY) / g.sy)
	return b
}

// preprocessor turns decoded frames into a model's float input with
// swscale (scaling and colour conversion in one pass) and one loop for the
// normalisation; its buffers are reused from frame to frame.
type preprocessor struct {
	in     model.Input
	pad    float64 // mirrored border on every side, as a fraction of the frame (see size)
	flags  astiav.SoftwareScaleContextFlag
	sws    *astiav.SoftwareScaleContext
	dst    *astiav.Frame
	key    [5]int // source w, h, format, target w, h
	planes int
}

func newPreprocessor(in model.Input, pad float64, flags astiav.SoftwareScaleContextFlag) *preprocessor {
	return &preprocessor{in: in, pad: pad, flags: flags, dst: astiav.AllocFrame()}
}

// size returns the tensor size and the picture size inside it for a frame.
// With a pad, the model sees the frame with a mirrored border of pad times
// its width and height on every side: the picture is that much smaller.
func (p *preprocessor) size(fw, fh int) (tw, th, pw, ph int, err error) {
	shape := p.in.Shape
	if len(shape) != 4 {
		return 0, 0, 0, 0, fmt.Errorf("input %s: want a 4-d image input, card says %v", p.in.Name, shape)
	}
	h, w := int(shape[2]), int(shape[3])
	if p.in.Layout == "NHWC" {
		h, w = int(shape[1]), int(shape[2])
	}
	k := 1 + 2*p.pad
	vw, vh := float64(fw)*k, float64(fh)*k // the frame with its border
	picture := func(w, h float64) (int, int) { return max(1, int(w/k+0.5)), max(1, int(h/k+0.5)) }
	switch p.in.Resize {
	case "fit32":
		maxSide := p.in.MaxSide
		if maxSide <= 0 {
			maxSide = 960
		}
		r := min(1, float64(maxSide)/max(vw, vh))
		round := func(v float64) int { return max(32, int(v/32+0.5)*32) }
		w, h = round(vw*r), round(vh*r)
		pw, ph = picture(float64(w), float64(h))
		return w, h, pw, ph, nil
	case "letterbox":
		if w <= 0 || h <= 0 {
			return 0, 0, 0, 0, fmt.Errorf("input %s: letterbox needs a fixed size", p.in.Name)
		}
		r := min(float64(w)/vw, float64(h)/vh)
		pw, ph = picture(vw*r, vh*r)
		return w, h, pw, ph, nil
	}
	if w <= 0 || h <= 0 {
		return 0, 0, 0, 0, fmt.Errorf("input %s: stretch needs a fixed size, card says %v", p.in.Name, shape)
	}
	pw, ph = picture(float64(w), float64(h))
	return w, h, pw, ph, nil
}

// scaled is a frame as swscale sized it for the model: the picture's
// pixels (pw x ph, bpp bytes each, the first ch of them used) and where
// it lies in the tw x th tensor.
type scaled struct {
	pix            []byte
	stride         int
	tw, th, pw, ph int
	ch, bpp        int
	offX, offY     int
}

// geometry maps boxes in the tensor back to the frame.
func (sc scaled) geometry() geometry {
	return geometry{inW: sc.tw, inH: sc.th, sx: float32(sc.pw) / float32(sc.tw), sy: float32(sc.ph) / float32(sc.th),
		offX: float32(sc.offX) / float32(sc.tw), offY: float32(sc.offY) / float32(sc.th)}
}

// picture is the rectangle of the tensor the picture covers.
func (sc scaled) picture() rect { return rect{sc.offX, sc.offY, sc.offX + sc.pw, sc.offY + sc.ph} }

// scale sizes frame f for the model with swscale (valid until the next call).
func (p *preprocessor) scale(f *astiav.Frame) (scaled, error) {
	tw, th, pw, ph, err := p.size(f.Width(), f.Height())
	if err != nil {
		return scaled{}, err
	}
	// Four bytes a pixel: swscale's RGBA/BGRA output has SIMD paths and
	// takes half the time of its RGB24 output; the alpha byte is skipped.
	pf, ch, bpp := astiav.PixelFormatRgba, 3, 4
	switch p.in.Color {
	case "BGR":
		pf = astiav.PixelFormatBgra
	case "GRAY":
		pf, ch, bpp = astiav.PixelFormatGray8, 1, 1
	}
	key := [5]int{f.Width(), f.Height(), int(f.PixelFormat()), pw, ph}
	if p.sws == nil || key != p.key {
		if p.sws != nil {
			p.sws.Free()
		}
		p.sws, err = astiav.CreateSoftwareScaleContext(f.Width(), f.Height(), f.PixelFormat(), pw, ph, pf,
			astiav.NewSoftwareScaleContextFlags(p.flags))
		if err != nil {
			return scaled{}, fmt.Errorf("infer: creating scaler %dx%d %s -> %dx%d failed: %w", f.Width(), f.Height(), f.PixelFormat(), pw, ph, err)
		}
		p.key = key
	}
	p.dst.Unref()
	p.dst.SetWidth(pw)
	p.dst.SetHeight(ph)
	p.dst.SetPixelFormat(pf)
	if err := p.dst.AllocBuffer(1); err != nil {
		return scaled{}, fmt.Errorf("infer: allocating scaled frame: %w", err)
	}
	if err := p.sws.ScaleFrame(f, p.dst); err != nil {
		return scaled{}, fmt.Errorf("infer: scaling frame: %w", err)
	}
	pix, stride := codecs.Plane(p.dst, 0, ph)
	return scaled{pix: pix, stride: stride, tw: tw, th: th, pw: pw, ph: ph, ch: ch, bpp: bpp, offX: (tw - pw) / 2, offY: (th - ph) / 2}, nil
}

// letterboxGrey is the value of the tensor around a letterboxed picture.
const letterboxGrey = 114

// fill writes frame f into dst (which must hold 3*tw*th floats, or tw*th
// for GRAY) and returns the tensor shape and geometry.
func (p *preprocessor) fill(f *astiav.Frame, dst []float32) ([]int64, geometry, error) {
	sc, err := p.scale(f)
	if err != nil {
		return nil, geometry{}, err
	}
	tw, th, pw, ph, ch, bpp := sc.tw, sc.th, sc.pw, sc.ph, sc.ch, sc.bpp
	need := ch * tw * th
	if len(dst) < need {
		return nil, geometry{}, fmt.Errorf("infer: tensor buffer %d < %d", len(dst), need)
	}
	nhwc := p.in.Layout == "NHWC"
	mean, inv := normalisation(p.in)
	offX, offY := sc.offX, sc.offY
	if pw != tw || ph != th {
		// Letterbox padding: grey, normalised like the picture.
		for c := 0; c < ch; c++ {
			v := (letterboxGrey - mean[c]) * inv[c]
			for i := 0; i < tw*th; i++ {
				if nhwc {
					dst[i*ch+c] = v
				} else {
					dst[c*tw*th+i] = v
				}
			}
		}
	}
	pix, stride := sc.pix, sc.stride
	plane := tw * th
	switch {
	case ch == 3 && !nhwc:
		// The common case, written out: three planes, no branches per pixel.
		m0, m1, m2, i0, i1, i2 := mean[0], mean[1], mean[2], inv[0], inv[1], inv[2]
		for y := 0; y < ph; y++ {
			row := pix[y*stride : y*stride+pw*4]
			base := (y+offY)*tw + offX
			d0 := dst[base : base+pw]
			d1 := dst[plane+base : plane+base+pw]
			d2 := dst[2*plane+base : 2*plane+base+pw]
			for x := range d0 {
				px := row[4*x : 4*x+3 : 4*x+3]
				d0[x] = (float32(px[0]) - m0) * i0
				d1[x] = (float32(px[1]) - m1) * i1
				d2[x] = (float32(px[2]) - m2) * i2
			}
		}
	default:
		for y := 0; y < ph; y++ {
			row := pix[y*stride : y*stride+pw*bpp]
			ty := y + offY
			for x := 0; x < pw; x++ {
				tx := x + offX
				for c := 0; c < ch; c++ {
					v := (float32(row[x*bpp+c]) - mean[c]) * inv[c]
					if nhwc {
						dst[(ty*tw+tx)*ch+c] = v
					} else {
						dst[c*plane+ty*tw+tx] = v
					}
				}
			}
		}
	}
	if p.pad > 0 {
		mirror(dst, tw, th, ch, nhwc, sc.picture(), p.pad)
	}
	return tensorShape(1, tw, th, ch, nhwc), sc.geometry(), nil
}

// tensorShape is the shape of n images of tw x th x ch in the layout.
func tensorShape(n, tw, th, ch int, nhwc bool) []int64 {
	if nhwc {
		return []int64{int64(n), int64(th), int64(tw), int64(ch)}
	}
	return []int64{int64(n), int64(ch), int64(th), int64(tw)}
}

// fillBytes writes frame f, sized for the model but not normalised, into
// dst as tw x th pixels of ch interleaved channels (grey letterbox and
// mirrored border as fill makes them), as the shared inference service
// takes it (see package inferwire); dst is grown if needed.
func (p *preprocessor) fillBytes(f *astiav.Frame, dst []byte) ([]byte, scaled, error) {
	sc, err := p.scale(f)
	if err != nil {
		return nil, scaled{}, err
	}
	tw, th, ch := sc.tw, sc.th, sc.ch
	if cap(dst) < tw*th*ch {
		dst = make([]byte, tw*th*ch)
	}
	dst = dst[:tw*th*ch]
	if sc.pw != tw || sc.ph != th {
		for i := range dst {
			dst[i] = letterboxGrey
		}
	}
	for y := 0; y < sc.ph; y++ {
		row := sc.pix[y*sc.stride : y*sc.stride+sc.pw*sc.bpp]
		out := dst[((y+sc.offY)*tw+sc.offX)*ch : ((y+sc.offY)*tw+sc.offX+sc.pw)*ch]
		if sc.bpp == ch {
			copy(out, row)
			continue
		}
		for x := 0; x < sc.pw; x++ {
			copy(out[x*ch:x*ch+ch], row[x*sc.bpp:x*sc.bpp+ch])
		}
	}
	if p.pad > 0 {
		mirror(dst, tw, th, ch, true, sc.picture(), p.pad)
	}
	return dst, sc, nil
}

// normaliseBytes turns n images of tw x th pixels of ch interleaved
// channels (fillBytes) into the model's float input, as fill would have
// written it.
func normaliseBytes(in model.Input, pix []byte, tw, th, ch int, dst []float32) {
	mean, inv := normalisation(in)
	nhwc := in.Layout == "NHWC"
	plane := tw * th
	per := plane * ch
	for n := 0; n*per < len(pix); n++ {
		img, out := pix[n*per:(n+1)*per], dst[n*per:(n+1)*per]
		if nhwc {
			for i, v := range img {
				c := i % ch
				out[i] = (float32(v) - mean[c]) * inv[c]
			}
			continue
		}
		for i := 0; i < plane; i++ {
			for c := 0; c < ch; c++ {
				out[c*plane+i] = (float32(img[i*ch+c]) - mean[c]) * inv[c]
			}
		}
	}
}

// rect is a rectangle of the tensor, x1,y1 inclusive, x2,y2 exclusive.
type rect struct{ x1, y1, x2, y2 int }

// mirror fills a border around the picture pic in a tw x th tensor of ch
// channels (planar, or interleaved with nhwc), pad times the picture's
// size on each side as far as the tensor goes, with the picture reflected
// at its edges (the edge pixel not repeated): a face that the frame's edge
// cuts in half becomes a whole, symmetric face.
func mirror[T float32 | byte](dst []T, tw, th, ch int, nhwc bool, pic rect, pad float64) {
	pw, ph := pic.x2-pic.x1, pic.y2-pic.y1
	bw, bh := int(math.Ceil(float64(pw)*pad)), int(math.Ceil(float64(ph)*pad))
	x1, x2 := pic.x1-min(pic.x1, bw), pic.x2+min(tw-pic.x2, bw)
	y1, y2 := pic.y1-min(pic.y1, bh), pic.y2+min(th-pic.y2, bh)
	at := func(x, y, c int) int { return c*tw*th + y*tw + x }
	if nhwc {
		at = func(x, y, c int) int { return (y*tw+x)*ch + c }
	}
	for c := 0; c < ch; c++ {
		for y := pic.y1; y < pic.y2; y++ { // left and right of the picture
			for x := x1; x < pic.x1; x++ {
				dst[at(x, y, c)] = dst[at(reflect(x, pic.x1, pic.x2), y, c)]
			}
			for x := pic.x2; x < x2; x++ {
				dst[at(x, y, c)] = dst[at(reflect(x, pic.x1, pic.x2), y, c)]
			}
		}
		for y := y1; y < y2; y++ { // above and below, corners included
			if y >= pic.y1 && y < pic.y2 {
				continue
			}
			sy := reflect(y, pic.y1, pic.y2)
			for x := x1; x < x2; x++ {
				dst[at(x, y, c)] = dst[at(x, sy, c)]
			}
		}
	}
}

// reflect maps a position beyond [lo, hi) back into it, as a mirror at
// each end that does not repeat the end itself (lo-1 -> lo+1).
func reflect(v, lo, hi int) int {
	n := hi - lo
	if n == 1 {
		return lo
	}
	period := 2 * (n - 1)
	d := ((v-lo)%period + period) % period
	if d >= n {
		d = period - d
	}
	return lo + d
}

// normalisation returns a card input's per-channel mean and 1/std
// (missing values: mean 0, std 1).
func normalisation(in model.Input) (mean, inv [3]float32) {
	inv = [3]float32{1, 1, 1}
	for c := 0; c < 3; c++ {
		if c < len(in.Mean) {
			mean[c] = in.Mean[c]
		}
		if c < len(in.Std) && in.Std[c] != 0 {
			inv[c] = 1 / in.Std[c]
		}
	}
	return mean, inv
}

func (p *preprocessor) close() {
	if p.sws != nil {
		p.sws.Free()
		p.sws = nil
	}
	if p.dst != nil {
		p.dst.Free()
		p.dst = nil
	}
}
