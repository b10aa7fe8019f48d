package main

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline/e2e"
)

// splitPipeline is a transcode whose middle stage (draw, which takes each
// frame on its own: replicable) other processes serve.
// realtime paces the source (frames at 25 fps).
func splitPipeline(t *testing.T, dir string, frames int, realtime bool) string {
	return splitPipelineTo(t, dir, dir, frames, realtime)
}

// splitPipelineTo is splitPipeline writing its output to out.
func splitPipelineTo(t *testing.T, dir, out string, frames int, realtime bool) string {
	return writePipeline(t, dir, fmt.Sprintf(`name: split
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2=size=640x360:rate=25", max_frames: %d, realtime: %t}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: flt, kind: draw, inputs: [dec]}
  - {name: enc, kind: encode, inputs: [flt], params: {codec: libx264, preset: ultrafast}}
  - {name: out, kind: sink, inputs: [enc], params: {path: %q}}
`, frames, realtime, filepath.Join(out, "out.mp4")))
}

// stageIn is the "in" count of a stage in an avflow end table.
func stageIn(t *testing.T, log, stage string) int {
	t.Helper()
	m := regexp.MustCompile(`(?m)^\s+`+stage+`\s+\w+\s+(\d+)\s`).FindAllStringSubmatch(log, -1)
	if len(m) == 0 {
		t.Fatalf("no end table row for %s in:\n%s", stage, log)
	}
	n, _ := strconv.Atoi(m[len(m)-1][1])
	return n
}

// monotonicFrames checks that a file's video frames have increasing
// timestamps (the replicas' outputs were put back in order) and returns
// how many there are.
func monotonicFrames(t *testing.T, path string) int {
	t.Helper()
	out, err := exec.Command(e2e.Tool(t, "ffprobe"), "-v", "error", "-select_streams", "v", "-show_entries", "frame=pts", "-of", "csv=p=0", path).Output()
	if err != nil {
		t.Fatalf("ffprobe %s: %v", path, err)
	}
	n, prev := 0, int64(-1<<62)
	for _, l := range strings.Fields(string(out)) {
		v, err := strconv.ParseInt(strings.TrimSuffix(l, ","), 10, 64)
		if err != nil {
			continue
		}
		if v <= prev {
			t.Errorf("%s: frame %d has pts %d after %d", path, n, v, prev)
		}
		prev = v
		n++
	}
	return n
}

// TestServeReplicasShareFrames: a stage served by two processes takes
// part of the frames in each (both > 0, sum = all), nothing is lost in
// block flow, the run's output has every frame in order, and every
// process exits 0.
func TestServeReplicasShareFrames(t *testing.T) {
	dir := t.TempDir()
	p := splitPipeline(t, dir, 150, false)
	port, _ := startNATSServer(t)
	url := "nats://127.0.0.1:" + strconv.Itoa(port)
	s1 := startAvflow(t, nil, "serve", p, "--stage", "flt", "--nats", url)
	s2 := startAvflow(t, nil, "serve", p, "--stage", "flt", "--nats", url)
	run := startAvflow(t, nil, "run", p, "--nats", url, "--remote", "flt")
	for name, pr := range map[string]*proc{"run": run, "serve 1": s1, "serve 2": s2} {
		if code := pr.wait(t, 90*time.Second); code != 0 {
			t.Fatalf("%s: exit %d:\n%s", name, code, pr.out)
		}
	}
	a, b := stageIn(t, s1.out.String(), "flt"), stageIn(t, s2.out.String(), "flt")
	if a == 0 || b == 0 || a+b != 150 {
		t.Errorf("the replicas took %d and %d frames, want both > 0 and 150 in all", a, b)
	}
	if n := monotonicFrames(t, filepath.Join(dir, "out.mp4")); n != 150 {
		t.Errorf("output has %d frames, want 150", n)
	}
	for _, want := range []string{`remote stage found`, `edge dec -> flt crosses processes with raw video frames`, `the edge src.video -> dec carries packets`} {
		if !strings.Contains(run.out.String(), want) {
			t.Errorf("run's log lacks %q:\n%s", want, run.out)
		}
	}
}

