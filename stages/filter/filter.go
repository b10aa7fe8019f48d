// Package filter is the filter stage: an FFmpeg filter graph (scale, fps,
// format, crop, drawtext, aresample...) applied to raw frames.
package filter

import (
	"context"
	"fmt"

	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/envelope"
)

func init() {
	pipeline.MustRegister(pipeline.Spec{
		Kind:    "filter",
		Summary: "Apply an FFmpeg filter graph with one input and one output to raw video or audio frames.",
		Params: []pipeline.Param{
			{Name: "graph", Type: pipeline.TypeString, Required: true, Doc: `FFmpeg filter graph, e.g. "scale=1280:720" or "fps=30,format=yuv420p" (audio: "aresample=48000")`},
			{Name: "threads", Type: pipeline.TypeInt, Default: 0, Doc: "filter graph threads (0: FFmpeg's default)"},
		},
		MinInputs: 1, MaxInputs: 1,
		Ports: func(_ pipeline.Params, in []pipeline.PortType) ([]pipeline.Port, error) {
			if in[0].Kind != envelope.KindFrame {
				return nil, fmt.Errorf("filter takes raw frames, got %s: put a decode stage before it", in[0])
			}
			return []pipeline.Port{{Name: "out", Type: in[0]}}, nil
		},
		New: func(_ context.Context, in pipeline.Init) (pipeline.Stage, error) {
			return &Filter{g: codecs.NewGraph(in.Params.String("graph"), in.Params.Int("threads"))}, nil
		},
	})
}

// Filter runs one filter graph.
type Filter struct {
	g     *codecs.Graph
	media envelope.Media
	tb    envelope.Rational
	rate  envelope.Rational
}

// Process filters frames.
func (f *Filter) Process(_ context.Context, in pipeline.Batch) (pipeline.Batch, error) {
	var out pipeline.Batch
	for _, e := range in {
		fr, err := codecs.FrameOf(e)
		if err != nil {
			return out, err
		}
		f.media, f.tb = e.Media, e.TimeBase
		if e.Video != nil {
			f.rate = e.Video.FrameRate
		}
		res, err := f.g.Push(fr, e.Media, codecs.AVRat(e.TimeBase), codecs.AVRat(f.rate))
		out = append(out, res...)
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// Flush drains frames the graph holds back.
func (f *Filter) Flush(context.Context) (pipeline.Batch, error) {
	return f.g.Push(nil, f.media, codecs.AVRat(f.tb), codecs.AVRat(f.rate))
}

// Close frees the graph.
func (f *Filter) Close() error { f.g.Close(); return nil }
