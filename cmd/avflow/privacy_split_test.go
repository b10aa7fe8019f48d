package main

import (
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/nats-io/nats.go"
)

// metaLog collects the detections a pipeline's faces stage publishes on
// its meta subject, by the frame's pts.
type metaLog struct {
	mu  sync.Mutex
	det map[int64]string
}

func watchMeta(t *testing.T, url, subject string, opts ...nats.Option) *metaLog {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	l := &metaLog{det: map[int64]string{}}
	if _, err := nc.Subscribe(subject, func(m *nats.Msg) {
		e, err := envelope.Unmarshal(m.Data)
		if err != nil || e.Kind != envelope.KindData {
			return
		}
		var boxes []string
		for _, d := range e.Detections {
			boxes = append(boxes, fmt.Sprintf("%.3f,%.3f,%.3f,%.3f:%.2f", d.X1, d.Y1, d.X2, d.Y2, d.Score))
		}
		sort.Strings(boxes)
		l.mu.Lock()
		l.det[e.PTS] = strings.Join(boxes, " ")
		l.mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return l
}

func (l *metaLog) snapshot() map[int64]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[int64]string, len(l.det))
	for k, v := range l.det {
		out[k] = v
	}
	return out
}

// TestPrivacySplitOverProcesses: the privacy example split over four
// processes (faces served twice, blur once, the rest in avflow run)
// gives the same number of frames as the one-process run, and the same
// detections on the same frames (the faces stage's meta messages).
func TestPrivacySplitOverProcesses(t *testing.T) {
	e2e.Long(t)
	example, err := filepath.Abs("../../examples/irl-privacy/pipeline.yaml")
	if err != nil {
		t.Fatal(err)
	}
	base := []string{"AVFLOW_MEDIA=" + mediaDir(t), "AVFLOW_MODEL_MIRROR=" + e2e.Models(t), "AVFLOW_MODELS=" + t.TempDir(),
		"AVFLOW_OFFLINE=1", "AVFLOW_CLIP=hungry"}
	port, _ := startNATSServer(t)
	url := "nats://127.0.0.1:" + strconv.Itoa(port)
	const subject = "avflow.irl-privacy.faces.meta"

	one := t.TempDir()
	meta1 := watchMeta(t, url, subject)
	r := avflow(t, append(base, "AVFLOW_OUT="+one), "run", example, "--nats", url)
	if r.code != 0 {
		t.Fatalf("one process: exit %d:\n%s", r.code, r.stderr)
	}
	frames := probe(t, filepath.Join(one, "hungry-private.mp4"))["video"].frames()
	d1 := meta1.snapshot()

	split := t.TempDir()
	meta2 := watchMeta(t, url, subject)
	env := append(base, "AVFLOW_OUT="+split)
	f1 := startAvflow(t, env, "serve", example, "--stage", "faces", "--nats", url)
	f2 := startAvflow(t, env, "serve", example, "--stage", "faces", "--nats", url)
	blur := startAvflow(t, env, "serve", example, "--stage", "blur", "--nats", url)
	run := startAvflow(t, env, "run", example, "--nats", url, "--remote", "faces", "--remote", "blur")
	for name, p := range map[string]*proc{"run": run, "faces 1": f1, "faces 2": f2, "blur": blur} {
		if code := p.wait(t, 3*time.Minute); code != 0 {
			t.Fatalf("%s: exit %d:\n%s", name, code, p.out)
		}
	}
	if n := monotonicFrames(t, filepath.Join(split, "hungry-private.mp4")); n != frames || n == 0 {
		t.Errorf("split over processes: %d frames, one process: %d", n, frames)
		for name, p := range map[string]*proc{"run": run, "faces 1": f1, "faces 2": f2, "blur": blur} {
			t.Logf("%s:\n%s", name, p.out)
		}
	}
	a, b := stageIn(t, f1.out.String(), "faces"), stageIn(t, f2.out.String(), "faces")
	if a == 0 || b == 0 || a+b != frames {
		t.Errorf("the faces replicas took %d and %d frames, want both > 0 and %d in all", a, b, frames)
	}
	d2 := meta2.snapshot()
	if len(d1) == 0 || len(d1) != len(d2) {
		t.Fatalf("meta messages: %d in one process, %d split", len(d1), len(d2))
	}
	differ := 0
	for pts, want := range d1 {
		if got, ok := d2[pts]; !ok || got != want {
			if differ++; differ <= 3 {
				t.Errorf("pts %d: split run found %q, one process %q", pts, got, want)
			}
		}
	}
	if differ > 0 {
		t.Errorf("%d of %d frames with other detections", differ, len(d1))
	}
}