// TestServeReplicaStopsMidRun: SIGTERM on one of two replicas makes it
// finish the frames it has taken and exit 0; the other takes the rest and
// the run completes with every frame.
func TestServeReplicaStopsMidRun(t *testing.T) {
	dir := t.TempDir()
	p := splitPipeline(t, dir, 125, true) // 5 s of frames
	port, _ := startNATSServer(t)
	url := "nats://127.0.0.1:" + strconv.Itoa(port)
	s1 := startAvflow(t, nil, "serve", p, "--stage", "flt", "--nats", url)
	s2 := startAvflow(t, nil, "serve", p, "--stage", "flt", "--nats", url)
	run := startAvflow(t, nil, "run", p, "--nats", url, "--remote", "flt", "--progress-interval", "200ms")
	waitFor(t, func() bool { return framesDone(run.out.String()) >= 20 }, 30*time.Second, run.out)
	if err := s1.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := s1.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("the stopped replica exits %d:\n%s", code, s1.out)
	}
	for name, pr := range map[string]*proc{"run": run, "serve 2": s2} {
		if code := pr.wait(t, 90*time.Second); code != 0 {
			t.Fatalf("%s: exit %d:\n%s", name, code, pr.out)
		}
	}
	a, b := stageIn(t, s1.out.String(), "flt"), stageIn(t, s2.out.String(), "flt")
	if a == 0 || a+b != 125 {
		t.Errorf("the replicas took %d and %d frames, want the first > 0 and 125 in all", a, b)
	}
	if n := monotonicFrames(t, filepath.Join(dir, "out.mp4")); n != 125 {
		t.Errorf("output has %d frames, want 125", n)
	}
}

// TestRemoteStageProblems: a remote stage nobody serves fails the run
// after its timeout, naming the service and the subjects it would read,
// with no output file; serving a stage the file lacks, or remote stages
// without a server, is a usage error naming what exists.
func TestRemoteStageProblems(t *testing.T) {
	dir := t.TempDir()
	p := splitPipelineTo(t, t.TempDir(), dir, 25, false)
	port, _ := startNATSServer(t)
	url := "nats://127.0.0.1:" + strconv.Itoa(port)
	tests := []struct {
		name  string
		args  []string
		code  int
		wants []string
	}{
		{"never served", []string{"run", p, "--nats", url, "--remote", "flt", "--remote-timeout", "1s"}, exitRun,
			[]string{`stage "flt": no instance of service split-flt answered within 1s`, "avflow serve", "--stage flt", "avflow.split.dec.out"}},
		{"serve an unknown stage", []string{"serve", p, "--stage", "nope", "--nats", url}, exitInvalid,
			[]string{`stage to serve "nope": the pipeline has no such stage (stages: src, dec, flt, enc, out)`}},
		{"remote an unknown stage", []string{"run", p, "--nats", url, "--remote", "nope"}, exitInvalid,
			[]string{`remote stage "nope": the pipeline has no such stage`}},
		{"remote without a server", []string{"run", p, "--remote", "flt"}, exitInvalid,
			[]string{"remote stages need --nats"}},
		{"serve without a server", []string{"serve", p, "--stage", "flt"}, exitInvalid,
			[]string{`Required flag "nats" not set`}},
		{"remote over the local transport", []string{"run", p, "--nats", url, "--remote", "flt", "--transport", "local"}, exitInvalid,
			[]string{"transport local cannot reach stages served by other processes (flt)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := avflow(t, nil, tt.args...)
			if r.code != tt.code {
				t.Fatalf("exit %d, want %d:\n%s", r.code, tt.code, r.stderr)
			}
			for _, w := range tt.wants {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
				}
			}
			assertNoOutput(t, dir)
		})
	}
}

