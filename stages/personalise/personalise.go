// Package personalise is the personalise stage: one live input, many
// viewers, each with their own look, at an encode cost that grows with
// the distinct looks rather than with the viewers. It watches the
// pipeline's viewer bucket (JetStream key-value, see package viewers),
// groups the viewers by variant key, and adds to the running graph one
// branch per live variant (render -> encode -> HLS sink) that reads the
// frames it passes through; a variant's branch is removed when its last
// viewer leaves. Every variant shares the pipeline's decode and inference
// (the detections on the frames it passes). Each viewer's manifest entry
// says which variant they see, where its playlist is, and why not when
// they see none. An optional second input is the encoded audio, shared
// by every variant whose viewers keep the sound.
package personalise

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
	"github.com/avflow/avflow/pipeline/viewers"
	"github.com/avflow/avflow/stages/render"
)

// ErrNoBus is the stage's error on a run without NATS.
var ErrNoBus = errors.New("personalise: the viewer bucket needs NATS JetStream: run with transport auto (the default) or nats")

func init() {
	pipeline.MustRegister(pipeline.Spec{
		Kind:    "personalise",
		Summary: "One live input, many viewers: a render+encode+HLS branch per distinct look, added and removed as viewers come and go (profiles in the NATS KV bucket avflow-viewers-<pipeline>).",
		Params: []pipeline.Param{
			{Name: "max_variants", Type: pipeline.TypeInt, Default: 8, Doc: "most variants (render+encode branches) at once; a viewer whose look would need one more is refused, with the reason in their manifest entry"},
			{Name: "out", Type: pipeline.TypeString, Default: "out", Doc: "folder of the renditions: <out>/<pipeline>/<variant>/index.m3u8 (relative to the pipeline file)"},
			{Name: "playlist_url", Type: pipeline.TypeString, Doc: "what the manifest gives viewers for a variant's playlist, with {pipeline} and {variant} replaced, e.g. http://127.0.0.1:8080/{pipeline}/{variant}/index.m3u8 (avflow run --serve-hls); default: the playlist's path"},
			{Name: "push", Type: pipeline.TypeString, Doc: "also push each variant to this URL, with {pipeline} and {variant} replaced, e.g. rtmp://live.example/app/{variant} or srt://host:9000?streamid={variant}"},
			{Name: "height", Type: pipeline.TypeInt, Default: 480, Doc: "rendition height (a viewer's quality.max_height may lower it; never above the source's)"},
			{Name: "codec", Type: pipeline.TypeString, Default: "libx264", Doc: "video encoder of the renditions"},
			{Name: "preset", Type: pipeline.TypeString, Default: "veryfast", Doc: "encoder preset"},
			{Name: "bitrate", Type: pipeline.TypeString, Default: "1200k", Doc: "rendition bitrate (a viewer's quality.max_bitrate may lower it)"},
			{Name: "gop", Type: pipeline.TypeDuration, Default: "2s", Doc: "keyframe interval of every variant, counted from the stream's time 0 so that every variant has its keyframes on the same frames; a new variant starts at the next one"},
			{Name: "hls_time", Type: pipeline.TypeDuration, Default: "2s", Doc: "HLS segment length (a multiple of gop)"},
			{Name: "hls_list_size", Type: pipeline.TypeInt, Default: 6, Doc: "HLS segments kept in each playlist (older ones are deleted)"},
			{Name: "follow", Type: pipeline.TypeString, Default: "face", Doc: "label of the detections reframing follows (empty: any; none: no reframing, crops stay in the middle)"},
			{Name: "look_ahead", Type: pipeline.TypeDuration, Default: render.DefaultLookAhead.String(), Doc: "how far ahead reframing looks (render's look_ahead): the latency it adds to every variant, at most 2s; 0: none"},
			{Name: "font", Type: pipeline.TypeString, Doc: "TrueType font of text overlays (default: render's)"},
		},
		MinInputs: 1, MaxInputs: 2,
		Ports: func(_ pipeline.Params, in []pipeline.PortType) ([]pipeline.Port, error) {
			if in[0].Kind != envelope.KindFrame || in[0].Media != envelope.MediaVideo {
				return nil, fmt.Errorf("personalise takes decoded video frames (with the detections reframing and privacy use), got %s", in[0])
			}
			ports := []pipeline.Port{{Name: "out", Type: in[0], Unread: pipeline.UnreadBranches}}
			if len(in) == 2 {
				if in[1].Kind != envelope.KindPacket || in[1].Media != envelope.MediaAudio {
					return nil, fmt.Errorf("personalise's second input is the encoded audio every variant that keeps audio shares (an encode stage's output, e.g. aac), got %s", in[1])
				}
				ports = append(ports, pipeline.Port{Name: "audio", Type: in[1], Unread: pipeline.UnreadBranches})
			}
			return ports, nil
		},
		Check:   check,
		Control: true,
		Buckets: func(_ pipeline.Params, name string) []string { return []string{viewers.Bucket(name)} },
		New:     newStage,
	})
}

