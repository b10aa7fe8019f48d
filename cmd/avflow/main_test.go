package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/avflow/avflow/pipeline/e2e"
)

var avflowBin string

func TestMain(m *testing.M) {
	avflowBin = os.Getenv("AVFLOW_BIN")
	// A test that runs this binary as its child (TestExitOnNextSignal)
	// needs no avflow binary: building one there made the child miss its
	// parent's deadline under -race.
	if avflowBin == "" && os.Getenv("AVFLOW_TEST_EXIT_ON_NEXT") == "" {
		dir, err := os.MkdirTemp("", "avflow-bin")
		if err != nil {
			panic(err)
		}
		avflowBin = filepath.Join(dir, "avflow")
		out, err := exec.Command("go", "build", "-o", avflowBin, ".").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "building avflow failed: %v\n%s", err, out)
			os.Exit(1)
		}
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// mediaDir is the sample media folder, which the examples find through
// $AVFLOW_MEDIA.
func mediaDir(t testing.TB) string {
	t.Helper()
	e2e.Media(t, "car-detection.mp4")
	return e2e.MediaDir(t)
}

type result struct {
	code           int
	stdout, stderr string
}

// avflow runs the CLI with the given environment additions.
func avflow(t testing.TB, env []string, args ...string) result {
	t.Helper()
	cmd := exec.CommandContext(runContext(t), avflowBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var so, se bytes.Buffer // read only once the process has ended
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running avflow: %v", err)
	}
	return result{code, so.String(), se.String()}
}

type probeStream struct {
	CodecName    string `json:"codec_name"`
	CodecType    string `json:"codec_type"`
	Width        int    `json:"width"`
	Height       int    `json:"height"`
	NbReadFrames string `json:"nb_read_frames"`
	Duration     string `json:"duration"`
}

func (s probeStream) frames() int { n, _ := strconv.Atoi(s.NbReadFrames); return n }
func (s probeStream) seconds() float64 {
	f, _ := strconv.ParseFloat(s.Duration, 64)
	return f
}

// probe runs ffprobe with frame counting and returns the streams by type.
func probe(t testing.TB, path string) map[string]probeStream {
	t.Helper()
	out, err := exec.Command(e2e.Tool(t, "ffprobe"), "-v", "error", "-count_frames", "-show_entries",
		"stream=codec_name,codec_type,width,height,nb_read_frames,duration", "-of", "json", path).Output()
	if err != nil {
		t.Fatalf("ffprobe %s: %v", path, err)
	}
	var v struct{ Streams []probeStream }
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatal(err)
	}
	m := map[string]probeStream{}
	for _, s := range v.Streams {
		m[s.CodecType] = s
	}
	return m
}

// checkFailure checks a run's exit code and error text, and that it left no output.
func checkFailure(t *testing.T, r result, code int, wants []string, outDir string) {
	t.Helper()
	if r.code != code {
		t.Errorf("exit code %d, want %d\n%s", r.code, code, r.stderr)
	}
	for _, w := range wants {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
		}
	}
	assertNoOutput(t, outDir)
}

func assertNoOutput(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if !e.IsDir() {
			t.Errorf("output left behind after a failed run: %s", e.Name())
		}
	}
}

// TestTranscodeFile runs the transcode example on the real clip over both
// transports and checks the MP4 with ffprobe.
func TestTranscodeFile(t *testing.T) {
	e2e.Long(t)
	media := mediaDir(t)
	in := probe(t, filepath.Join(media, "car-detection.mp4"))
	for _, transport := range []string{"nats", "local"} {
		t.Run(transport, func(t *testing.T) {
			out := t.TempDir()
			r := avflow(t, []string{"AVFLOW_MEDIA=" + media, "AVFLOW_OUT=" + out}, "run", "--transport", transport, "../../examples/transcode/pipeline.yaml")
			if r.code != 0 {
				t.Fatalf("exit %d:\n%s", r.code, r.stderr)
			}
			checkTranscode(t, filepath.Join(out, "transcode.mp4"), in)
		})
	}
}

func checkTranscode(t *testing.T, path string, in map[string]probeStream) {
	t.Helper()
	got := probe(t, path)
	v, a := got["video"], got["audio"]
	if v.CodecName != "h264" || v.Width != 1280 || v.Height != 720 {
		t.Errorf("video stream: %+v, want h264 1280x720", v)
	}
	if v.frames() != in["video"].frames() {
		t.Errorf("video frames: got %d, want %d (block mode never drops)", v.frames(), in["video"].frames())
	}
	if d, want := v.seconds(), in["video"].seconds(); math.Abs(d-want) > want*0.01 {
		t.Errorf("duration %.3fs, want %.3fs within 1%%", d, want)
	}
	if a.CodecName != "aac" || a.frames() != in["audio"].frames() {
		t.Errorf("audio stream: %+v, want aac with %d frames", a, in["audio"].frames())
	}
	if _, err := os.Stat(path + ".partial"); err == nil {
		t.Errorf("partial file left next to the output")
	}
}

