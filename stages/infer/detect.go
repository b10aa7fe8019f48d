package infer

import (
	"fmt"
	"os"
	"strings"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/stages/infer/onnx"
)

// Detect runs the model on one frame and returns frame-normalised results
// at or above the threshold.
func (s *Detector) Detect(f *astiav.Frame) ([]box, error) {
	card := s.m.card
	tw, th, _, _, err := s.prep.size(f.Width(), f.Height())
	if err != nil {
		return nil, fmt.Errorf("%w: model %s: %v", ErrInfer, card.Name, err)
	}
	ch := 3
	if card.Inputs[0].Color == "GRAY" {
		ch = 1
	}
	if need := ch * tw * th; cap(s.buf) < need {
		s.buf = make([]float32, need)
	}
	s.buf = s.buf[:ch*tw*th]
	shape, geo, err := s.prep.fill(f, s.buf)
	if err != nil {
		return nil, err
	}
	outs, err := s.m.sess.Run([]onnx.Tensor{{Shape: shape, Data: s.buf}}, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: model %s: %v", ErrInfer, card.Name, err)
	}
	d := card.Decoder
	var dets []box
	switch d.Type {
	case "ultraface":
		dets = decodeUltraFace(outs[0].Data, outs[1].Data, s.thr, nmsOr(d.NMSIoU))
	case "yolo":
		dets = decodeYOLO(outs[0].Data, outs[0].Shape, d.Layout, tw, th, s.thr, nmsOr(d.NMSIoU))
	case "classifier":
		dets = decodeClassifier(outs[0].Data, max(1, d.TopK))
	case "dbnet":
		sh := outs[0].Shape
		if len(sh) != 4 {
			return nil, fmt.Errorf("%w: model %s: probability map shape %v", ErrInfer, card.Name, sh)
		}
		dets = decodeDBNet(outs[0].Data, int(sh[3]), int(sh[2]), s.thr, d.BoxThreshold, d.UnclipRatio)
	default:
		return nil, fmt.Errorf("%w: model %s: decoder %s does not apply to video frames", ErrInfer, card.Name, d.Type)
	}
	for i := range dets {
		if d.Type != "classifier" {
			dets[i] = geo.toFrame(dets[i])
		}
		dets[i].Model = card.Name
		if c := int(dets[i].Class); c >= 0 && c < len(card.Labels) {
			dets[i].Label = card.Labels[c]
		}
	}
	if s.rec != nil {
		for i := range dets {
			text, score, err := s.rec.read(f, dets[i])
			if err != nil {
				return nil, err
			}
			dets[i].Text = text
			_ = score
		}
	}
	return dets, nil
}

func nmsOr(v float32) float32 {
	if v <= 0 {
		return 0.45
	}
	return v
}

// recognizer reads the text in a box with a CTC model (PP-OCR rec).
type recognizer struct {
	m       *loaded
	charset []string
	sws     *astiav.SoftwareScaleContext
	bgr     *astiav.Frame
	key     [3]int
	buf     []float32
}

func newRecognizer(m *loaded) (*recognizer, error) {
	d := m.card.Decoder
	if d.Type != "ctc-text" {
		return nil, fmt.Errorf("%w: recognizer %s has decoder %s, want ctc-text", ErrInfer, m.card.Name, d.Type)
	}
	path, ok := m.files.Extras[d.Charset]
	if !ok {
		return nil, fmt.Errorf("%w: recognizer %s: charset %s is not among the card's extras", ErrInfer, m.card.Name, d.Charset)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: recognizer %s: %v", ErrInfer, m.card.Name, err)
	}
	charset := strings.Split(strings.TrimRight(strings.ReplaceAll(string(b), "\r\n", "\n"), "\n"), "\n")
	classes := m.card.Outputs[0].Shape[2]
	want := int64(len(charset)) + 1
	if d.Space {
		want++
	}
	if classes > 0 && classes != want {
		return nil, fmt.Errorf("%w: recognizer %s: %d characters (+blank%s) make %d classes, the model has %d", ErrInfer, m.card.Name,
			len(charset), map[bool]string{true: "+space", false: ""}[d.Space], want, classes)
	}
	return &recognizer{m: m, charset: charset, bgr: astiav.AllocFrame()}, nil
}

