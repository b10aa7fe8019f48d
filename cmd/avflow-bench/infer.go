package main

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"math/rand"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
	_ "github.com/avflow/avflow/stages/all"
	"github.com/avflow/avflow/stages/infer/model"
	"github.com/avflow/avflow/stages/infer/onnx"
	ort "github.com/yalue/onnxruntime_go"
)

type counter struct {
	stage.Base
	frames, meta atomic.Int64
}

func (c *counter) Process(_ context.Context, in stage.Batch) (stage.Batch, error) {
	for _, e := range in {
		if e.Kind == envelope.KindFrame {
			c.frames.Add(1)
		} else {
			c.meta.Add(1)
		}
	}
	return nil, nil
}

func runWithCounter(yaml string, transport string) (*counter, time.Duration, *pipeline.Metrics, error) {
	c := &counter{}
	env := pipeline.Default.Clone()
	_ = env.Register(pipeline.Spec{Kind: "count", MinInputs: 1, MaxInputs: -1,
		Ports: func(pipeline.Params, []pipeline.PortType) ([]pipeline.Port, error) { return nil, nil },
		New:   func(context.Context, pipeline.Init) (stage.Stage, error) { return c, nil }})
	cfg, err := pipeline.Parse([]byte(yaml), "bench.yaml")
	if err != nil {
		return nil, 0, nil, err
	}
	if err := env.Validate(cfg); err != nil {
		return nil, 0, nil, err
	}
	r, err := pipeline.NewRunner(env, cfg, pipeline.Options{Transport: transport, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, 0, nil, err
	}
	t0 := time.Now()
	if err := r.Run(context.Background()); err != nil {
		return nil, 0, nil, err
	}
	return c, time.Since(t0), r.Metrics(), nil
}

// bareORT is the peer: onnxruntime_go's own AdvancedSession with
// preallocated tensors, Run in a loop.
func bareORT(path string, threads, n int) (time.Duration, error) {
	if err := onnx.Init(); err != nil {
		return 0, err
	}
	in, err := ort.NewTensor(ort.NewShape(1, 3, 240, 320), make([]float32, 3*240*320))
	if err != nil {
		return 0, err
	}
	defer in.Destroy()
	for i, d := 0, in.GetData(); i < len(d); i++ {
		d[i] = rand.Float32()*2 - 1
	}
	scores, _ := ort.NewEmptyTensor[float32](ort.NewShape(1, 4420, 2))
	boxes, _ := ort.NewEmptyTensor[float32](ort.NewShape(1, 4420, 4))
	defer scores.Destroy()
	defer boxes.Destroy()
	so, _ := ort.NewSessionOptions()
	defer so.Destroy()
	_ = so.SetIntraOpNumThreads(threads)
	s, err := ort.NewAdvancedSession(path, []string{"input"}, []string{"scores", "boxes"}, []ort.Value{in}, []ort.Value{scores, boxes}, so)
	if err != nil {
		return 0, err
	}
	defer s.Destroy()
	_ = s.Run() // warm-up
	t0 := time.Now()
	for i := 0; i < n; i++ {
		if err := s.Run(); err != nil {
			return 0, err
		}
	}
	return time.Since(t0), nil
}

func inferBench(b *strings.Builder, bin, work string, rounds int, part string) {
	want := func(p string) bool { return part == "" || part == p }
	card, err := model.Lookup("ultraface-rfb-320")
	if err != nil {
		fail(err)
	}
	files, err := model.Pull(card, slog.Default())
	if err != nil {
		fail(err)
	}
	const n = 300
	if want("stage") {
		inferStage(b, files.Model, rounds, n)
	}
	if want("batch") {
		inferBatch(b)
	}
	// 3. Real-time streams of the privacy pipeline, and 4. RSS over a long run.
	if want("streams") {
		privacyStreams(b, bin, work)
	}
	if want("spin") {
		privacySpin(b, bin, rounds)
	}
	if want("rss") {
		privacyRSS(b, bin, work)
	}
}

// keeper holds on to decoded frames (a reference each) for a timed replay.
type keeper struct {
	stage.Base
	frames []*stage.Msg
}

func (k *keeper) Process(_ context.Context, in stage.Batch) (stage.Batch, error) {
	for _, e := range in {
		cp := *e
		e.Local = nil // keep the frame
		k.frames = append(k.frames, &cp)
	}
	return nil, nil
}

// inferStage times the infer stage on its own: frames decoded beforehand
// are passed to its Process one at a time, as the runner does, on one
// goroutine, like the bare loop.
func inferStage(b *strings.Builder, modelPath string, rounds, n int) {
	pairs, per := 4*rounds, n/2
	k := &keeper{}
	env := pipeline.Default.Clone()
	_ = env.Register(pipeline.Spec{Kind: "keep", MinInputs: 1, MaxInputs: 1,
		Ports: func(pipeline.Params, []pipeline.PortType) ([]pipeline.Port, error) { return nil, nil },
		New:   func(context.Context, pipeline.Init) (stage.Stage, error) { return k, nil }})
	cfg, err := pipeline.Parse([]byte(fmt.Sprintf(`name: frames
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2=size=640x480:rate=30", max_frames: %d}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: k, kind: keep, inputs: [dec]}
`, n)), "frames.yaml")
	if err != nil {
		fail(err)
	}
	r, err := pipeline.NewRunner(env, cfg, pipeline.Options{Transport: pipeline.TransportLocal, Log: slog.New(slog.DiscardHandler)})
	if err == nil {
		err = r.Run(context.Background())
	}
	if err != nil || len(k.frames) != n {
		fail(fmt.Errorf("decoding %d frames for the infer bench: %v (%d)", n, err, len(k.frames)))
	}
	defer func() {
		for _, e := range k.frames {
			e.Release()
		}
	}()
	fmt.Fprintf(b, "## Inference: the infer stage vs a bare onnxruntime_go loop (UltraFace RFB-320, 320x240 input)\n\n")
	fmt.Fprintf(b, "Peer: onnxruntime_go `AdvancedSession.Run` in a loop on preallocated tensors. avflow: the infer stage's Process called on %d decoded 640x480 frames one at a time, as the runner calls it: swscale to 320x240 RGB, normalisation, Run, decode + NMS, results attached and a metadata message built. Same model, same intra-op threads, one caller goroutine each (with `overlap: true` the stage preprocesses the next frame while the model runs on the last; the default is false). The bare session keeps ONNX Runtime's defaults, worker threads spinning between runs, so the like-for-like rows set `spin: true` on the stage; the last row is the stage's default, `spin: false`, which gives up a little in isolation and wins in pipelines (below); %d paired rounds of %d frames, bare loop then stage.\n\n", n, pairs, per)
	fmt.Fprintf(b, "| intra-op threads | overlap | spin | bare Run loop fps | infer stage fps | ratio, median of rounds (min-max) | bare CPU ms/frame | stage CPU ms/frame |\n|---:|---|---|---:|---:|---:|---:|---:|\n")
	spec, _ := pipeline.Default.Lookup("infer")
	for _, run := range []struct {
		threads int
		overlap bool
		spin    bool
	}{{1, false, true}, {2, false, true}, {1, true, true}, {2, true, true}, {2, false, false}} {
		threads := run.threads
		pcfg, _ := pipeline.Parse([]byte(fmt.Sprintf(`name: p
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2"}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: faces, kind: infer, inputs: [dec], params: {model: ultraface-rfb-320, threads: %d, overlap: %t, spin: %t}}
`, threads, run.overlap, run.spin)), "p.yaml")
		if err := pipeline.Default.Validate(pcfg); err != nil {
			fail(err)
		}
		sc := pcfg.Stage("faces")
		st, err := spec.New(context.Background(), pipeline.Init{Name: "faces", Params: sc.Params,
			Inputs: []pipeline.PortType{{Kind: envelope.KindFrame, Media: envelope.MediaVideo}}, Log: slog.New(slog.DiscardHandler)})
		if err != nil {
			fail(err)
		}
		// Paired rounds: each stage round runs right after its bare round, so
		// both see the same load on this shared machine; the ratio is the
		// median of the per-round ratios.
		var bare, stageFPS, ratios []float64
		var bareCPU, stageCPU []float64
		for i := 0; i < pairs; i++ {
			c0 := selfCPU()
			d, err := bareORT(modelPath, threads, per)
			if err != nil {
				fail(err)
			}
			c1 := selfCPU()
			t0 := time.Now()
			outs := 0
			for _, e := range k.frames[:per] {
				in := *e
				in.Detections = nil
				out, err := st.Process(context.Background(), stage.Batch{&in})
				if err != nil {
					fail(fmt.Errorf("infer bench: %w", err))
				}
				outs += len(out)
			}
			out, err := st.Flush(context.Background())
			if outs += len(out); err != nil || outs != 2*per {
				fail(fmt.Errorf("infer bench: %d outputs for %d frames, %v", outs, per, err))
			}
			w := time.Since(t0)
			c2 := selfCPU()
			bare = append(bare, float64(per)/d.Seconds())
			stageFPS = append(stageFPS, float64(per)/w.Seconds())
			ratios = append(ratios, d.Seconds()/w.Seconds())
			bareCPU = append(bareCPU, float64((c1-c0).Microseconds())/1000/float64(per))
			stageCPU = append(stageCPU, float64((c2-c1).Microseconds())/1000/float64(per))
		}
		_ = st.Close()
		fmt.Fprintf(b, "| %d | %v | %v | %.1f | %.1f | **%.3f** (%.3f-%.3f) | %.2f | %.2f |\n", threads, run.overlap, run.spin, medianOf(bare), medianOf(stageFPS),
			medianOf(ratios), slices.Min(ratios), slices.Max(ratios), medianOf(bareCPU), medianOf(stageCPU))
	}
	fmt.Fprintf(b, "\nTarget: the infer stage at least 0.85 of the bare loop.\n\n")
}

func inferBatch(b *strings.Builder) {
	// 2. Batching across 4 streams.
	fmt.Fprintf(b, "## Batching: 4 streams into one infer stage\n\n")
	fmt.Fprintf(b, "4 lavfi 640x480 sources -> 4 decoders -> one infer stage (UltraFace RFB-320, 2 threads) with max_batch 1, 4 and 8 (max_wait 5ms). UltraFace's ONNX graph has a fixed batch of 1, so a batch is run frame by frame inside one Process call: batching saves queue hand-offs, not model time. A model with a dynamic batch dimension would be the case where it pays.\n\n")
	batchTable(b, "ultraface-rfb-320", "640x480", 100, "5ms")
	fmt.Fprintf(b, "The same with PP-OCRv4 det, whose batch dimension is dynamic: frames of equal size from the 4 streams share one Run (4 lavfi 640x256 sources, 40 frames each, 2 threads).\n\n")
	batchTable(b, "ppocr-v4-det", "640x256", 40, "20ms")
}

// batchTable runs 4 lavfi streams through one infer stage at max_batch 1, 4 and 8.
func batchTable(b *strings.Builder, modelName, size string, frames int, wait string) {
	fmt.Fprintf(b, "| max_batch | frames | wall | fps |\n|---:|---:|---:|---:|\n")
	for _, mb := range []int{1, 4, 8} {
		var sb strings.Builder
		sb.WriteString("name: batch\nstages:\n")
		for i := 0; i < 4; i++ {
			fmt.Fprintf(&sb, "  - {name: s%d, kind: source, params: {url: \"lavfi:testsrc2=size=%s:rate=30\", max_frames: %d}}\n  - {name: d%d, kind: decode, inputs: [s%d.video]}\n", i, size, frames, i, i)
		}
		fmt.Fprintf(&sb, "  - {name: m, kind: infer, inputs: [merge], params: {model: %s, threads: 2, max_batch: %d, max_wait: %s}}\n", modelName, mb, wait)
		fmt.Fprintf(&sb, "  - {name: merge, kind: merge, inputs: [d0, d1, d2, d3]}\n  - {name: c, kind: count, inputs: [m.meta]}\n")
		c, wall, _, err := runWithMerge(sb.String())
		if err != nil {
			fail(err)
		}
		fmt.Fprintf(b, "| %d | %d | %.2fs | %.1f |\n", mb, c.meta.Load(), wall.Seconds(), float64(c.meta.Load())/wall.Seconds())
	}
	b.WriteString("\n")
}

// runWithMerge adds a "merge" stage (frames of several inputs out of one port).
func runWithMerge(yaml string) (*counter, time.Duration, *pipeline.Metrics, error) {
	if _, err := pipeline.Default.Lookup("merge"); err != nil {
		_ = pipeline.Register(pipeline.Spec{Kind: "merge", MinInputs: 1, MaxInputs: -1,
			Ports: func(_ pipeline.Params, in []pipeline.PortType) ([]pipeline.Port, error) {
				return []pipeline.Port{{Name: "out", Type: in[0]}}, nil
			},
			New: func(context.Context, pipeline.Init) (stage.Stage, error) { return mergeStage{}, nil }})
	}
	return runWithCounter(yaml, pipeline.TransportLocal)
}

type mergeStage struct {
	stage.Base
}

func (mergeStage) Process(_ context.Context, in stage.Batch) (stage.Batch, error) {
	out := make(stage.Batch, len(in))
	for i, e := range in {
		out[i] = e.Pass()
	}
	return out, nil
}

const privacyYAML = `name: streams
flow: drop-oldest
stages:
%s`

func privacyStage(i int, clip string) string {
	return fmt.Sprintf(`  - {name: cam%[1]d, kind: source, params: {url: %[2]q, realtime: true, loop: true}}
  - {name: dec%[1]d, kind: decode, inputs: [cam%[1]d.video], params: {threads: 1}}
  - {name: faces%[1]d, kind: infer, inputs: [dec%[1]d], params: {model: ultraface-rfb-320, threads: 1, threshold: 0.35, interval: 3}}
  - {name: track%[1]d, kind: track, inputs: [faces%[1]d], params: {max_age: 6, grow: 0.05}}
  - {name: blur%[1]d, kind: redact, inputs: [track%[1]d], params: {verify_model: ultraface-rfb-320, threads: 1}}
  - {name: enc%[1]d, kind: encode, inputs: [blur%[1]d], params: {codec: libx264, preset: veryfast, tune: zerolatency, threads: 1}}
  - {name: out%[1]d, kind: sink, inputs: [enc%[1]d], params: {path: "null"}}
`, i, clip)
}

func privacyStreams(b *strings.Builder, bin, work string) {
	media := mediaDir()
	clip := filepath.Join(media, "facecam", "walk.mkv")
	fmt.Fprintf(b, "## Real-time facecam streams through the privacy pipeline\n\n")
	fmt.Fprintf(b, "N copies of `facecam/walk.mkv` (640x480, 30 fps), looped and paced in real time, each through decode -> infer (UltraFace RFB-320 every 3rd frame, 1 thread) -> track -> redact (blur, with the verify pass on every frame) -> x264 veryfast zerolatency -> null, all in one avflow process, drop-oldest, for 20 s, over NATS and over the in-process transport. A stream keeps up when it delivers at least 95%% of its frames (28.5 fps) and drops under 1%% of them.\n\n| streams | transport | frames/s per stream (min) | raw frames dropped | keeps up |\n|---:|---|---:|---:|---|\n")
	for n := 1; n <= 4; n++ {
		var sb strings.Builder
		for i := 0; i < n; i++ {
			sb.WriteString(privacyStage(i, clip))
		}
		yaml := filepath.Join(work, fmt.Sprintf("streams%d.yaml", n))
		if err := os.WriteFile(yaml, []byte(fmt.Sprintf(privacyYAML, sb.String())), 0o644); err != nil {
			fail(err)
		}
		for _, transport := range []string{"nats", "local"} {
			out, _ := exec.Command("timeout", "-s", "INT", "20", bin, "--log-level", "warn", "run", "--transport", transport, yaml).CombinedOutput()
			minFPS, drops, frames := 1e9, int64(0), int64(0)
			for _, row := range endTable(string(out)) {
				if strings.HasPrefix(row["stage"], "out") && row["kind"] == "sink" {
					v, _ := strconv.ParseFloat(row["fps"], 64)
					minFPS = min(minFPS, v)
					in, _ := strconv.ParseInt(row["in"], 10, 64)
					frames += in
				}
				d, _ := strconv.ParseInt(row["drops"], 10, 64)
				drops += d
			}
			ok := minFPS >= 0.95*30 && float64(drops) < 0.01*float64(frames)
			fmt.Fprintf(b, "| %d | %s | %.1f | %d | %v |\n", n, transport, minFPS, drops, ok)
			slog.Info("privacy streams", "streams", n, "transport", transport, "min_fps", minFPS, "drops", drops)
		}
	}
	fmt.Fprintf(b, "\nTarget: at least 3 streams in real time on this 2-core machine.\n\n")
}

var promRe = regexp.MustCompile(`avflow_stage_messages_in_total\{pipeline="rss",stage="out0",kind="sink"[^}]*\} ([0-9.e+]+)`)

// privacySpin times the privacy example (900 frames, unpaced, in-process)
// with ONNX Runtime's worker threads spinning between runs (its default)
// and not (avflow's default), interleaved.
func privacySpin(b *strings.Builder, bin string, rounds int) {
	example, _ := filepath.Abs("examples/irl-privacy/pipeline.yaml")
	out, _ := os.MkdirTemp("", "avflow-spin")
	defer os.RemoveAll(out)
	env := append(os.Environ(), "AVFLOW_MEDIA="+mediaDir(), "AVFLOW_OUT="+out)
	run := func(spin bool) measure {
		args := []string{"--log-level", "warn", "run", "--transport", "local", "--set", "cam.loop=true", "--set", "cam.max_frames=900",
			"--set", fmt.Sprintf("faces.spin=%t", spin), "--set", fmt.Sprintf("blur.spin=%t", spin), example}
		t0 := time.Now()
		cmd := exec.Command(bin, args...)
		cmd.Env = env
		if o, err := cmd.CombinedOutput(); err != nil {
			fail(fmt.Errorf("privacy spin=%t: %w\n%s", spin, err, o))
		}
		return measure{wall: time.Since(t0)}
	}
	var on, off []measure
	for i := 0; i < rounds; i++ {
		on = append(on, run(true))
		off = append(off, run(false))
	}
	fps := func(ms []measure) float64 { return 900 / median(ms).wall.Seconds() }
	fmt.Fprintf(b, "## Inference in a pipeline: ONNX Runtime thread spinning\n\n")
	fmt.Fprintf(b, "The irl-privacy example (decode, UltraFace every 3rd frame, track, blur with a verify pass of UltraFace on every frame, x264) over 900 frames of the looped facecam clip, unpaced, in-process, both models at the default intra-op threads (one per core); median of %d interleaved rounds.\n\n", rounds)
	fmt.Fprintf(b, "| ONNX Runtime workers | wall (median) | fps |\n|---|---:|---:|\n")
	fmt.Fprintf(b, "| spin between runs (ORT default, `spin: true`) | %.2fs | %.1f |\n", median(on).wall.Seconds(), fps(on))
	fmt.Fprintf(b, "| sleep between runs (avflow default) | %.2fs | %.1f |\n\n", median(off).wall.Seconds(), fps(off))
	fmt.Fprintf(b, "Spinning workers hold cores the decoder, the blur and x264 need; without them the pipeline runs %.2fx as fast.\n\n", fps(off)/fps(on))
}

func privacyRSS(b *strings.Builder, bin, work string) {
	media := mediaDir()
	clip := filepath.Join(media, "facecam", "walk.mkv")
	yaml := filepath.Join(work, "rss.yaml")
	stage := strings.ReplaceAll(privacyStage(0, clip), "realtime: true, loop: true", "loop: true, max_frames: 10000")
	if err := os.WriteFile(yaml, []byte("name: rss\nstages:\n"+stage), 0o644); err != nil {
		fail(err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin, "--log-level", "warn", "run", "--metrics-addr", addr, yaml)
	if err := cmd.Start(); err != nil {
		fail(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	rss := func() int64 {
		f, err := os.Open(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
		if err != nil {
			return 0
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "VmRSS:") {
				v, _ := strconv.ParseInt(strings.Fields(sc.Text())[1], 10, 64)
				return v
			}
		}
		return 0
	}
	frames := func() float64 {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return -1
		}
		defer resp.Body.Close()
		body := new(strings.Builder)
		_, _ = bufio.NewReader(resp.Body).WriteTo(body)
		m := promRe.FindStringSubmatch(body.String())
		if m == nil {
			return -1
		}
		v, _ := strconv.ParseFloat(m[1], 64)
		return v
	}
	var at1k, at10k int64
	done := false
	t0 := time.Now()
poll:
	for time.Since(t0) < 15*time.Minute {
		f := frames()
		if f >= 1000 && at1k == 0 {
			at1k = rss()
		}
		if f >= 9900 {
			at10k = rss()
			break
		}
		select {
		case <-exited:
			done = true
			break poll
		case <-time.After(100 * time.Millisecond):
		}
	}
	if !done {
		<-exited
	}
	if at1k == 0 || at10k == 0 {
		fail(fmt.Errorf("memory bench: no RSS reading (at 1k frames %d KiB, at 9.9k %d KiB): the pipeline ended early or its metrics did not match", at1k, at10k))
	}
	fmt.Fprintf(b, "## Memory over a long run\n\n")
	fmt.Fprintf(b, "The privacy pipeline (as above, one stream, not paced) over 10,000 frames of the looped clip; RSS read from /proc when the sink had taken 1,000 and 9,900 frames.\n\n| RSS at 1,000 frames | RSS at 9,900 frames | growth |\n|---:|---:|---:|\n")
	growth := 0.0
	if at1k > 0 {
		growth = float64(at10k-at1k) / float64(at1k) * 100
	}
	fmt.Fprintf(b, "| %.1f MiB | %.1f MiB | %+.1f%% |\n\nTarget: no growth beyond 10%%.\n\n", float64(at1k)/1024, float64(at10k)/1024, growth)
}