// TestExternalNATS runs the same pipeline through a separately started nats-server process.
func TestExternalNATS(t *testing.T) {
	e2e.Long(t)
	port, _ := startNATSServer(t)

	media := mediaDir(t)
	in := probe(t, filepath.Join(media, "car-detection.mp4"))
	out := t.TempDir()
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	r := avflow(t, []string{"AVFLOW_MEDIA=" + media, "AVFLOW_OUT=" + out}, "run", "--nats", url, "../../examples/transcode/pipeline.yaml")
	if r.code != 0 {
		t.Fatalf("exit %d:\n%s", r.code, r.stderr)
	}
	if strings.Contains(r.stderr, "embedded NATS server started") {
		t.Errorf("--nats still started the embedded server")
	}
	checkTranscode(t, filepath.Join(out, "transcode.mp4"), in)
}

// TestLavfiSource encodes a generated test pattern with a tone to MKV.
func TestLavfiSource(t *testing.T) {
	e2e.Long(t)
	dir := t.TempDir()
	p := writePipeline(t, dir, `
name: lavfi
stages:
  - name: src
    kind: source
    params:
      url: "lavfi:testsrc2=size=640x360:rate=25[out0];sine=frequency=1000:sample_rate=44100[out1]"
      max_frames: 50
  - {name: vdec, kind: decode, inputs: [src.video]}
  - {name: venc, kind: encode, inputs: [vdec], params: {codec: libx264, preset: ultrafast}}
  - {name: adec, kind: decode, inputs: [src.audio]}
  - {name: aenc, kind: encode, inputs: [adec], params: {codec: aac, sample_rate: 48000}}
  - {name: out, kind: sink, inputs: [venc, aenc], params: {path: out.mkv}}
`)
	r := avflow(t, nil, "run", p)
	if r.code != 0 {
		t.Fatalf("exit %d:\n%s", r.code, r.stderr)
	}
	got := probe(t, filepath.Join(dir, "out.mkv"))
	if v := got["video"]; v.CodecName != "h264" || v.Width != 640 || v.frames() != 50 {
		t.Errorf("video: %+v, want 50 h264 640x360 frames", v)
	}
	if a := got["audio"]; a.CodecName != "aac" || a.frames() < 40 {
		t.Errorf("audio: %+v, want AAC", a)
	}
}

// TestInterruptFinalizes stops a live run with SIGINT: the MP4 must be complete and playable.
func TestInterruptFinalizes(t *testing.T) {
	e2e.Long(t)
	dir := t.TempDir()
	p := writePipeline(t, dir, liveToMP4)
	run := startAvflow(t, nil, "run", "--progress-interval", "100ms", p)
	waitFor(t, func() bool { return framesDone(run.out.String()) >= 15 }, 30*time.Second, run.out)
	_ = run.cmd.Process.Signal(syscall.SIGINT)
	if code := run.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("interrupted run failed: exit %d\n%s", code, run.out.String())
	}
	got := probe(t, filepath.Join(dir, "live.mp4"))
	if n := got["video"].frames(); n < 10 {
		t.Fatalf("interrupted MP4 has %d frames, want a playable file with frames", n)
	}
}

const liveToMP4 = `
name: live
flow: drop-oldest
stages:
  - name: src
    kind: source
    params: {url: "lavfi:testsrc2=size=320x240:rate=30", realtime: true}
  - {name: vdec, kind: decode, inputs: [src.video]}
  - {name: venc, kind: encode, inputs: [vdec], params: {codec: libx264, preset: ultrafast}}
  - {name: out, kind: sink, inputs: [venc], params: {path: live.mp4}}
`

