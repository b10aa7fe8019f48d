package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline/e2e"
)

// hangingInputs are inputs that block a source: a server that accepts and
// never answers, and a FIFO nobody writes to. ready says when the source
// is waiting on it.
func hangingInput(t *testing.T, kind string) (url string, ready func(run *proc) bool) {
	switch kind {
	case "silent http server":
		l := e2e.Listen(t)
		var accepted atomic.Bool
		e2e.Serve(t, l, func(c net.Conn) { accepted.Store(true); silent(c) })
		return fmt.Sprintf("http://127.0.0.1:%d/live.ts", portOf(l)), func(*proc) bool { return accepted.Load() }
	case "fifo without writer":
		path := filepath.Join(t.TempDir(), "in.fifo")
		if err := syscall.Mkfifo(path, 0o644); err != nil {
			t.Fatal(err)
		}
		return path, func(run *proc) bool { return strings.Contains(run.out.String(), "embedded NATS server started") }
	}
	t.Fatalf("no input %q", kind)
	return "", nil
}

func hangingPipeline(url, options string) string {
	return fmt.Sprintf(`name: hang
stages:
  - {name: src, kind: source, params: {url: %q%s}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: enc, kind: encode, inputs: [dec], params: {codec: libx264, preset: ultrafast}}
  - {name: out, kind: sink, inputs: [enc], params: {path: out/out.mp4}}
`, url, options)
}

// TestHangingInputStopsOnSignal: one SIGINT or SIGTERM ends a run whose
// source is still waiting for its input, within seconds, with an error
// naming the input and no output left.
func TestHangingInputStopsOnSignal(t *testing.T) {
	e2e.Long(t)
	for _, kind := range []string{"silent http server", "fifo without writer"} {
		for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
			t.Run(kind+" "+sig.String(), func(t *testing.T) {
				dir := t.TempDir()
				url, ready := hangingInput(t, kind)
				run := startAvflow(t, nil, "run", writePipeline(t, dir, hangingPipeline(url, "")))
				waitFor(t, func() bool { return ready(run) }, 30*time.Second, run.out)
				sendSignal(sig)(t, run)
				if code := run.wait(t, 5*time.Second); code != exitRun {
					t.Errorf("exit %d, want %d", code, exitRun)
				}
				if log := run.out.String(); !strings.Contains(log, "source: opening input failed: "+url) {
					t.Errorf("the error does not name the input:\n%s", log)
				}
				assertNoOutput(t, filepath.Join(dir, "out"))
			})
		}
	}
}

// TestSilentServerTimesOut: a source on a server that never answers fails
// on its own after its timeout (here options: {rw_timeout: 1 s}), naming
// the URL and the option.
func TestSilentServerTimesOut(t *testing.T) {
	e2e.Long(t)
	dir := t.TempDir()
	url, _ := hangingInput(t, "silent http server")
	start := time.Now()
	r := avflow(t, nil, "run", writePipeline(t, dir, hangingPipeline(url, ", options: {rw_timeout: \"1000000\"}")))
	took := time.Since(start)
	checkFailure(t, r, exitRun, []string{"source: opening input failed: " + url, "nothing received for 1s", "rw_timeout"}, filepath.Join(dir, "out"))
	if took > 10*time.Second {
		t.Errorf("a 1 s timeout ended the run after %s", took)
	}
}