func check(p pipeline.Params, _ string) error {
	switch {
	case p.Int("max_variants") < 1:
		return fmt.Errorf("personalise: max_variants must be at least 1, got %d", p.Int("max_variants"))
	case p.Int("height") < 16:
		return fmt.Errorf("personalise: height must be at least 16, got %d", p.Int("height"))
	case p.Duration("gop") <= 0:
		return fmt.Errorf("personalise: gop must be more than 0, got %s", p.Duration("gop"))
	case p.Duration("hls_time") < p.Duration("gop"):
		return fmt.Errorf("personalise: hls_time %s is shorter than gop %s: a segment starts on a keyframe", p.Duration("hls_time"), p.Duration("gop"))
	}
	if err := render.CheckLookAhead(p.Duration("look_ahead")); err != nil {
		return fmt.Errorf("personalise: %w", err)
	}
	return nil
}

func newStage(ctx context.Context, in pipeline.Init) (stage.Stage, error) {
	if in.Bus == nil {
		return nil, ErrNoBus
	}
	if in.Graph == nil {
		return nil, fmt.Errorf("personalise: the run cannot add branches to its graph")
	}
	open, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := viewers.Open(open, in.Bus, in.Pipeline)
	if err != nil {
		return nil, fmt.Errorf("personalise: %w", err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	s := &Stage{in: in, store: st, log: in.Log, started: make(chan struct{}), stop: stop, done: make(chan struct{}),
		hud: make(chan hudCheck, 1), failures: make(chan branchFailure, 64)}
	s.state = newState(s)
	go s.watch(runCtx)
	return s, nil
}

// Stage is the personalise stage: it passes frames to the variants'
// branches and manages the branches (watch).
type Stage struct {
	stage.Base
	in    pipeline.Init
	store *viewers.Store
	log   *slog.Logger
	state *state

	startOnce sync.Once
	started   chan struct{} // closed at the first frame: the graph runs
	stop      context.CancelFunc
	done      chan struct{}
	hud       chan hudCheck // a frame's HUD for the watcher to try the templates on
	failures  chan branchFailure
	frames    atomic.Int64

	variants, refused, added, removed atomic.Int64
	primed                            atomic.Int64 // audio packets before time 0, dropped
	forged                            atomic.Int64 // manifest writes by others, undone
}

// noPTS is FFmpeg's AV_NOPTS_VALUE.
const noPTS = -1 << 63

// branchFailure is a variant's stage that failed (AddBranch's onFail).
type branchFailure struct {
	stage string
	err   error
}

// onFail hears that a stage of a variant's branch failed; the watcher
// removes the variant. It must not block: the failed stage's goroutine
// calls it.
func (s *Stage) onFail(stage string, err error) {
	select {
	case s.failures <- branchFailure{stage, err}:
	default:
		s.log.Error("a variant's stage failed, and the stage could not be told (too many failures at once)", "stage", stage, "error", err)
	}
}

// hudCheck is a frame's template data, for the watcher to check the
// variants' text overlays against.
type hudCheck struct {
	frame viewers.Frame
	at    time.Duration
}

// Status counts the variants live now, and those added, removed and
// refused so far.
func (s *Stage) Status() stage.Status {
	return stage.Status{Counts: map[string]int64{"variants": s.variants.Load(), "variants_added": s.added.Load(),
		"variants_removed": s.removed.Load(), "viewers_refused": s.refused.Load(), "audio_priming_dropped": s.primed.Load(), "manifest_forged": s.forged.Load()}}
}

// Process passes the frames on to the variants' branches.
func (s *Stage) Process(_ context.Context, in stage.Batch) (stage.Batch, error) {
	s.startOnce.Do(func() { close(s.started) })
	out := make(stage.Batch, 0, len(in))
	for _, e := range in {
		if e.Input == 1 {
			// An encoder's priming packets at the stream's start have
			// negative times, which would make the muxers of the variants
			// that start with the stream shift all their timestamps (by
			// 1024 samples for AAC), and only theirs: their segments would
			// no longer line up with the others'. A live stream loses
			// nothing worth hearing by starting at time 0.
			if e.PTS < 0 && e.PTS != noPTS {
				s.primed.Add(1)
				continue
			}
			a := e.Pass()
			a.Port = "audio"
			out = append(out, a)
			continue
		}
		if n := s.frames.Add(1); n%15 == 1 {
			s.offerHUD(e)
		}
		out = append(out, e.Pass())
	}
	return out, nil
}

// offerHUD hands the watcher a frame's HUD now and then, if it is free.
func (s *Stage) offerHUD(e *stage.Msg) {
	var at time.Duration
	if e.TimeBase.Den > 0 {
		at = time.Duration(float64(e.PTS) * float64(e.TimeBase.Num) / float64(e.TimeBase.Den) * float64(time.Second))
	}
	select {
	case s.hud <- hudCheck{frame: viewers.FrameOf(e.Detections), at: at}:
	default:
	}
}

// EndInput: the input ended; the branches end with this stage's output.
func (s *Stage) EndInput(context.Context, int) (stage.Batch, error) {
	s.startOnce.Do(func() { close(s.started) })
	return nil, nil
}

// Close stops watching the bucket and marks the viewers' entries ended.
func (s *Stage) Close() error {
	s.stop()
	<-s.done
	return nil
}