// TestBadInput: each mistake gives one clear error, a non-zero exit and no output.
func TestBadInput(t *testing.T) {
	e2e.Long(t)
	media := mediaDir(t)
	dir := t.TempDir()
	truncated := filepath.Join(dir, "truncated.mp4")
	data, err := os.ReadFile(filepath.Join(media, "car-detection.mp4"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, truncated, data[:len(data)/3])
	random := filepath.Join(dir, "random.mp4")
	noise := make([]byte, 64<<10)
	for i := range noise {
		noise[i] = byte(i*7919 + i/13)
	}
	writeFile(t, random, noise)
	tone := filepath.Join(dir, "tone.m4a")
	if out, err := exec.Command(e2e.Tool(t, "ffmpeg"), "-v", "error", "-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", tone).CombinedOutput(); err != nil {
		t.Fatalf("ffmpeg: %v\n%s", err, out)
	}
	// A NATS server that hangs up on every client.
	hangs := e2e.Listen(t)
	e2e.Serve(t, hangs, hangUp)
	transcode := func(url string) string {
		return `name: bad
stages:
  - {name: src, kind: source, params: {url: "` + url + `"}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: enc, kind: encode, inputs: [dec], params: {codec: libx264, preset: ultrafast}}
  - {name: out, kind: sink, inputs: [enc], params: {path: out/out.mp4}}
`
	}
	tests := []struct {
		name  string
		yaml  string
		args  []string
		code  int
		wants []string
	}{
		{"malformed yaml", "name: bad\nstages:\n  - {name: a, kind: source\n", nil, 2, []string{"p.yaml:2:1: malformed YAML"}},
		{"unknown stage kind", "name: bad\nstages:\n  - {name: a, kind: decoder}\n", nil, 2, []string{"p.yaml:3:21:", `unknown kind "decoder"`}},
		{"unknown param", "name: bad\nstages:\n  - {name: a, kind: source, params: {uri: x}}\n", nil, 2, []string{"p.yaml:3:43:", `unknown param "uri"`}},
		{"missing input file", transcode("missing.mp4"), nil, 2, []string{"p.yaml:3:5:", "input file not found", "missing.mp4"}},
		{"truncated mp4", transcode(truncated), nil, 1, []string{`stage "src"`, "source: input is truncated or corrupt", "truncated.mp4", "partial output removed"}},
		{"random bytes", transcode(random), nil, 1, []string{`stage "src"`, "source: opening input failed", "random.mp4"}},
		{"audio-only input", transcode(tone), nil, 1, []string{`stage "src"`, "tone.m4a has no video stream, but stage dec reads src.video"}},
		{"directory as input", transcode(dir), nil, 2, []string{"input is not a media file", "is a directory"}},
		{"unsupported codec", strings.Replace(transcode(filepath.Join(media, "car-detection.mp4")), "libx264", "libfoo", 1), nil, 2, []string{`unknown encoder "libfoo"`}},
		{"unreachable nats", transcode(filepath.Join(media, "car-detection.mp4")), []string{"--nats", fmt.Sprintf("nats://127.0.0.1:%d", portOf(hangs))}, 1, []string{"connecting to NATS at nats://127.0.0.1:", "failed"}},
		{"bad encoder option", strings.Replace(transcode(filepath.Join(media, "car-detection.mp4")), "preset: ultrafast", "preset: ultrafast, options: {nosuch: 1}", 1), nil, 1, []string{`stage "enc"`, `does not know option "nosuch"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := t.TempDir()
			p := writePipeline(t, d, tt.yaml)
			args := append([]string{"run"}, tt.args...)
			checkFailure(t, avflow(t, nil, append(args, p)...), tt.code, tt.wants, filepath.Join(d, "out"))
		})
	}
}

func TestValidateAndStagesCommands(t *testing.T) {
	r := avflow(t, []string{"AVFLOW_MEDIA=" + mediaDir(t)}, "validate", "../../examples/transcode/pipeline.yaml", "../../examples/live-hls/pipeline.yaml")
	if r.code != 0 || strings.Count(r.stdout, ": ok") != 2 {
		t.Fatalf("validate: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = avflow(t, nil, "stages")
	for _, kind := range []string{"source", "decode", "filter", "encode", "sink"} {
		if !strings.Contains(r.stdout, "\n"+kind+"\n") && !strings.HasPrefix(r.stdout, kind+"\n") {
			t.Errorf("avflow stages does not list %s", kind)
		}
	}
	if !strings.Contains(r.stdout, "default") || !strings.Contains(r.stdout, "required") {
		t.Errorf("avflow stages shows no defaults or required params:\n%s", r.stdout)
	}
}

func writePipeline(t *testing.T, dir, yaml string) string {
	t.Helper()
	p := filepath.Join(dir, "p.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestLiveHLS runs the live HLS example for a few seconds with a metrics
// endpoint, stops it with SIGINT and checks the playlist and segments.
func TestLiveHLS(t *testing.T) {
	e2e.Long(t)
	out := t.TempDir()
	// avflow binds a free port itself and logs the endpoint's address.
	run := startAvflow(t, []string{"AVFLOW_OUT=" + out}, "run", "--metrics-addr", "127.0.0.1:0", "../../examples/live-hls/pipeline.yaml")
	waitFor(t, func() bool {
		_, err := os.Stat(filepath.Join(out, "live1.ts"))
		return err == nil
	}, 30*time.Second, run.out)
	endpoint := regexp.MustCompile(`msg="metrics endpoint" url=(\S+)`).FindStringSubmatch(run.out.String())
	if endpoint == nil {
		t.Fatalf("no metrics endpoint logged:\n%s", run.out)
	}
	resp, err := http.Get(endpoint[1])
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(body), `avflow_stage_messages_in_total{pipeline="live-hls",stage="venc",kind="encode",device="cpu:0"}`) {
		t.Errorf("metrics endpoint lacks the encoder's counter:\n%s", body)
	}
	_ = run.cmd.Process.Signal(syscall.SIGINT)
	if code := run.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("live run did not stop cleanly: exit %d\n%s", code, run.out)
	}
	pl, err := os.ReadFile(filepath.Join(out, "live.m3u8"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(pl), "#EXT-X-ENDLIST") || !strings.Contains(string(pl), "live1.ts") {
		t.Errorf("playlist not finalised:\n%s", pl)
	}
	got := probe(t, filepath.Join(out, "live.m3u8"))
	if v := got["video"]; v.CodecName != "h264" || v.Width != 1280 || v.Height != 720 || v.frames() < 60 {
		t.Errorf("HLS video: %+v, want h264 1280x720 with at least 2 s of frames", v)
	}
	if got["audio"].CodecName != "aac" {
		t.Errorf("HLS has no AAC audio: %+v", got)
	}
	if strings.Contains(run.out.String(), "level=ERROR") {
		t.Errorf("errors logged:\n%s", run.out)
	}
}

// TestLoopAndHTTPSource reads a facecam clip over HTTP with loop and
// realtime pacing: the output holds more frames than one pass, with time
// running on (the muxer refuses timestamps that go back).
func TestLoopAndHTTPSource(t *testing.T) {
	e2e.Long(t)
	media := mediaDir(t)
	clip := filepath.Join(media, "facecam", "hungry.mkv")
	srv := httptest.NewServer(http.FileServer(http.Dir(filepath.Dir(clip))))
	defer srv.Close()
	one := probe(t, clip)["video"].frames()
	if one == 0 {
		t.Fatal("clip has no frames")
	}
	dir := t.TempDir()
	p := writePipeline(t, dir, fmt.Sprintf(`
name: loop
stages:
  - {name: src, kind: source, params: {url: "%s/hungry.mkv", loop: true, realtime: true, max_frames: %d}}
  - {name: copy, kind: encode, inputs: [src.video], params: {codec: copy}}
  - {name: out, kind: sink, inputs: [copy], params: {path: looped.mkv}}
`, srv.URL, one+15))
	t0 := time.Now()
	r := avflow(t, nil, "run", p)
	if r.code != 0 {
		t.Fatalf("exit %d:\n%s", r.code, r.stderr)
	}
	got := probe(t, filepath.Join(dir, "looped.mkv"))["video"]
	if got.frames() != one+15 {
		t.Errorf("looped output has %d frames, want %d", got.frames(), one+15)
	}
	// Real-time pacing: one pass plus half a second of a 30 fps clip takes about that long.
	if min := time.Duration(float64(one+15) / 30 * 0.8 * float64(time.Second)); time.Since(t0) < min {
		t.Errorf("realtime run took %s, want at least %s", time.Since(t0), min)
	}
}

// TestNATSServerDies kills the external NATS server mid-run: avflow must
// stop with an error that says so, exit non-zero and leave no output.
func TestNATSServerDies(t *testing.T) {
	e2e.Long(t)
	port, srv := startNATSServer(t)
	dir := t.TempDir()
	p := writePipeline(t, dir, liveToMP4)
	run := startAvflow(t, nil, "run", "--nats", fmt.Sprintf("nats://127.0.0.1:%d", port), p)
	run.waitLog(t, "output opened", 20*time.Second)
	_ = srv.cmd.Process.Kill()
	<-srv.done
	if code := run.wait(t, 30*time.Second); code == 0 {
		t.Fatalf("run went on as if nothing happened:\n%s", run.out)
	}
	if !strings.Contains(run.out.String(), "lost the connection to the NATS server") {
		t.Errorf("error does not say the NATS server was lost:\n%s", run.out)
	}
	for _, f := range []string{"live.mp4", "live.mp4.partial"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			t.Errorf("%s left behind", f)
		}
	}
}

// startNATSServer starts a real nats-server process on a free loopback port;
// it is killed when the test ends.
func startNATSServer(t *testing.T) (int, *proc) {
	bin := natsServerBin(t)
	srv, port := startListening(t, "tcp", func(port int) *exec.Cmd {
		return exec.Command(bin, "-a", "127.0.0.1", "-p", strconv.Itoa(port))
	})
	return port, srv
}

func natsServerBin(t *testing.T) string {
	if bin := os.Getenv("NATS_SERVER_BIN"); bin != "" {
		return bin
	}
	bin := filepath.Join(t.TempDir(), "nats-server")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/nats-io/nats-server/v2").CombinedOutput(); err != nil {
		t.Fatalf("building nats-server: %v\n%s", err, out)
	}
	return bin
}

// TestBadModels: a wrong, missing or mismatched model or runtime stops the
// pipeline before it starts, naming the model or card and the expected vs
// actual value.
func TestBadModels(t *testing.T) {
	e2e.Long(t)
	media := mediaDir(t)
	good := filepath.Join(e2e.Models(t), "ultraface", "version-RFB-320.onnx")
	data, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	mirror := t.TempDir()
	writeFile(t, filepath.Join(mirror, "ultraface", "truncated.onnx"), data[:len(data)/2])
	writeFile(t, filepath.Join(mirror, "ultraface", "version-RFB-320.onnx"), data)
	sum := func(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }
	card := func(file, sha, shape string) string {
		return fmt.Sprintf(`name: my-faces
file: %s
sha256: %s
sources: [{mirror: ultraface/%s}]
inputs: [{name: input, shape: %s, mean: [127, 127, 127], std: [128, 128, 128]}]
outputs: [{name: scores, shape: [1, 4420, 2]}, {name: boxes, shape: [1, 4420, 4]}]
labels: [background, face]
decoder: {type: ultraface, threshold: 0.6}
`, file, sha, file, shape)
	}
	pipelineFor := func(model string) string {
		return fmt.Sprintf(`name: bad
stages:
  - {name: cam, kind: source, params: {url: %q}}
  - {name: dec, kind: decode, inputs: [cam.video]}
  - {name: faces, kind: infer, inputs: [dec], params: {model: %s}}
  - {name: enc, kind: encode, inputs: [faces], params: {codec: libx264}}
  - {name: out, kind: sink, inputs: [enc], params: {path: out/out.mp4}}
`, filepath.Join(media, "facecam", "hungry.mkv"), model)
	}
	tests := []struct {
		name  string
		card  string // written to card.yaml when set
		model string
		args  []string
		code  int
		wants []string
	}{
		{"unknown card", "", "ultraface-rfb-999", nil, 2, []string{"p.yaml:5:5", `unknown model card "ultraface-rfb-999"`}},
		{"missing card file", "", "nosuch.yaml", nil, 2, []string{"nosuch.yaml"}},
		{"wrong sha", card("version-RFB-320.onnx", strings.Repeat("ab", 32), "[1, 3, 240, 320]"), "card.yaml", nil, 1,
			[]string{"model my-faces", "sha256 " + sum(data), "the card says " + strings.Repeat("ab", 32)}},
		{"truncated model file", card("truncated.onnx", sum(data[:len(data)/2]), "[1, 3, 240, 320]"), "card.yaml", nil, 1,
			[]string{"model my-faces", "onnx: model cannot be used", "truncated.onnx"}},
		{"shape mismatch", card("version-RFB-320.onnx", sum(data), "[1, 3, 480, 640]"), "card.yaml", nil, 1,
			[]string{"card my-faces", `input "input": card says shape [1 3 480 640], model has [1 3 240 320]`}},
		{"runtime missing", "", "ultraface-rfb-320", []string{"--onnxruntime", "/nonexistent/libonnxruntime.so.1"}, 1,
			[]string{"ONNX Runtime library unavailable", "/nonexistent/libonnxruntime.so.1 does not exist"}},
		{"not a runtime", "", "ultraface-rfb-320", []string{"--onnxruntime", "/bin/true"}, 1,
			[]string{"ONNX Runtime library unavailable", "loading /bin/true failed"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := t.TempDir()
			if tt.card != "" {
				writeFile(t, filepath.Join(d, "card.yaml"), []byte(tt.card))
			}
			p := writePipeline(t, d, pipelineFor(tt.model))
			env := []string{"AVFLOW_MODEL_MIRROR=" + mirror, "AVFLOW_MODELS=" + t.TempDir(), "AVFLOW_OFFLINE=1"}
			checkFailure(t, avflow(t, env, append(append(tt.args, "run"), p)...), tt.code, tt.wants, filepath.Join(d, "out"))
		})
	}
}

// TestEncoders encodes a lavfi clip with each video encoder the issue names.
func TestEncoders(t *testing.T) {
	e2e.Long(t)
	tests := []struct {
		codec, params, file, want string
	}{
		{"libx264", "preset: ultrafast, crf: 28", "out.mp4", "h264"},
		{"libx265", "preset: ultrafast, crf: 30", "out.mkv", "hevc"},
		{"libvpx-vp9", "crf: 40, options: {deadline: realtime, cpu-used: \"8\"}", "out.webm", "vp9"},
		{"libsvtav1", "preset: \"12\", crf: 45", "out.mkv", "av1"},
	}
	for _, tt := range tests {
		t.Run(tt.codec, func(t *testing.T) {
			dir := t.TempDir()
			p := writePipeline(t, dir, fmt.Sprintf(`name: enc
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2=size=320x240:rate=25", max_frames: 20}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: enc, kind: encode, inputs: [dec], params: {codec: %s, gop: 10, %s}}
  - {name: out, kind: sink, inputs: [enc], params: {path: %s}}
`, tt.codec, tt.params, tt.file))
			r := avflow(t, nil, "run", p)
			if r.code != 0 {
				t.Fatalf("exit %d:\n%s", r.code, r.stderr)
			}
			v := probe(t, filepath.Join(dir, tt.file))["video"]
			if v.CodecName != tt.want || v.Width != 320 || v.frames() != 20 {
				t.Fatalf("got %+v, want 20 %s 320x240 frames", v, tt.want)
			}
		})
	}
}

// TestNetworkSinks pushes a stream to an ffmpeg CLI listening for RTMP and
// for SRT on loopback, and checks what it received.
func TestNetworkSinks(t *testing.T) {
	e2e.Long(t)
	tests := []struct {
		name, proto, listen, push, ext string
	}{
		{"rtmp", "tcp", "rtmp://127.0.0.1:%d/live/test", "rtmp://127.0.0.1:%d/live/test", "flv"},
		{"srt", "udp", "srt://127.0.0.1:%d?mode=listener", "srt://127.0.0.1:%d?mode=caller", "ts"},
	}
	ffmpeg := e2e.Tool(t, "ffmpeg")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			got := filepath.Join(dir, "received."+tt.ext)
			// The receiver is pushed to once it has bound its port.
			recv, port := startListening(t, tt.proto, func(port int) *exec.Cmd {
				args := []string{"-v", "error", "-y"}
				if tt.name == "rtmp" {
					args = append(args, "-listen", "1")
				}
				return exec.Command(ffmpeg, append(args, "-i", fmt.Sprintf(tt.listen, port), "-c", "copy", got)...)
			})
			p := writePipeline(t, dir, fmt.Sprintf(`name: push
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2=size=320x240:rate=25", max_frames: 50, realtime: true}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: enc, kind: encode, inputs: [dec], params: {codec: libx264, preset: ultrafast, tune: zerolatency, gop: 25}}
  - {name: out, kind: sink, inputs: [enc], params: {path: %q}}
`, fmt.Sprintf(tt.push, port)))
			r := avflow(t, nil, "run", p)
			if r.code != 0 {
				t.Fatalf("exit %d:\n%s", r.code, r.stderr)
			}
			// An SRT listener reports the caller hanging up as an I/O error;
			// what counts is what it wrote.
			recv.wait(t, 60*time.Second)
			v := probe(t, got)["video"]
			if v.CodecName != "h264" || v.Width != 320 || v.frames() != 50 {
				t.Fatalf("received %+v, want 50 h264 320x240 frames\nreceiver: %s", v, recv.out)
			}
		})
	}
}

// TestWrongRuntimeVersion builds a tiny library that says it is ONNX
// Runtime 1.23.0: avflow must refuse it with both versions in the message.
func TestWrongRuntimeVersion(t *testing.T) {
	e2e.Long(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "fake.c")
	writeFile(t, src, []byte(`
typedef struct { const void *(*GetApi)(unsigned int); const char *(*GetVersionString)(void); } base_t;
static const void *api(unsigned int v) { (void)v; return 0; }
static const char *ver(void) { return "1.23.0"; }
static const base_t base = { api, ver };
const base_t *OrtGetApiBase(void) { return &base; }
`))
	lib := filepath.Join(dir, "libonnxruntime.so.1")
	if out, err := exec.Command("cc", "-shared", "-fPIC", "-o", lib, src).CombinedOutput(); err != nil {
		t.Fatalf("cc: %v\n%s", err, out)
	}
	r := avflow(t, nil, "--onnxruntime", lib, "models", "check", "ultraface-slim-320")
	if r.code == 0 || !strings.Contains(r.stderr, "is ONNX Runtime 1.23.0, avflow needs 1.24.1") {
		t.Fatalf("exit %d, want a version error:\n%s", r.code, r.stderr)
	}
}

// TestAcceleratorFallback: a stage that asks for a GPU on this CPU-only
// machine runs on the CPU with one warning; with strict: true it fails.
func TestAcceleratorFallback(t *testing.T) {
	e2e.Long(t)
	pipe := func(extra string) string {
		return `name: fb
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2=size=160x120:rate=10", max_frames: 5}}
  - {name: dec, kind: decode, inputs: [src.video], accelerator: gpu` + extra + `}
  - {name: enc, kind: encode, inputs: [dec], params: {codec: libx264}}
  - {name: out, kind: sink, inputs: [enc], params: {path: out/fb.mkv}}
`
	}
	dir := t.TempDir()
	r := avflow(t, nil, "run", writePipeline(t, dir, pipe("")))
	if r.code != 0 {
		t.Fatalf("fallback run failed: %d\n%s", r.code, r.stderr)
	}
	if n := strings.Count(r.stderr, "accelerator fallback"); n != 1 || !strings.Contains(r.stderr, "stage=dec") || !strings.Contains(r.stderr, "device=cpu:0") {
		t.Errorf("want one fallback warning for dec, got %d:\n%s", n, r.stderr)
	}
	dir = t.TempDir()
	r = avflow(t, nil, "run", writePipeline(t, dir, pipe(", strict: true")))
	if r.code != 1 || !strings.Contains(r.stderr, `stage "dec" (decode): accelerator unavailable: stage "dec" asked for gpu (strict)`) {
		t.Fatalf("strict: exit %d\n%s", r.code, r.stderr)
	}
	assertNoOutput(t, filepath.Join(dir, "out"))
}

// TestCalibratePlanRun: calibrate a pipeline on this machine's CPU, plan 2
// streams from the profile, and run with the placement.
func TestCalibratePlanRun(t *testing.T) {
	e2e.Long(t)
	dir := t.TempDir()
	p := writePipeline(t, dir, `name: cal
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2=size=320x240:rate=30", max_frames: 30}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: scale, kind: filter, inputs: [dec], params: {graph: "scale=160:120"}}
  - {name: enc, kind: encode, inputs: [scale], params: {codec: libx264, preset: ultrafast}}
  - {name: out, kind: sink, inputs: [enc], params: {path: out/cal.mkv}}
`)
	profile := filepath.Join(dir, "profile.yaml")
	r := avflow(t, nil, "calibrate", "--frames", "60", "-o", profile, p)
	if r.code != 0 {
		t.Fatalf("calibrate: %d\n%s", r.code, r.stderr)
	}
	b, err := os.ReadFile(profile)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"pipeline: cal", "- enc", "perf:", "cpu:", "fps:", "p99_ms:"} {
		if !strings.Contains(string(b), want) {
			t.Fatalf("profile lacks %q:\n%s", want, b)
		}
	}
	plan := filepath.Join(dir, "plan.yaml")
	r = avflow(t, nil, "plan", "--profile", profile, "--streams", "2", "--fps", "30", "-o", plan, p)
	if r.code != 0 || !strings.Contains(r.stdout, "total: $") || !strings.Contains(r.stdout, "enc ") {
		t.Fatalf("plan: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = avflow(t, nil, "plan", "--profile", profile, "--streams", "2", "--fps", "30", "--p99-ms", "0.0001", p)
	if r.code != 1 || !strings.Contains(r.stderr, "cannot keep p99 under") {
		t.Fatalf("impossible p99: %d\n%s", r.code, r.stderr)
	}
	r = avflow(t, nil, "run", "--placement", plan, p)
	if r.code != 0 || !strings.Contains(r.stderr, "device=cpu:0") {
		t.Fatalf("run --placement: %d\n%s", r.code, r.stderr)
	}
	if v := probe(t, filepath.Join(dir, "out", "cal.mkv"))["video"]; v.frames() != 30 || v.Width != 160 {
		t.Fatalf("output %+v", v)
	}
}

// TestPlacementReplicas: a placement's replicas reach the stages that can
// share their input (infer on every frame) and not the ones that keep
// state (decode), which run as one instance.
func TestPlacementReplicas(t *testing.T) {
	dir := t.TempDir()
	pipe := filepath.Join(dir, "p.yaml")
	if err := os.WriteFile(pipe, []byte(`name: p
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2"}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: faces, kind: infer, inputs: [dec], params: {model: ultraface-slim-320}}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	place := filepath.Join(dir, "place.yaml")
	if err := os.WriteFile(place, []byte(`pipeline: p
stages:
  - {name: src, device: cpu, replicas: 1}
  - {name: dec, device: cpu, replicas: 3}
  - {name: faces, device: cpu, replicas: 2}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := load(pipe, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := applyPlacement(cfg, place); err != nil {
		t.Fatal(err)
	}
	if got := cfg.Stage("faces").Replicas; got != 2 {
		t.Errorf("faces: %d replicas, want 2", got)
	}
	if got := cfg.Stage("dec").Replicas; got != 1 {
		t.Errorf("dec (stateful): %d replicas, want 1", got)
	}
}

// TestAutoPlacementExample runs the auto-placement example: here (no GPU)
// every stage lands on the CPU, quietly (auto is not a fallback), the start
// lines name each stage's device, and the MP4 is the transcode's.
func TestAutoPlacementExample(t *testing.T) {
	e2e.Long(t)
	media := mediaDir(t)
	in := probe(t, filepath.Join(media, "car-detection.mp4"))
	out := t.TempDir()
	r := avflow(t, []string{"AVFLOW_MEDIA=" + media, "AVFLOW_OUT=" + out}, "--log-format", "text", "run", "--transport", "local", "../../examples/auto-placement/pipeline.yaml")
	if r.code != 0 {
		t.Fatalf("exit %d:\n%s", r.code, r.stderr)
	}
	for _, st := range []string{"vdec", "scale", "venc"} {
		if !strings.Contains(r.stderr, `msg="stage ready" pipeline=auto-placement stage=`+st) {
			t.Errorf("no start line for %s:\n%s", st, r.stderr)
		}
	}
	if _, err := os.Stat("/dev/nvidia0"); err != nil && strings.Contains(r.stderr, "accelerator fallback") {
		t.Errorf("auto on a CPU-only machine is not a fallback:\n%s", r.stderr)
	}
	checkTranscode(t, filepath.Join(out, "auto-placement.mp4"), in)
}

func TestFlagsFirst(t *testing.T) {
	app := &cli.App{Commands: []*cli.Command{planCmd(), runCmd(), modelsCmd()}}
	tests := []struct{ in, want string }{
		{"avflow plan p.yaml --profile x.yaml --streams 8", "avflow plan --profile x.yaml --streams 8 p.yaml"},
		{"avflow --log-level warn run p.yaml --transport local --set a.b=1", "avflow --log-level warn run --transport local --set a.b=1 p.yaml"},
		{"avflow run p.yaml -- --not-a-flag", "avflow run p.yaml -- --not-a-flag"},
		{"avflow run --help", "avflow run --help"},
		{"avflow models pull ultraface-rfb-320", "avflow models pull ultraface-rfb-320"},
		{"avflow version", "avflow version"},
	}
	for _, tt := range tests {
		if got := strings.Join(flagsFirst(app, strings.Fields(tt.in)), " "); got != tt.want {
			t.Errorf("%q: got %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestProgressIntervalMustBePositive: a zero or negative --progress-interval
// is a command-line mistake (exit 2, one line saying so), not a panic.
func TestProgressIntervalMustBePositive(t *testing.T) {
	dir := t.TempDir()
	p := writePipeline(t, dir, `name: pi
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2=size=160x120:rate=10", max_frames: 3}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: enc, kind: encode, inputs: [dec], params: {codec: libx264}}
  - {name: out, kind: sink, inputs: [enc], params: {path: out/pi.mkv}}
`)
	for _, every := range []string{"0s", "-1s"} {
		t.Run(every, func(t *testing.T) {
			r := avflow(t, nil, "run", "--progress-interval", every, p)
			want := "avflow run: --progress-interval must be more than 0, got " + every
			if r.code != exitInvalid || !strings.Contains(r.stderr, want) || strings.Contains(r.stderr, "panic") {
				t.Fatalf("exit %d, want %d with %q:\n%s", r.code, exitInvalid, want, r.stderr)
			}
			assertNoOutput(t, filepath.Join(dir, "out"))
		})
	}
}

// TestStopSignals: one SIGINT, SIGTERM or SIGHUP stops a live run cleanly
// (the MP4 is finalised), also when GNU timeout delivers its SIGTERM twice
// (to the child, then to its process group); a second signal aborts.
func TestStopSignals(t *testing.T) {
	e2e.Long(t)
	timeout := e2e.Tool(t, "timeout")
	tests := []struct {
		name string
		// start runs avflow on the pipeline; stop signals it once frames flow.
		start func(t *testing.T, p string) *proc
		stop  func(t *testing.T, run *proc)
	}{
		{"SIGINT", avflowRun, sendSignal(syscall.SIGINT)},
		{"SIGHUP", avflowRun, sendSignal(syscall.SIGHUP)},
		{"SIGTERM", avflowRun, sendSignal(syscall.SIGTERM)},
		// GNU timeout relays a signal it gets exactly as it sends its own
		// when the time is up: to avflow, then to their process group.
		{"SIGTERM relayed by timeout", func(t *testing.T, p string) *proc {
			return startProc(t, exec.Command(timeout, "-s", "TERM", "600", avflowBin, "run", "--progress-interval", "100ms", p))
		}, sendSignal(syscall.SIGTERM)},
		{"timeout -s TERM 5", func(t *testing.T, p string) *proc {
			return startProc(t, exec.Command(timeout, "-s", "TERM", "5", avflowBin, "run", "--progress-interval", "100ms", p))
		}, func(*testing.T, *proc) {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			run := tt.start(t, writePipeline(t, dir, liveToMP4))
			waitFor(t, func() bool { return framesDone(run.out.String()) >= 15 }, 30*time.Second, run.out)
			tt.stop(t, run)
			code := run.wait(t, 30*time.Second)
			log := run.out.String()
			if strings.Contains(log, "aborting") || !strings.Contains(log, "stopping") {
				t.Errorf("one signal must stop the run, not abort it:\n%s", log)
			}
			if code != 0 && code != 124 { // timeout's own code when the time was up
				t.Errorf("exit %d:\n%s", code, log)
			}
			if n := probe(t, filepath.Join(dir, "live.mp4"))["video"].frames(); n < 15 {
				t.Errorf("the stopped run's MP4 has %d frames, want a finalised file with at least 15", n)
			}
		})
	}
}

func avflowRun(t *testing.T, p string) *proc {
	return startAvflow(t, nil, "run", "--progress-interval", "100ms", p)
}

func sendSignal(sig syscall.Signal) func(*testing.T, *proc) {
	return func(t *testing.T, run *proc) {
		if err := run.cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSecondSignalAborts: a run that takes its time to finish the frames in
// flight (a filter that lets two frames through a second) is aborted by a
// second signal, of any kind, coming after the first: it exits at once
// with an error and leaves no output.
func TestSecondSignalAborts(t *testing.T) {
	e2e.Long(t)
	for _, sigs := range [][2]syscall.Signal{{syscall.SIGINT, syscall.SIGINT}, {syscall.SIGTERM, syscall.SIGHUP}} {
		t.Run(sigs[0].String()+" then "+sigs[1].String(), func(t *testing.T) {
			dir := t.TempDir()
			run := avflowRun(t, writePipeline(t, dir, `name: slow
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2=size=160x120:rate=10"}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: slow, kind: filter, inputs: [dec], params: {graph: "setpts=5*PTS,realtime"}}
  - {name: enc, kind: encode, inputs: [slow], params: {codec: libx264, preset: ultrafast}}
  - {name: out, kind: sink, inputs: [enc], params: {path: out/slow.mp4}}
`))
			run.waitLog(t, "output opened", 30*time.Second)
			sendSignal(sigs[0])(t, run)
			run.waitLog(t, "stopping", 10*time.Second)
			stopped := time.Now()
			// A repeat within the repeat window is the same request
			// (GNU timeout signals twice); this one is a new one.
			waitFor(t, func() bool { return time.Since(stopped) > 2*signalRepeat }, 10*time.Second, run.out)
			select {
			case <-run.done:
				t.Fatalf("the run ended before the second signal:\n%s", run.out)
			default:
			}
			sendSignal(sigs[1])(t, run)
			aborted := time.Now()
			if code := run.wait(t, 10*time.Second); code != exitRun {
				t.Errorf("exit %d, want %d:\n%s", code, exitRun, run.out)
			}
			if d := time.Since(aborted); d > 5*time.Second {
				t.Errorf("the abort took %s", d)
			}
			if !strings.Contains(run.out.String(), "aborting") {
				t.Errorf("no abort logged:\n%s", run.out)
			}
			assertNoOutput(t, filepath.Join(dir, "out"))
		})
	}
}

// TestRunWarnsForItsTransport: `avflow run --transport` changes what
// becomes of a port no stage reads, and the warning says so.
func TestRunWarnsForItsTransport(t *testing.T) {
	e2e.Long(t)
	dir := t.TempDir()
	p := writePipeline(t, dir, `name: unread
transport: nats
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2=size=64x48:rate=10", max_frames: 3}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: enc, kind: encode, inputs: [dec], params: {codec: mpeg4}}
`)
	for _, tt := range []struct{ transport, want string }{
		{"", "published on avflow.unread.enc.out"},
		{"local", "dropped"},
	} {
		args := []string{"run"}
		if tt.transport != "" {
			args = append(args, "--transport", tt.transport)
		}
		r := avflow(t, nil, append(args, p)...)
		if r.code != 0 {
			t.Fatalf("%v: exit %d:\n%s", args, r.code, r.stderr)
		}
		var line string
		for _, l := range strings.Split(r.stderr, "\n") {
			if strings.Contains(l, `stage \"enc\" port \"out\"`) {
				line = l
			}
		}
		if !strings.Contains(line, tt.want) {
			t.Errorf("%v: the warning for enc.out should say %q; stderr:\n%s", args, tt.want, r.stderr)
		}
	}
}
