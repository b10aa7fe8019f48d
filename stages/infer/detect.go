package infer

import (
	"fmt"
	"os"
	"runtime"
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

// DetectBatch runs the model on several frames, once for each of the
// detector's views (its scalers). Frames that make tensors of the same
// size go through the model together when it is Batchable. What several
// views find in one place is merged into the box covering all of them.
func (s *Detector) DetectBatch(frames []*astiav.Frame) ([][]box, error) {
	var res [][]box
	for i, p := range s.views {
		r, err := s.detectView(p, frames)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			res = r
			continue
		}
		for j := range res {
			res[j] = append(res[j], r[j]...)
		}
	}
	if len(s.views) > 1 {
		for j := range res {
			res[j] = union(res[j], nmsOr(s.m.card.Decoder.NMSIoU))
		}
	}
	return res, nil
}

// detectView runs the model on frames as one view p shows them.
func (s *Detector) detectView(p *preprocessor, frames []*astiav.Frame) ([][]box, error) {
	res := make([][]box, 0, len(frames))
	for start := 0; start < len(frames); {
		r, err := s.prepare(p, frames[start:], s.buf)
		if err != nil {
			return nil, err
		}
		s.buf = r.buf
		s.execute(r)
		if res, err = s.finish(r, res); err != nil {
			return nil, err
		}
		start += len(r.frames)
	}
	return res, nil
}

// modelRun is one run of the model: frames that make tensors of one size,
// preprocessed into buf, and, once executed, the outputs.
type modelRun struct {
	frames []*astiav.Frame
	buf    []float32
	shape  []int64
	geos   []geometry
	tw, th int
	outs   []onnx.Tensor
	err    error
	done   chan struct{} // closed when the run has executed
}

// prepare preprocesses with p the leading frames that fit one run (as many
// of the same tensor size as the model takes) into buf, grown if needed.
func (s *Detector) prepare(p *preprocessor, frames []*astiav.Frame, buf []float32) (*modelRun, error) {
	card := s.m.card
	ch := 3
	if card.Inputs[0].Color == "GRAY" {
		ch = 1
	}
	tw, th, _, _, err := p.size(frames[0].Width(), frames[0].Height())
	if err != nil {
		return nil, fmt.Errorf("%w: model %s: %w", ErrInfer, card.Name, err)
	}
	n := 1
	for s.Batchable() && n < len(frames) {
		w, h, _, _, err := p.size(frames[n].Width(), frames[n].Height())
		if err != nil || w != tw || h != th {
			break
		}
		n++
	}
	per := ch * tw * th
	if cap(buf) < n*per {
		buf = make([]float32, n*per)
	}
	r := &modelRun{frames: frames[:n], buf: buf[:n*per], geos: make([]geometry, n), tw: tw, th: th}
	for i := 0; i < n; i++ {
		if r.shape, r.geos[i], err = p.fill(frames[i], r.buf[i*per:(i+1)*per]); err != nil {
			return nil, err
		}
	}
	r.shape[0] = int64(n)
	return r, nil
}

// execute runs the model on a prepared run and waits for it.
func (s *Detector) execute(r *modelRun) {
	s.start(r)
	<-r.done
}

// start hands a prepared run to the detector's model thread; r.done is
// closed when it has run. The model always runs on that one OS thread:
// ONNX Runtime's calling thread takes part in every run and keeps
// per-thread scratch buffers, and goroutines move between threads, which
// with a second intra-op thread cost more than the preprocessing.
func (s *Detector) start(r *modelRun) {
	s.once.Do(func() {
		s.runs = make(chan *modelRun)
		go func() {
			runtime.LockOSThread()
			for r := range s.runs {
				r.outs, r.err = s.m.sess.Run([]onnx.Tensor{{Shape: r.shape, Data: r.buf}}, nil)
				if r.err != nil {
					r.err = fmt.Errorf("%w: model %s: %w", ErrInfer, s.m.card.Name, r.err)
				}
				close(r.done)
			}
		}()
	})
	r.done = make(chan struct{})
	s.runs <- r
}

