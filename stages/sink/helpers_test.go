package sink_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
	_ "github.com/avflow/avflow/stages/all"
	"github.com/avflow/avflow/stages/sink"
	"github.com/avflow/avflow/stages/source"
)

// build validates yaml and builds its runner (in-process transport).
func build(t *testing.T, yaml string, logs *e2e.Buffer) *pipeline.Runner {
	t.Helper()
	cfg, err := pipeline.Parse([]byte(yaml), "sink_test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := pipeline.Default.Validate(cfg); err != nil {
		t.Fatal(err)
	}
	r, err := pipeline.NewRunner(pipeline.Default, cfg, pipeline.Options{Transport: "local", Log: logs.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// run validates yaml and runs it in-process under ctx.
func run(ctx context.Context, t *testing.T, yaml string, logs *e2e.Buffer) (*pipeline.Runner, error) {
	t.Helper()
	r := build(t, yaml, logs)
	return r, r.Run(ctx)
}

// runWithin runs yaml and fails the test if the run has not returned
// within limit (the run is left behind: that is the failure).
func runWithin(ctx context.Context, t *testing.T, limit time.Duration, yaml string, logs *e2e.Buffer) error {
	t.Helper()
	done := make(chan error, 1)
	go runIn(ctx, build(t, yaml, logs), done)
	select {
	case err := <-done:
		return err
	case <-time.After(limit):
		t.Fatalf("the run did not return within %s:\n%s", limit, logs.String())
		return nil
	}
}

// runIn runs r and sends its result on done.
func runIn(ctx context.Context, r *pipeline.Runner, done chan<- error) { done <- r.Run(ctx) }

// encoded is a pipeline of testsrc2 (320x240, 30 fps; src: more source
// params, such as max_frames) encoded with x264 (a keyframe every gop
// frames) into a sink with the given params (the inside of a YAML flow map).
func encoded(flow, src string, gop int, sinkParams string) string {
	return fmt.Sprintf(`name: sinktest
flow: %s
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2=size=320x240:rate=30", %s}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: enc, kind: encode, inputs: [dec], params: {codec: libx264, preset: ultrafast, crf: 18, gop: %d}}
  - {name: out, kind: sink, inputs: [enc], params: {%s}}
`, flow, src, gop, sinkParams)
}

// waitFor polls cond until it holds or the limit passes.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	e2e.WaitFor(t, limit, func() string { return what }, cond)
}

// topBoxes lists the top-level boxes of an MP4/MOV file (ISO BMFF: a
// 32-bit big-endian size and a four-letter type; size 1 means a 64-bit size
// follows, size 0 runs to the end of the file).
func topBoxes(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	var boxes []string
	for off := int64(0); off < fi.Size(); {
		var hdr [16]byte
		if _, err := f.ReadAt(hdr[:8], off); err != nil {
			t.Fatalf("%s: box header at %d: %v", path, off, err)
		}
		size, head := int64(binary.BigEndian.Uint32(hdr[:4])), int64(8)
		switch size {
		case 1:
			if _, err := f.ReadAt(hdr[8:16], off+8); err != nil {
				t.Fatalf("%s: 64-bit box size at %d: %v", path, off, err)
			}
			size, head = int64(binary.BigEndian.Uint64(hdr[8:16])), 16
		case 0:
			size = fi.Size() - off
		}
		if size < head || off+size > fi.Size() {
			t.Fatalf("%s: box %q at %d has size %d in a file of %d bytes", path, hdr[4:8], off, size, fi.Size())
		}
		boxes = append(boxes, string(hdr[4:8]))
		off += size
	}
	return boxes
}

// indexOf is the position of s in list, or -1.
func indexOf(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	return -1
}

// smallDisk mounts a tmpfs of size bytes on a fresh folder, to be filled.
// It needs the right to mount (root); elsewhere the test is skipped.
func smallDisk(t *testing.T, size int) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", size)); err != nil {
		t.Skipf("cannot mount a %d-byte tmpfs to fill (needs root): %v", size, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmounting the test tmpfs %s: %v", dir, err)
		}
	})
	return dir
}

// listDir names what is in dir, sorted.
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// writeFile writes a file the test needs, failing it on error.
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// params validates a one-stage-fed pipeline whose sink has the given
// params and returns them as the runner would give them (defaults applied).
func params(t *testing.T, sinkParams string) pipeline.Params {
	t.Helper()
	cfg, err := pipeline.Parse([]byte(fmt.Sprintf(`name: p
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2"}}
  - {name: out, kind: sink, inputs: [src.video], params: {%s}}
`, sinkParams)), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := pipeline.Default.Validate(cfg); err != nil {
		t.Fatal(err)
	}
	return cfg.Stage("out").Params
}

var (
	clipOnce sync.Once
	clipDir  string
	clipErr  error
)

// clipPackets reads the video packets of a 30-frame 160x120 H.264 clip
// (made once with the ffmpeg CLI) with the source stage.
func clipPackets(t *testing.T) []*stage.Msg {
	t.Helper()
	clipOnce.Do(func() {
		if clipDir, clipErr = os.MkdirTemp("", "sinktest"); clipErr != nil {
			return
		}
		out, err := exec.Command(e2e.Tool(t, "ffmpeg"), "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=30",
			"-frames:v", "30", "-c:v", "libx264", "-preset", "ultrafast", "-g", "10", filepath.Join(clipDir, "clip.mp4")).CombinedOutput()
		if err != nil {
			clipErr = fmt.Errorf("ffmpeg: %w\n%s", err, out)
		}
	})
	if clipErr != nil {
		t.Fatal(clipErr)
	}
	cfg, err := pipeline.Parse([]byte(fmt.Sprintf("name: p\nstages:\n  - {name: src, kind: source, params: {url: %q}}\n", filepath.Join(clipDir, "clip.mp4"))), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := pipeline.Default.Validate(cfg); err != nil {
		t.Fatal(err)
	}
	logs := &e2e.Buffer{}
	st, err := source.New(context.Background(), pipeline.Init{Name: "src", Pipeline: "p", Params: cfg.Stage("src").Params, Log: logs.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var pkts []*stage.Msg
	for {
		b, err := st.Process(context.Background(), nil)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		pkts = append(pkts, b...)
	}
	t.Cleanup(func() {
		for _, e := range pkts {
			e.Release()
		}
	})
	if len(pkts) != 30 {
		t.Fatalf("read %d packets of the clip, want 30", len(pkts))
	}
	return pkts
}

// newSink builds a sink stage fed by one video input.
func newSink(ctx context.Context, t *testing.T, p pipeline.Params, logs *e2e.Buffer) (stage.Stage, error) {
	t.Helper()
	return sink.New(ctx, pipeline.Init{Name: "out", Pipeline: "p", Params: p, Dir: t.TempDir(),
		Inputs: []pipeline.PortType{{Kind: envelope.KindPacket, Media: envelope.MediaVideo}}, Log: logs.Logger()})
}

// feed gives the sink the packets (copies: the sink may keep them) the way
// the runner does.
func feed(ctx context.Context, t *testing.T, st stage.Stage, pkts []*stage.Msg) error {
	t.Helper()
	for _, e := range pkts {
		c := *e
		l, err := e.Local.Clone()
		if err != nil {
			t.Fatal(err)
		}
		c.Local = l
		_, err = st.Process(ctx, stage.Batch{&c})
		c.Release()
		if err != nil {
			return err
		}
	}
	return nil
}
