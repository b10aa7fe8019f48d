package infer_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/avflow/avflow/accelerators"
	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
	_ "github.com/avflow/avflow/stages/all"
	"github.com/avflow/avflow/stages/infer/onnx"
	"github.com/nats-io/nats.go"
)

// collector gathers the detections of every frame that reaches it.
type collector struct {
	stage.Base
	mu     sync.Mutex
	frames int
	dets   [][]envelope.Detection
	segs   []envelope.Segment
}

func (c *collector) Process(_ context.Context, in stage.Batch) (stage.Batch, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range in {
		if e.Kind == envelope.KindFrame {
			c.frames++
			c.dets = append(c.dets, e.Detections)
		}
		c.segs = append(c.segs, e.Segments...)
	}
	return nil, nil
}

func envWithCollector(t *testing.T, c *collector) *pipeline.Environment {
	env := pipeline.Default.Clone()
	err := env.Register(pipeline.Spec{Kind: "collect", MinInputs: 1, MaxInputs: -1,
		Ports: func(pipeline.Params, []pipeline.PortType) ([]pipeline.Port, error) { return nil, nil },
		New:   func(context.Context, pipeline.Init) (stage.Stage, error) { return c, nil }})
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func run(t *testing.T, env *pipeline.Environment, cfg *pipeline.Config) {
	t.Helper()
	if err := env.Validate(cfg); err != nil {
		t.Fatal(err)
	}
	r, err := pipeline.NewRunner(env, cfg, pipeline.Options{Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
}

var ssimRe = regexp.MustCompile(`All:([0-9.]+)`)

// ssim is the SSIM of b against a, by the ffmpeg CLI on one thread. The
// CLI crashed once (SIGSEGV) in make test on files that it then read
// fifteen times without fault: a crash by a signal is tried once more,
// and said; any other failure, or a second crash, fails the test.
func ssim(t *testing.T, a, b string) float64 {
	t.Helper()
	args := []string{"-v", "info", "-nostats", "-threads", "1", "-filter_threads", "1", "-i", a, "-threads", "1", "-i", b, "-lavfi", "ssim", "-f", "null", "-"}
	out, err := exec.Command("ffmpeg", args...).CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) && !exit.Exited() {
		t.Logf("ffmpeg ssim: %v: trying once more", err)
		out, err = exec.Command("ffmpeg", args...).CombinedOutput()
	}
	if err != nil {
		t.Fatalf("ffmpeg ssim: %v\n%s", err, out)
	}
	m := ssimRe.FindSubmatch(out)
	if m == nil {
		t.Fatalf("no SSIM in ffmpeg output:\n%s", out)
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

// TestPrivacyExample: on every facecam clip, and on crops of it whose edge
// cuts the face (at each edge, see edgeCuts), the privacy example leaves no
// face that an independent checker (UltraFace RFB-320 on frames the ffmpeg
// CLI sizes to 320x240 with swscale and with zimg) scores above 0.5 on any
// frame, and keeps the rest of the picture (SSIM against the input at
// least 0.90).
func TestPrivacyExample(t *testing.T) {
	e2e.Long(t)
	t.Setenv("AVFLOW_MODEL_MIRROR", e2e.Models(t))
	t.Setenv("AVFLOW_MODELS", t.TempDir())
	clips, _ := filepath.Glob(filepath.Join(e2e.MediaDir(t), "facecam", "*.mkv"))
	if len(clips) == 0 {
		t.Fatal("no facecam clips")
	}
	chk := newChecker(t)
	for _, clip := range clips {
		name := strings.TrimSuffix(filepath.Base(clip), ".mkv")
		t.Run(name, func(t *testing.T) {
			scores := chk.scores(t, clip, checkScalers[0].vf)
			if _, ok := faceBox(scores); !ok {
				t.Fatalf("the checker finds no face in the input %s: the test would prove nothing", name)
			}
			t.Run("whole", func(t *testing.T) { checkPrivate(t, chk, filepath.Dir(filepath.Dir(clip)), name) })
			media := t.TempDir()
			if err := os.Mkdir(filepath.Join(media, "facecam"), 0o755); err != nil {
				t.Fatal(err)
			}
			for _, c := range edgeCuts {
				t.Run(c.edge, func(t *testing.T) {
					crop := name + "-" + c.edge
					cut, ok := edgeClip(t, chk, clip, scores, c, filepath.Join(media, "facecam", crop+".mkv"))
					if !ok {
						t.Skipf("%s has no room for a window whose %s edge cuts the face", name, c.edge)
					}
					t.Logf("%.1f of the face cut off", cut.cut)
					checkPrivate(t, chk, media, crop)
				})
			}
		})
	}
}

// checkPrivate runs the privacy example on media/facecam/clip.mkv and checks
// its output with chk at every checkScalers.
func checkPrivate(t *testing.T, chk *checker, media, clip string) {
	t.Helper()
	out := t.TempDir()
	t.Setenv("AVFLOW_MEDIA", media)
	t.Setenv("AVFLOW_OUT", out)
	t.Setenv("AVFLOW_CLIP", clip)
	cfg, err := pipeline.Load("../../examples/irl-privacy/pipeline.yaml")
	if err != nil {
		t.Fatal(err)
	}
	run(t, pipeline.Default, cfg)
	input := filepath.Join(media, "facecam", clip+".mkv")
	result := filepath.Join(out, clip+"-private.mp4")
	frames := e2e.VideoPackets(t, input)
	for _, sc := range checkScalers {
		scores := chk.scores(t, result, sc.vf)
		if len(scores) != frames {
			t.Fatalf("output has %d frames, input %d", len(scores), frames)
		}
		var worst scored
		seen := 0
		for i, s := range scores {
			if s.Score > worst.Score {
				worst = s
			}
			if s.Score > 0.5 {
				if seen++; seen <= 3 {
					t.Errorf("%s: frame %d: a face is still detectable after redaction: %v", sc.name, i, s)
				}
			}
		}
		if seen > 3 {
			t.Errorf("%s: and on %d more frames", sc.name, seen-3)
		}
		t.Logf("%s: best face left %v", sc.name, worst)
	}
	if s := ssim(t, result, input); s < 0.90 {
		t.Errorf("SSIM %.4f < 0.90: too much of the picture changed", s)
	} else {
		t.Logf("SSIM %.4f", s)
	}
}

// TestMetaSubject: an outside NATS client sees the detections on the
// stage's meta subject, as msgpack envelopes.
func TestMetaSubject(t *testing.T) {
	e2e.Long(t)
	t.Setenv("AVFLOW_MODEL_MIRROR", e2e.Models(t))
	clip := e2e.Media(t, "facecam/hungry.mkv")
	cfg, err := pipeline.Parse([]byte(fmt.Sprintf(`name: meta
stages:
  - {name: cam, kind: source, params: {url: %q, realtime: true}}
  - {name: dec, kind: decode, inputs: [cam.video]}
  - {name: faces, kind: infer, inputs: [dec], params: {model: ultraface-rfb-320}}
  - {name: c, kind: collect, inputs: [faces]}
`, clip)), "meta.yaml")
	if err != nil {
		t.Fatal(err)
	}
	env := envWithCollector(t, &collector{})
	if err := env.Validate(cfg); err != nil {
		t.Fatal(err)
	}
	r, err := pipeline.NewRunner(env, cfg, pipeline.Options{Log: slog.New(slog.DiscardHandler), Listen: true})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	<-r.Ready()
	nc, err := nats.Connect(r.NATSURL(), nats.UserInfo(r.ListenCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var mu sync.Mutex
	var got []*stage.Msg
	sub, err := nc.Subscribe(pipeline.Subject("meta", "faces", "meta"), func(m *nats.Msg) {
		if e, err := stage.Unmarshal(m.Data); err == nil && e.Kind != envelope.KindEOS {
			mu.Lock()
			got = append(got, e)
			mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) < 10 {
		t.Fatalf("outside subscriber got %d metadata messages", len(got))
	}
	withFace := 0
	for _, e := range got {
		if e.Kind != envelope.KindData || len(e.Payload) != 0 {
			t.Fatalf("metadata message is %s with %d payload bytes", e.Kind, len(e.Payload))
		}
		for _, d := range e.Detections {
			if d.Label == "face" && d.Model == "ultraface-rfb-320" && d.X2 > d.X1 {
				withFace++
				break
			}
		}
	}
	if withFace < len(got)/2 {
		t.Fatalf("only %d of %d metadata messages carry a face", withFace, len(got))
	}
}

// TestOverlapAndReplicasMatchSerial: with overlap (preprocessing the next
// frames while the model runs) and with two replicas of the stage, every
// frame still leaves, in order, with the same boxes as one plain instance.
func TestOverlapAndReplicasMatchSerial(t *testing.T) {
	e2e.Long(t)
	t.Setenv("AVFLOW_MODEL_MIRROR", e2e.Models(t))
	clip := e2e.Media(t, "facecam/book.mkv")
	run1 := func(extra string) *collector {
		c := &collector{}
		cfg, err := pipeline.Parse(fmt.Appendf(nil, `name: ov
stages:
  - {name: src, kind: source, params: {url: %q, max_frames: 90}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: faces, kind: infer, inputs: [dec], %s}
  - {name: c, kind: collect, inputs: [faces]}
`, clip, extra), "ov.yaml")
		if err != nil {
			t.Fatal(err)
		}
		run(t, envWithCollector(t, c), cfg)
		return c
	}
	tests := []struct{ name, serial, other string }{
		{"overlap, interval 2", "params: {model: ultraface-rfb-320, interval: 2}", "params: {model: ultraface-rfb-320, interval: 2, overlap: true}"},
		{"two replicas", "params: {model: ultraface-rfb-320, threads: 1}", "replicas: 2, params: {model: ultraface-rfb-320, threads: 1}"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			serial, other := run1(tt.serial), run1(tt.other)
			if serial.frames != 90 || other.frames != 90 {
				t.Fatalf("frames: serial %d, other %d, want 90", serial.frames, other.frames)
			}
			found := 0
			for i := range serial.dets {
				a, b := serial.dets[i], other.dets[i]
				if len(a) != len(b) {
					t.Fatalf("frame %d: %d boxes serial, %d other", i, len(a), len(b))
				}
				for j := range a {
					if a[j] != b[j] {
						t.Fatalf("frame %d box %d: %+v vs %+v", i, j, a[j], b[j])
					}
				}
				found += len(a)
			}
			if found == 0 {
				t.Fatal("no face found in book.mkv: the comparison proves nothing")
			}
		})
	}
}

// TestProviderFallback: an infer stage bound to an ONNX Runtime provider
// that cannot run here (CUDA: the CPU build make setup installs has none;
// WebGPU: built in, but Dawn finds no adapter, refusing Mesa's lavapipe)
// runs on the CPU with one warning saying why and says so in its metrics;
// with strict it refuses to start, naming the provider.
func TestProviderFallback(t *testing.T) {
	t.Setenv("AVFLOW_MODEL_MIRROR", e2e.Models(t))
	for _, tt := range []struct {
		provider, why string
	}{
		{"CUDAExecutionProvider", "CUDA"},
		{onnx.WebGPU, "Failed to get a WebGPU adapter"},
	} {
		if tt.provider == onnx.WebGPU && webGPUHere() {
			t.Log("a Vulkan GPU is here: TestWebGPUMatchesCPU runs the model on it")
			continue
		}
		if tt.provider == onnx.WebGPU && testing.Short() {
			// Dawn's threads (over Mesa's lavapipe) hang the race
			// detector's exit: make test runs this package under -race
			// with -short, and without both before.
			t.Log("WebGPU: not under -short")
			continue
		}
		inv := accelerators.Inventory{Devices: []accelerators.Device{
			{Kind: accelerators.CPU, ID: "cpu:0", Usable: true},
			{Kind: accelerators.GPU, ID: "ort:" + tt.provider, Usable: true},
		}}
		for _, strict := range []bool{false, true} {
			t.Run(fmt.Sprint(tt.provider, " strict=", strict), func(t *testing.T) {
				logs, r, c, err := runOnDevice(t, &inv, strict, "")
				if strict {
					if !errors.Is(err, onnx.ErrProvider) || !strings.Contains(err.Error(), tt.provider) {
						t.Fatalf("strict: want ErrProvider naming %s, got %v", tt.provider, err)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if c.frames != 10 || strings.Count(logs, "accelerator fallback") != 1 || !strings.Contains(logs, "the model runs on the CPU") || !strings.Contains(logs, tt.why) {
					t.Fatalf("%d frames; logs (want one fallback naming %q):\n%s", c.frames, tt.why, logs)
				}
				for _, st := range r.Metrics().Snapshot() {
					if st.Name == "faces" && st.Device != "cpu:0" {
						t.Errorf("faces reported on %s, want cpu:0", st.Device)
					}
				}
			})
		}
	}
}

// runOnDevice runs 10 lavfi frames (or the clip) through an infer stage
// that asks for a GPU among the devices of inv.
func runOnDevice(t *testing.T, inv *accelerators.Inventory, strict bool, clip string) (string, *pipeline.Runner, *collector, error) {
	t.Helper()
	url := "lavfi:testsrc2=size=320x240:rate=10:duration=1"
	if clip != "" {
		url = clip
	}
	c := &collector{}
	cfg, err := pipeline.Parse(fmt.Appendf(nil, `name: ep
stages:
  - {name: src, kind: source, params: {url: %q, max_frames: 30, audio: false}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: faces, kind: infer, inputs: [dec], accelerator: gpu, strict: %t, params: {model: ultraface-slim-320}}
  - {name: c, kind: collect, inputs: [faces]}
`, url, strict), "ep.yaml")
	if err != nil {
		t.Fatal(err)
	}
	env := envWithCollector(t, c)
	if err := env.Validate(cfg); err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	r, err := pipeline.NewRunner(env, cfg, pipeline.Options{Devices: inv, Transport: "local", Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	err = r.Run(context.Background())
	return logs.String(), r, c, err
}

// webGPUHere says whether discovery finds a Vulkan GPU for WebGPU.
func webGPUHere() bool {
	for _, d := range accelerators.Machine("").Usable(accelerators.GPU) {
		if d.ID == "ort:"+onnx.WebGPU {
			return true
		}
	}
	return false
}

// TestWebGPUMatchesCPU (the GPU check, on a machine with a Vulkan GPU):
// the model on WebGPU finds what it finds on the CPU, frame by frame.
func TestWebGPUMatchesCPU(t *testing.T) {
	if !webGPUHere() {
		t.Skip("no Vulkan GPU here (avflow devices says why): run on a GPU machine")
	}
	if os.Getenv("AVFLOW_MODEL_MIRROR") == "" { // scripts/gpu-check.sh gives the bundle's
		t.Setenv("AVFLOW_MODEL_MIRROR", e2e.Models(t))
	}
	clip := e2e.Media(t, "facecam/walk.mkv")
	dets := map[string][][]envelope.Detection{}
	for _, id := range []string{"ort:" + onnx.WebGPU, "cpu:0"} {
		inv := accelerators.Inventory{Devices: []accelerators.Device{{Kind: accelerators.CPU, ID: "cpu:0", Usable: true}}}
		if id != "cpu:0" {
			inv.Devices = append(inv.Devices, accelerators.Device{Kind: accelerators.GPU, ID: id, Usable: true})
		}
		logs, _, c, err := runOnDevice(t, &inv, id != "cpu:0", clip) // strict on the GPU: no silent fallback
		if err != nil {
			t.Fatalf("%s: %v\n%s", id, err, logs)
		}
		dets[id] = c.dets
	}
	gpu, cpu := dets["ort:"+onnx.WebGPU], dets["cpu:0"]
	if len(gpu) != len(cpu) || len(cpu) == 0 {
		t.Fatalf("%d frames on WebGPU, %d on the CPU", len(gpu), len(cpu))
	}
	for i := range cpu {
		if len(gpu[i]) != len(cpu[i]) {
			t.Errorf("frame %d: %d boxes on WebGPU, %d on the CPU", i, len(gpu[i]), len(cpu[i]))
			continue
		}
		for j := range cpu[i] {
			if d := math.Abs(float64(gpu[i][j].X1-cpu[i][j].X1)) + math.Abs(float64(gpu[i][j].Score-cpu[i][j].Score)); d > 0.02 {
				t.Errorf("frame %d box %d: WebGPU %+v, CPU %+v", i, j, gpu[i][j], cpu[i][j])
			}
		}
	}
}