// finish decodes an executed run's outputs (valid until the session's
// next run) into frame-normalised results, appended to res.
func (s *Detector) finish(r *modelRun, res [][]box) ([][]box, error) {
	if r.err != nil {
		return res, r.err
	}
	card := s.m.card
	n := len(r.frames)
	for i := 0; i < n; i++ {
		dets, err := s.decode(r.outs, i, n, r.tw, r.th, s.thr)
		if err != nil {
			return res, err
		}
		if card.Decoder.Type != "classifier" {
			dets = inFrame(dets, r.geos[i])
		}
		s.label(dets)
		if s.rec != nil {
			for j := range dets {
				if dets[j].Text, _, err = s.rec.read(r.frames[i], dets[j]); err != nil {
					return res, err
				}
			}
		}
		res = append(res, dets)
	}
	return res, nil
}

// label names the model and class of each box.
func (s *Detector) label(dets []box) {
	card := s.m.card
	for j := range dets {
		dets[j].Model = card.Name
		if c := int(dets[j].Class); c >= 0 && c < len(card.Labels) {
			dets[j].Label = card.Labels[c]
		}
	}
}

// inFrame maps boxes from the model's input to the frame, dropping those
// wholly in the padding around it (reflections of what is inside).
func inFrame(dets []box, g geometry) []box {
	out := dets[:0]
	for _, d := range dets {
		if d = g.toFrame(d); d.X2 > d.X1 && d.Y2 > d.Y1 {
			out = append(out, d)
		}
	}
	return out
}

// item returns image i of n from a batched output.
func item(t onnx.Tensor, i, n int) ([]float32, []int64) {
	per := len(t.Data) / n
	shape := append([]int64{1}, t.Shape[1:]...)
	return t.Data[i*per : (i+1)*per], shape
}

// decode turns the outputs of image i of a batch of n into boxes.
func (s *Detector) decode(outs []onnx.Tensor, i, n, tw, th int, thr float32) ([]box, error) {
	card := s.m.card
	d := card.Decoder
	switch d.Type {
	case "ultraface":
		scores, _ := item(outs[0], i, n)
		boxes, _ := item(outs[1], i, n)
		return decodeUltraFace(scores, boxes, thr, nmsOr(d.NMSIoU)), nil
	case "yolo":
		data, shape := item(outs[0], i, n)
		return decodeYOLO(data, shape, d.Layout, tw, th, thr, nmsOr(d.NMSIoU)), nil
	case "classifier":
		data, _ := item(outs[0], i, n)
		return decodeClassifier(data, max(1, d.TopK)), nil
	case "dbnet":
		data, sh := item(outs[0], i, n)
		if len(sh) != 4 {
			return nil, fmt.Errorf("%w: model %s: probability map shape %v", ErrInfer, card.Name, outs[0].Shape)
		}
		return decodeDBNet(data, int(sh[3]), int(sh[2]), thr, d.BoxThreshold, d.UnclipRatio), nil
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
		return nil, fmt.Errorf("%w: recognizer %s: %w", ErrInfer, m.card.Name, err)
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
	if err := r.load(f); err != nil {
		return "", 0, err
	}
	return r.readLoaded(b)
}

// load converts f to the BGR frame readLoaded crops boxes from.
func (r *recognizer) load(f *astiav.Frame) error {
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
			return fmt.Errorf("%w: recognizer scaler: %w", ErrInfer, err)
		}
		r.key = key
	}
	r.bgr.Unref()
	r.bgr.SetWidth(fw)
	r.bgr.SetHeight(fh)
	r.bgr.SetPixelFormat(astiav.PixelFormatBgr24)
	if err := r.bgr.AllocBuffer(1); err != nil {
		return err
	}
	return r.sws.ScaleFrame(f, r.bgr)
}

// readLoaded reads the text in box b of the frame load converted.
func (r *recognizer) readLoaded(b box) (string, float32, error) {
	in := r.m.card.Inputs[0]
	H := int(in.Shape[2])
	fw, fh := r.bgr.Width(), r.bgr.Height()
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
		return "", 0, fmt.Errorf("%w: recognizer %s: %w", ErrInfer, r.m.card.Name, err)
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
	if s.runs != nil {
		close(s.runs)
		s.runs = nil
	}
	for _, p := range s.views {
		p.close()
	}
	if s.rec != nil {
		s.rec.close()
	}
	if s.m.sess == nil { // a remote detector: the model runs in the service
		return nil
	}
	return s.m.sess.Close()
}