// TestFIFOInput: a FIFO written to by another program (ffmpeg, started
// after avflow) is read to its writer's end.
func TestFIFOInput(t *testing.T) {
	e2e.Long(t)
	dir := t.TempDir()
	fifo := filepath.Join(dir, "in.fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	run := startAvflow(t, nil, "run", writePipeline(t, dir, hangingPipeline(fifo, "")))
	run.waitLog(t, "input is a FIFO", 30*time.Second)
	writer := exec.Command(e2e.Tool(t, "ffmpeg"), "-v", "error", "-i", e2e.Media(t, "car-detection.mp4"), "-c", "copy", "-f", "mpegts", "-y", fifo)
	if out, err := writer.CombinedOutput(); err != nil {
		t.Fatalf("ffmpeg writing the FIFO: %v\n%s", err, out)
	}
	if code := run.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("exit %d:\n%s", code, run.out)
	}
	if n := probe(t, filepath.Join(dir, "out", "out.mp4"))["video"].frames(); n != 377 {
		t.Errorf("%d frames from the FIFO, want 377", n)
	}
	if _, err := os.Stat(filepath.Join(dir, "out", "out.mp4.partial")); err == nil {
		t.Errorf("partial output left")
	}
}

// TestStdinInput: `ffmpeg ... -f mpegts - | avflow run` with url "-" (or
// pipe:0) reads stdin to its end, and a writer that stops sending but
// keeps the pipe open no longer pins the run: one SIGINT ends it (FFmpeg's
// pipe: protocol blocked in read(2) where no interrupt reached).
func TestStdinInput(t *testing.T) {
	e2e.Long(t)
	ts := filepath.Join(t.TempDir(), "in.ts")
	if out, err := exec.Command(e2e.Tool(t, "ffmpeg"), "-v", "error", "-i", e2e.Media(t, "car-detection.mp4"), "-c", "copy", "-f", "mpegts", ts).CombinedOutput(); err != nil {
		t.Fatalf("ffmpeg: %v\n%s", err, out)
	}
	data, err := os.ReadFile(ts)
	if err != nil {
		t.Fatal(err)
	}
	for _, url := range []string{"-", "pipe:0"} {
		t.Run(url+" to its end", func(t *testing.T) {
			dir := t.TempDir()
			cmd := exec.Command(avflowBin, "run", writePipeline(t, dir, hangingPipeline(url, ", format: mpegts")))
			cmd.Stdin = bytes.NewReader(data)
			run := startProc(t, cmd)
			if code := run.wait(t, 60*time.Second); code != 0 {
				t.Fatalf("exit %d:\n%s", code, run.out)
			}
			if n := probe(t, filepath.Join(dir, "out", "out.mp4"))["video"].frames(); n != 377 {
				t.Errorf("%d frames from stdin, want 377", n)
			}
		})
	}
	t.Run("writer holding the pipe open", func(t *testing.T) {
		dir := t.TempDir()
		// A blocking pipe, as a shell makes (os.Pipe's are non-blocking,
		// and FFmpeg's retries on EAGAIN do see the interrupt).
		var fds [2]int
		if err := syscall.Pipe2(fds[:], syscall.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		pr, pw := os.NewFile(uintptr(fds[0]), "stdin"), os.NewFile(uintptr(fds[1]), "writer")
		defer pw.Close()
		cmd := exec.Command(avflowBin, "run", "--progress-interval", "100ms", writePipeline(t, dir, hangingPipeline("pipe:0", ", format: mpegts")))
		cmd.Stdin = pr
		run := startProc(t, cmd)
		pr.Close()
		// A part of the clip; once no more frames come through (20 progress
		// lines, 2 s, with the same count), the source has read all it was
		// sent and waits in read(2) for more.
		if _, err := pw.Write(data[:len(data)/10]); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool {
			counts := progressFrames.FindAllStringSubmatch(run.out.String(), -1)
			if len(counts) < 20 || counts[len(counts)-1][1] == "0" {
				return false
			}
			for _, c := range counts[len(counts)-20:] {
				if c[1] != counts[len(counts)-1][1] {
					return false
				}
			}
			return true
		}, 30*time.Second, run.out)
		sendSignal(syscall.SIGINT)(t, run)
		if code := run.wait(t, 10*time.Second); code != 0 {
			t.Errorf("exit %d after one SIGINT, want 0 (drained)", code)
		}
		if n := probe(t, filepath.Join(dir, "out", "out.mp4"))["video"].frames(); n == 0 {
			t.Error("no frames in the drained output")
		}
	})
}