// read crops the box from f, scales it to the model's height and decodes the text.
func (r *recognizer) read(f *astiav.Frame, b box) (string, float32, error) {
	in := r.m.card.Inputs[0]
	H := int(in.Shape[2])
	fw, fh := f.Width(), f.Height()
	key := [3]int{fw, fh, int(f.PixelFormat())}
	if r.sws == nil || key != r.key {
		if r.sws != nil {
			r.sws.Free()
		}
		var err error
		r.sws, err = astiav.CreateSoftwareScaleContext(fw, fh, f.PixelFormat(), fw, fh, astiav.PixelFormatBgr24,
			astiav.NewSoftwareScaleContextFlags(astiav.SoftwareScaleContextFlagBilinear))
		if err != nil {
			return "", 0, fmt.Errorf("%w: recognizer scaler: %v", ErrInfer, err)
		}
		r.key = key
	}
	r.bgr.Unref()
	r.bgr.SetWidth(fw)
	r.bgr.SetHeight(fh)
	r.bgr.SetPixelFormat(astiav.PixelFormatBgr24)
	if err := r.bgr.AllocBuffer(1); err != nil {
		return "", 0, err
	}
	if err := r.sws.ScaleFrame(f, r.bgr); err != nil {
		return "", 0, err
	}
	pix, stride := codecs.Plane(r.bgr, 0, fh)
	x1, y1 := int(b.X1*float32(fw)), int(b.Y1*float32(fh))
	x2, y2 := int(b.X2*float32(fw)+0.5), int(b.Y2*float32(fh)+0.5)
	cw, chh := x2-x1, y2-y1
	if cw < 2 || chh < 2 {
		return "", 0, nil
	}
	maxW := in.MaxSide
	if maxW <= 0 {
		maxW = 960
	}
	W := min(maxW, max(8, int(float64(cw)*float64(H)/float64(chh)+0.5)))
	if cap(r.buf) < 3*H*W {
		r.buf = make([]float32, 3*H*W)
	}
	buf := r.buf[:3*H*W]
	mean, inv := [3]float32{}, [3]float32{1, 1, 1}
	for c := 0; c < 3; c++ {
		if c < len(in.Mean) {
			mean[c] = in.Mean[c]
		}
		if c < len(in.Std) && in.Std[c] != 0 {
			inv[c] = 1 / in.Std[c]
		}
	}
	// Bilinear resize of the crop straight into the tensor.
	for y := 0; y < H; y++ {
		sy := (float32(y)+0.5)*float32(chh)/float32(H) - 0.5
		y0 := int(sy)
		fy := sy - float32(y0)
		if sy < 0 {
			y0, fy = 0, 0
		}
		y1i := min(y0+1, chh-1)
		for x := 0; x < W; x++ {
			sx := (float32(x)+0.5)*float32(cw)/float32(W) - 0.5
			x0 := int(sx)
			fx := sx - float32(x0)
			if sx < 0 {
				x0, fx = 0, 0
			}
			x1i := min(x0+1, cw-1)
			for c := 0; c < 3; c++ {
				p := func(xx, yy int) float32 { return float32(pix[(y1+yy)*stride+(x1+xx)*3+c]) }
				v := (p(x0, y0)*(1-fx)+p(x1i, y0)*fx)*(1-fy) + (p(x0, y1i)*(1-fx)+p(x1i, y1i)*fx)*fy
				buf[c*H*W+y*W+x] = (v - mean[c]) * inv[c]
			}
		}
	}
	outs, err := r.m.sess.Run([]onnx.Tensor{{Shape: []int64{1, 3, int64(H), int64(W)}, Data: buf}}, nil)
	if err != nil {
		return "", 0, fmt.Errorf("%w: recognizer %s: %v", ErrInfer, r.m.card.Name, err)
	}
	sh := outs[0].Shape
	text, score := decodeCTC(outs[0].Data, int(sh[1]), int(sh[2]), r.charset, r.m.card.Decoder.Space)
	return text, score, nil
}

func (r *recognizer) close() {
	if r.sws != nil {
		r.sws.Free()
	}
	r.bgr.Free()
	r.m.sess.Close()
}

// Close frees the models and buffers.
func (s *Detector) Close() error {
	s.prep.close()
	if s.rec != nil {
		s.rec.close()
	}
	return s.m.sess.Close()
}