// TestServeConfigMismatch: a stage served under one deployment name from
// two files whose params differ is refused, in serve and in run, naming
// the other instance.
func TestServeConfigMismatch(t *testing.T) {
	dir := t.TempDir()
	p := splitPipelineTo(t, t.TempDir(), dir, 25, false)
	port, _ := startNATSServer(t)
	url := "nats://127.0.0.1:" + strconv.Itoa(port)
	s1 := startAvflow(t, nil, "serve", p, "--stage", "flt", "--nats", url)
	s1.waitLog(t, `stage ready`, 30*time.Second)
	const want = `serves another config of it`
	r := avflow(t, nil, "serve", p, "--stage", "flt", "--nats", url, "--set", "flt.thickness=5")
	if r.code != exitRun || !strings.Contains(r.stderr, want) {
		t.Errorf("a second serve with other params: exit %d, want %d with %q:\n%s", r.code, exitRun, want, r.stderr)
	}
	r = avflow(t, nil, "run", p, "--nats", url, "--remote", "flt", "--set", "flt.thickness=5")
	if r.code != exitRun || !strings.Contains(r.stderr, want) {
		t.Errorf("a run with other params: exit %d, want %d with %q:\n%s", r.code, exitRun, want, r.stderr)
	}
	assertNoOutput(t, dir)
}

// TestServeStatefulStageOnce: a stage that keeps state across messages
// (an encoder) is refused a second serving process.
func TestServeStatefulStageOnce(t *testing.T) {
	p := splitPipelineTo(t, t.TempDir(), t.TempDir(), 25, false)
	port, _ := startNATSServer(t)
	url := "nats://127.0.0.1:" + strconv.Itoa(port)
	s1 := startAvflow(t, nil, "serve", p, "--stage", "enc", "--nats", url)
	s1.waitLog(t, `stage ready`, 30*time.Second)
	r := avflow(t, nil, "serve", p, "--stage", "enc", "--nats", url)
	const want = `stage "enc" is served already`
	if r.code != exitRun || !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, "keeps state") {
		t.Errorf("a second serve of the encoder: exit %d, want %d with %q:\n%s", r.code, exitRun, want, r.stderr)
	}
}

// TestServeReplicaKilledLive: in live flow, SIGKILL of one of two
// replicas loses only the frames it held: the stream goes on through the
// other, the run completes and reports the missing instance.
func TestServeReplicaKilledLive(t *testing.T) {
	dir := t.TempDir()
	p := writePipeline(t, dir, fmt.Sprintf(`name: live
flow: drop-oldest
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2=size=320x240:rate=25", max_frames: 250, realtime: true}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: flt, kind: draw, inputs: [dec]}
  - {name: enc, kind: encode, inputs: [flt], params: {codec: libx264, preset: ultrafast}}
  - {name: out, kind: sink, inputs: [enc], params: {path: %q}}
`, filepath.Join(dir, "out.mp4")))
	port, _ := startNATSServer(t)
	url := "nats://127.0.0.1:" + strconv.Itoa(port)
	s1 := startAvflow(t, nil, "serve", p, "--stage", "flt", "--nats", url)
	s2 := startAvflow(t, nil, "serve", p, "--stage", "flt", "--nats", url)
	run := startAvflow(t, nil, "run", p, "--nats", url, "--remote", "flt", "--progress-interval", "200ms")
	waitFor(t, func() bool { return framesDone(run.out.String()) >= 25 }, 30*time.Second, run.out)
	if err := s1.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killedAt := framesDone(run.out.String())
	// Within 2 s (50 frames at 25 fps) frames flow again.
	waitFor(t, func() bool { return framesDone(run.out.String()) >= killedAt+10 }, 2*time.Second+time.Second, run.out)
	for name, pr := range map[string]*proc{"run": run, "serve 2": s2} {
		if code := pr.wait(t, 90*time.Second); code != 0 {
			t.Fatalf("%s: exit %d:\n%s", name, code, pr.out)
		}
	}
	if !strings.Contains(run.out.String(), "a remote stage instance stopped answering") {
		t.Errorf("run does not report the killed instance:\n%s", run.out)
	}
	n := monotonicFrames(t, filepath.Join(dir, "out.mp4"))
	if n < 200 || n > 250 {
		t.Errorf("output has %d frames, want most of the 250", n)
	}
	t.Logf("%d of 250 frames after a replica was killed at frame %d", n, killedAt)
}
