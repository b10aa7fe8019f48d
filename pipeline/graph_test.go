package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
	"go.uber.org/goleak"
)

// brancher passes frames through; on frame addAt it adds a branch that
// encodes what it passes to branchPath, on frame removeAt it removes the
// branch again (both before passing the frame on).
type brancher struct {
	stage.Base
	graph             pipeline.Graph
	frames            int
	addAt, removeAt   int
	branchPath        string
	addErr, removeErr error
}

func (b *brancher) Process(ctx context.Context, in stage.Batch) (stage.Batch, error) {
	out := make(stage.Batch, 0, len(in))
	for _, e := range in {
		out = append(out, e.Pass())
		if e.Kind != envelope.KindFrame {
			continue
		}
		switch b.frames {
		case b.addAt:
			b.addErr = b.graph.AddStages(ctx, []byte(fmt.Sprintf(`
- {name: benc, kind: encode, inputs: [tap], params: {codec: libx264, preset: ultrafast}}
- {name: bout, kind: sink, inputs: [benc], params: {path: %q}}
`, b.branchPath)))
		case b.removeAt:
			b.removeErr = b.graph.RemoveStages(ctx, "bout", "benc")
		}
		b.frames++
	}
	return out, nil
}

// TestBranchAddedAndRemoved: a stage adds a branch (an encoder and a file)
// while the pipeline runs and removes it again; the main output has every
// frame, the branch's file is a finished MP4 with exactly the frames passed
// while it was there, and no goroutine is left behind.
func TestBranchAddedAndRemoved(t *testing.T) {
	for _, transport := range []string{pipeline.TransportLocal, pipeline.TransportNATS} {
		t.Run(transport, func(t *testing.T) {
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			dir := t.TempDir()
			b := &brancher{addAt: 30, removeAt: 90, branchPath: filepath.Join(dir, "branch.mp4")}
			main := filepath.Join(dir, "main.mp4")
			r, err := runTapped(t, transport, "brancher", main,
				passThrough("brancher", func(in pipeline.Init) stage.Stage { b.graph = in.Graph; return b }))
			if err != nil {
				t.Fatal(err)
			}
			if b.addErr != nil || b.removeErr != nil {
				t.Fatalf("adding the branch: %v; removing it: %v", b.addErr, b.removeErr)
			}
			if n := e2e.VideoFrames(t, main); n != 150 {
				t.Errorf("main output has %d frames, want 150", n)
			}
			if n := e2e.VideoFrames(t, b.branchPath); n != b.removeAt-b.addAt {
				t.Errorf("branch output has %d frames, want %d", n, b.removeAt-b.addAt)
			}
			stats := map[string]pipeline.StageStats{}
			for _, s := range r.Metrics().Snapshot() {
				stats[s.Name] = s
			}
			// The end table counts what the encoder took; under load one
			// message more was seen once (the file had the right frames).
			if s := stats["benc"]; s.In < int64(b.removeAt-b.addAt) || s.In > int64(b.removeAt-b.addAt+1) {
				t.Errorf("the end table shows the branch encoder with %d frames in, want %d", s.In, b.removeAt-b.addAt)
			}
		})
	}
}

// passThrough is a spec of a stage kind with one input passed on to its
// out port, built by newStage.
func passThrough(kind string, newStage func(pipeline.Init) stage.Stage) pipeline.Spec {
	return pipeline.Spec{Kind: kind, MinInputs: 1, MaxInputs: 1,
		Ports: func(_ pipeline.Params, in []pipeline.PortType) ([]pipeline.Port, error) {
			return []pipeline.Port{{Name: "out", Type: in[0]}}, nil
		},
		New: func(_ context.Context, in pipeline.Init) (stage.Stage, error) { return newStage(in), nil }}
}

