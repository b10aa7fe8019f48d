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
	res, err := s.DetectBatch([]*astiav.Frame{f})
	if err != nil {
		return nil, err
	}
	return res[0], nil
}

// Batchable reports whether the model takes several images per run (a
// dynamic first dimension); otherwise DetectBatch runs them one by one.
func (s *Detector) Batchable() bool {
	sh := s.m.card.Inputs[0].Shape
	return len(sh) == 4 && sh[0] < 0
}

// DetectBatch runs the model on several frames. Frames that make tensors
// of the same size go through the model together when it is Batchable.
func (s *Detector) DetectBatch(frames []*astiav.Frame) ([][]box, error) {
	card := s.m.card
	res := make([][]box, len(frames))
	ch := 3
	if card.Inputs[0].Color == "GRAY" {
		ch = 1
	}
	for start := 0; start < len(frames); {
		tw, th, _, _, err := s.prep.size(frames[start].Width(), frames[start].Height())
		if err != nil {
			return nil, fmt.Errorf("%w: model %s: %v", ErrInfer, card.Name, err)
		}
		// The run: as many following frames of the same tensor size as the model takes.
		end := start + 1
		for s.Batchable() && end < len(frames) {
			w, h, _, _, err := s.prep.size(frames[end].Width(), frames[end].Height())
			if err != nil || w != tw || h != th {
				break
			}
			end++
		}
		n, per := end-start, ch*tw*th
		if cap(s.buf) < n*per {
			s.buf = make([]float32, n*per)
		}
		s.buf = s.buf[:n*per]
		geos := make([]geometry, n)
		var shape []int64
		for i := 0; i < n; i++ {
			if shape, geos[i], err = s.prep.fill(frames[start+i], s.buf[i*per:(i+1)*per]); err != nil {
				return nil, err
			}
		}
		shape[0] = int64(n)
		outs, err := s.m.sess.Run([]onnx.Tensor{{Shape: shape, Data: s.buf}}, nil)
		if err != nil {
			return nil, fmt.Errorf("%w: model %s: %v", ErrInfer, card.Name, err)
		}
		for i := 0; i < n; i++ {
			dets, err := s.decode(outs, i, n, tw, th)
			if err != nil {
				return nil, err
			}
			for j := range dets {
				if card.Decoder.Type != "classifier" {
					dets[j] = geos[i].toFrame(dets[j])
				}
				dets[j].Model = card.Name
				if c := int(dets[j].Class); c >= 0 && c < len(card.Labels) {
					dets[j].Label = card.Labels[c]
				}
			}
			if s.rec != nil {
				for j := range dets {
					if dets[j].Text, _, err = s.rec.read(frames[start+i], dets[j]); err != nil {
						return nil, err
					}
				}
			}
			res[start+i] = dets
		}
		start = end
	}
	return res, nil
}

// item returns image i of n from a batched output.
func item(t onnx.Tensor, i, n int) ([]float32, []int64) {
	per := len(t.Data) / n
	shape := append([]int64{1}, t.Shape[1:]...)
	return t.Data[i*per : (i+1)*per], shape
}

// decode turns the outputs of image i of a batch of n into boxes.
func (s *Detector) decode(outs []onnx.Tensor, i, n, tw, th int) ([]box, error) {
	card := s.m.card
	d := card.Decoder
	switch d.Type {
	case "ultraface":
		scores, _ := item(outs[0], i, n)
		boxes, _ := item(outs[1], i, n)
		return decodeUltraFace(scores, boxes, s.thr, nmsOr(d.NMSIoU)), nil
	case "yolo":
		data, shape := item(outs[0], i, n)
		return decodeYOLO(data, shape, d.Layout, tw, th, s.thr, nmsOr(d.NMSIoU)), nil
	case "classifier":
		data, _ := item(outs[0], i, n)
		return decodeClassifier(data, max(1, d.TopK)), nil
	case "dbnet":
		data, sh := item(outs[0], i, n)
		if len(sh) != 4 {
			return nil, fmt.Errorf("%w: model %s: probability map shape %v", ErrInfer, card.Name, outs[0].Shape)
		}
		return decodeDBNet(data, int(sh[3]), int(sh[2]), s.thr, d.BoxThreshold, d.UnclipRatio), nil
	}
	return nil, fmt.Errorf("%w: model %s: decoder %s does not apply to video frames", ErrInfer, card.Name, d.Type)
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
	mean, inv := normalisation(in)
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
