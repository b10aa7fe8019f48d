package infer

import (
	"context"
	"fmt"
	"time"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
	"github.com/avflow/avflow/stages/infer/onnx"
)

// VAD runs Silero VAD over an audio stream: audio is resampled to the
// model's rate (swresample through an aresample filter), cut into windows,
// and the speech probability is turned into segments with hysteresis.
// Audio frames pass through unchanged on "out"; each finished speech
// segment is published on "meta".
type VAD struct {
	stage.Base
	in      pipeline.Init
	m       *loaded
	conv    *codecs.Graph
	rate    int
	window  int
	context int
	thr     float32
	minSp   time.Duration
	minSil  time.Duration

	pending  []float32 // resampled samples not yet in a window
	ctxBuf   []float32 // the last context samples of the previous window
	state    []float32
	input    []float32
	samples  int64   // samples consumed into windows
	start    float64 // media time of the first sample, seconds
	started  bool
	inSpeech bool
	segStart float64
	silence  float64 // when prob first fell below the low threshold, -1 if not
	Segments []envelope.Segment
	tb       envelope.Rational
}

// Status reports where the model runs.
func (v *VAD) Status() stage.Status { return stage.Status{Device: v.m.device(v.in)} }

func newVAD(in pipeline.Init, m *loaded) (stage.Stage, error) {
	a := m.card.Audio
	if a == nil || a.SampleRate <= 0 || a.Window <= 0 {
		m.sess.Close()
		return nil, fmt.Errorf("%w: card %s: an audio model needs audio.sample_rate and audio.window", ErrInfer, m.card.Name)
	}
	d := m.card.Decoder
	v := &VAD{in: in, m: m, rate: a.SampleRate, window: a.Window, context: a.Context,
		thr: float32(in.Params.Float("threshold")), minSp: d.MinSpeech, minSil: d.MinSilence, silence: -1}
	if v.thr == 0 {
		v.thr = d.Threshold
	}
	v.conv = codecs.NewGraph(fmt.Sprintf("aresample=%d,aformat=sample_fmts=flt:channel_layouts=mono", a.SampleRate), 1)
	v.ctxBuf = make([]float32, a.Context)
	v.state = make([]float32, 2*1*128)
	v.input = make([]float32, a.Context+a.Window)
	return v, nil
}

// Process resamples and scores the audio; frames pass through.
func (v *VAD) Process(_ context.Context, in stage.Batch) (stage.Batch, error) {
	var out stage.Batch
	for _, e := range in {
		f, err := codecs.FrameOf(e)
		if err != nil {
			return out, err
		}
		if !v.started && e.PTS != astiav.NoPtsValue {
			v.start = float64(e.PTS) * e.TimeBase.Float()
			v.started = true
		}
		v.tb = e.TimeBase
		conv, err := v.conv.Push(f, envelope.MediaAudio, codecs.AVRat(e.TimeBase), astiav.NewRational(0, 1))
		if err != nil {
			return out, err
		}
		if out, err = v.consume(out, conv); err != nil {
			return out, err
		}
		cp := e.Pass()
		cp.Port = "out"
		out = append(out, cp)
	}
	return out, nil
}

func (v *VAD) consume(out stage.Batch, conv []*stage.Msg) (stage.Batch, error) {
	for _, c := range conv {
		cf, _ := codecs.FrameOf(c)
		pl, _ := codecs.Plane(cf, 0, 1)
		n := cf.NbSamples()
		for i := 0; i < n; i++ {
			v.pending = append(v.pending, float32frombits(pl[4*i:4*i+4]))
		}
		c.Release()
	}
	for len(v.pending) >= v.window {
		p, err := v.score(v.pending[:v.window])
		if err != nil {
			return out, err
		}
		v.pending = v.pending[v.window:]
		t := v.start + float64(v.samples)/float64(v.rate)
		v.samples += int64(v.window)
		if seg, ok := v.step(p, t); ok {
			out = append(out, v.segmentEnvelope(seg))
		}
	}
	return out, nil
}

// score runs the model on one window, carrying context and state.
func (v *VAD) score(win []float32) (float32, error) {
	copy(v.input, v.ctxBuf)
	copy(v.input[v.context:], win)
	outs, err := v.m.sess.Run([]onnx.Tensor{
		{Shape: []int64{1, int64(len(v.input))}, Data: v.input},
		{Shape: []int64{2, 1, 128}, Data: v.state},
	}, map[string][]int64{"sr": {int64(v.rate)}})
	if err != nil {
		return 0, fmt.Errorf("%w: model %s: %w", ErrInfer, v.m.card.Name, err)
	}
	copy(v.state, outs[1].Data)
	if v.context > 0 {
		copy(v.ctxBuf, win[len(win)-v.context:])
	}
	return outs[0].Data[0], nil
}

// step applies hysteresis (start at thr, end below thr-0.15 held for
// min_silence) to the probability of the window starting at t.
func (v *VAD) step(p float32, t float64) (envelope.Segment, bool) {
	low := v.thr - 0.15
	switch {
	case !v.inSpeech && p >= v.thr:
		v.inSpeech, v.segStart, v.silence = true, t, -1
	case v.inSpeech && p < low:
		if v.silence < 0 {
			v.silence = t
		}
		if t+float64(v.window)/float64(v.rate)-v.silence >= v.minSil.Seconds() {
			seg := envelope.Segment{Start: v.segStart, End: v.silence, Label: "speech"}
			v.inSpeech, v.silence = false, -1
			if seg.End-seg.Start >= v.minSp.Seconds() {
				v.Segments = append(v.Segments, seg)
				return seg, true
			}
		}
	case v.inSpeech && p >= low:
		v.silence = -1
	}
	return envelope.Segment{}, false
}

func (v *VAD) segmentEnvelope(s envelope.Segment) *stage.Msg {
	return &stage.Msg{Port: "meta", Envelope: envelope.Envelope{Kind: envelope.KindData, Media: envelope.MediaAudio, Segments: []envelope.Segment{s},
		TimeBase: envelope.Rational{Num: 1, Den: 1000}, PTS: int64(s.Start * 1000), DTS: int64(s.Start * 1000),
		Meta: map[string]string{"model": v.m.card.Name}}}
}

// Flush scores what is left and closes an open segment at the end of the stream.
func (v *VAD) Flush(context.Context) (stage.Batch, error) {
	conv, err := v.conv.Push(nil, envelope.MediaAudio, astiav.NewRational(1, v.rate), astiav.NewRational(0, 1))
	if err != nil {
		return nil, err
	}
	out, err := v.consume(nil, conv)
	if err != nil {
		return out, err
	}
	if v.inSpeech {
		end := v.start + float64(v.samples)/float64(v.rate)
		if v.silence >= 0 {
			end = v.silence
		}
		seg := envelope.Segment{Start: v.segStart, End: end, Label: "speech"}
		v.inSpeech = false
		if seg.End-seg.Start >= v.minSp.Seconds() {
			v.Segments = append(v.Segments, seg)
			out = append(out, v.segmentEnvelope(seg))
		}
	}
	return out, nil
}

// Close frees the model and the resampler.
func (v *VAD) Close() error {
	v.conv.Close()
	return v.m.sess.Close()
}