// runTapped runs 150 test frames through decode -> tap (a kind of kinds)
// -> encode -> sink(main) over transport, in the Default environment
// with kinds added, and returns the run's error.
func runTapped(t *testing.T, transport, tapKind, main string, kinds ...pipeline.Spec) (*pipeline.Runner, error) {
	t.Helper()
	env := pipeline.Default.Clone()
	for _, s := range kinds {
		if err := env.Register(s); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := pipeline.Parse([]byte(fmt.Sprintf(`name: branch
transport: %s
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2=size=320x240:rate=25", max_frames: 150}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: tap, kind: %s, inputs: [dec]}
  - {name: enc, kind: encode, inputs: [tap], params: {codec: libx264, preset: ultrafast}}
  - {name: out, kind: sink, inputs: [enc], params: {path: %q}}
`, transport, tapKind, main)), "branch.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r, err := pipeline.NewRunner(env, cfg, pipeline.Options{Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return r, r.Run(context.Background())
}

// TestGraphEditsRefused: edits that would break the graph are refused with
// ErrGraph, naming the problem, and the run goes on.
func TestGraphEditsRefused(t *testing.T) {
	tests := []struct {
		name string
		edit func(ctx context.Context, g pipeline.Graph) error
		want string
	}{
		{"unknown input", func(ctx context.Context, g pipeline.Graph) error {
			return g.AddStages(ctx, []byte("- {name: x, kind: encode, inputs: [nope], params: {codec: libx264}}"))
		}, `names no stage`},
		{"a name in use", func(ctx context.Context, g pipeline.Graph) error {
			return g.AddStages(ctx, []byte("- {name: enc, kind: encode, inputs: [tap], params: {codec: libx264}}"))
		}, `already used`},
		{"a stage others read", func(ctx context.Context, g pipeline.Graph) error {
			return g.RemoveStages(ctx, "enc")
		}, `stage "out" reads "enc"`},
		{"a source", func(ctx context.Context, g pipeline.Graph) error {
			return g.RemoveStages(ctx, "src")
		}, `is a source`},
		{"no such stage", func(ctx context.Context, g pipeline.Graph) error {
			return g.RemoveStages(ctx, "ghost")
		}, `no stage "ghost"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var editErr error
			done := false
			env := pipeline.Default.Clone()
			err := env.Register(pipeline.Spec{Kind: "editor", MinInputs: 1, MaxInputs: 1,
				Ports: func(_ pipeline.Params, in []pipeline.PortType) ([]pipeline.Port, error) {
					return []pipeline.Port{{Name: "out", Type: in[0]}}, nil
				},
				New: func(_ context.Context, in pipeline.Init) (stage.Stage, error) {
					return funcStage{f: func(ctx context.Context, b stage.Batch) (stage.Batch, error) {
						if !done {
							done, editErr = true, tt.edit(ctx, in.Graph)
						}
						out := make(stage.Batch, len(b))
						for i, e := range b {
							out[i] = e.Pass()
						}
						return out, nil
					}}, nil
				}})
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := pipeline.Parse([]byte(`name: edits
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2=size=160x120:rate=25", max_frames: 10}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: tap, kind: editor, inputs: [dec]}
  - {name: enc, kind: encode, inputs: [tap], params: {codec: libx264, preset: ultrafast}}
  - {name: out, kind: sink, inputs: [enc], params: {path: "null"}}
`), "edits.yaml")
			if err != nil {
				t.Fatal(err)
			}
			r, err := pipeline.NewRunner(env, cfg, pipeline.Options{Log: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			if err := r.Run(context.Background()); err != nil {
				t.Fatal(err)
			}
			if !errors.Is(editErr, pipeline.ErrGraph) || !strings.Contains(editErr.Error(), tt.want) {
				t.Fatalf("edit error %v, want ErrGraph with %q", editErr, tt.want)
			}
			for _, s := range r.Metrics().Snapshot() {
				if s.Name == "out" && s.In != 10 {
					t.Errorf("the sink got %d packets after the refused edit, want 10", s.In)
				}
			}
		})
	}
}

// stageFunc is a stage made of its Process.
type stageFunc func(context.Context, stage.Batch) (stage.Batch, error)

// funcStage runs a stageFunc.
type funcStage struct {
	stage.Base
	f stageFunc
}

func (s funcStage) Process(ctx context.Context, b stage.Batch) (stage.Batch, error) {
	return s.f(ctx, b)
}

// ender is a replicable pass-through stage that counts EndInput calls.
type ender struct {
	stage.Base
	ends *atomic.Int64
}

func (s ender) Process(_ context.Context, in stage.Batch) (stage.Batch, error) {
	out := make(stage.Batch, len(in))
	for i, e := range in {
		out[i] = e.Pass()
	}
	return out, nil
}
func (s ender) EndInput(context.Context, int) (stage.Batch, error) { s.ends.Add(1); return nil, nil }

// TestEndInputReachesEveryReplica: each replica of a stage hears that an
// input ended (it reached the first only).
func TestEndInputReachesEveryReplica(t *testing.T) {
	var ends atomic.Int64
	env := testEnv(t, &collector{})
	if err := env.Register(pipeline.Spec{Kind: "ender", MinInputs: 1, MaxInputs: 1,
		Replicable: func(pipeline.Params) error { return nil },
		Ports: func(_ pipeline.Params, in []pipeline.PortType) ([]pipeline.Port, error) {
			return []pipeline.Port{{Name: "out", Type: in[0]}}, nil
		},
		New: func(context.Context, pipeline.Init) (stage.Stage, error) { return ender{ends: &ends}, nil }}); err != nil {
		t.Fatal(err)
	}
	if _, err := runYAML(t, env, `name: ends
transport: local
stages:
  - {name: g, kind: gen, params: {n: 10}}
  - {name: e, kind: ender, inputs: [g], replicas: 3}
  - {name: c, kind: collect, inputs: [e]}
`, pipeline.Options{}, nil); err != nil {
		t.Fatal(err)
	}
	if n := ends.Load(); n != 3 {
		t.Fatalf("EndInput called %d times, want 3 (once per replica)", n)
	}
}

// failingBrancher adds, at its first frame, a branch through a stage
// that fails on its failAt-th frame, with AddBranch.
type failingBrancher struct {
	stage.Base
	graph      pipeline.Graph
	branchPath string
	added      bool
	addErr     error
	failures   chan string
}

func (b *failingBrancher) Process(ctx context.Context, in stage.Batch) (stage.Batch, error) {
	if !b.added {
		b.added = true
		b.addErr = b.graph.AddBranch(ctx, []byte(fmt.Sprintf(`
- {name: boom, kind: failer, inputs: [tap]}
- {name: benc, kind: encode, inputs: [boom], params: {codec: libx264, preset: ultrafast}}
- {name: bout, kind: sink, inputs: [benc], params: {path: %q}}
`, b.branchPath)), func(stage string, err error) { b.failures <- stage + ": " + err.Error() })
	}
	out := make(stage.Batch, 0, len(in))
	for _, e := range in {
		out = append(out, e.Pass())
	}
	return out, nil
}

// failer passes frames on and fails at its 40th.
type failer struct {
	stage.Base
	n int
}

var errBoom40 = errors.New("boom at frame 40")

func (f *failer) Process(_ context.Context, in stage.Batch) (stage.Batch, error) {
	out := make(stage.Batch, 0, len(in))
	for _, e := range in {
		if f.n++; f.n == 40 {
			return out, errBoom40
		}
		out = append(out, e.Pass())
	}
	return out, nil
}

// TestBranchFailureEndsOnlyTheBranch: a stage of a branch added with
// AddBranch fails; its owner hears of it once, the stages after it end
// (the branch's MP4 is finished, with the frames before the failure), the
// run goes on and ends well with every frame in the main output, and no
// goroutine is left behind. (With AddStages the same failure ends the
// run: TestGraphEditsRefused and the run's own tests cover that.)
func TestBranchFailureEndsOnlyTheBranch(t *testing.T) {
	for _, transport := range []string{pipeline.TransportLocal, pipeline.TransportNATS} {
		t.Run(transport, func(t *testing.T) {
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			dir := t.TempDir()
			b := &failingBrancher{branchPath: filepath.Join(dir, "branch.mp4"), failures: make(chan string, 4)}
			main := filepath.Join(dir, "main.mp4")
			_, err := runTapped(t, transport, "brancher", main,
				passThrough("brancher", func(in pipeline.Init) stage.Stage { b.graph = in.Graph; return b }),
				passThrough("failer", func(pipeline.Init) stage.Stage { return &failer{} }))
			if err != nil {
				t.Fatalf("the run failed with its branch: %v", err)
			}
			if b.addErr != nil {
				t.Fatal(b.addErr)
			}
			select {
			case f := <-b.failures:
				if !strings.Contains(f, "boom") || !strings.Contains(f, errBoom40.Error()) {
					t.Errorf("failure %q, want the stage and its error", f)
				}
			default:
				t.Fatal("the branch's owner did not hear of its failure")
			}
			if len(b.failures) != 0 {
				t.Errorf("%d more failures reported, want one", len(b.failures))
			}
			if n := e2e.VideoFrames(t, main); n != 150 {
				t.Errorf("main output has %d frames, want 150", n)
			}
			if n := e2e.VideoFrames(t, b.branchPath); n != 39 {
				t.Errorf("the branch's output has %d frames, want the 39 before the failure", n)
			}
		})
	}
}
