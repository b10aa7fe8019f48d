package main

import (
	"context"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// leftStreams lists the JetStream streams on the server at url.
func leftStreams(t *testing.T, url string, opts ...nats.Option) []string {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	names := js.StreamNames(context.Background())
	for n := range names.Name() {
		out = append(out, n)
	}
	if err := names.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestJobSurvivesSIGKILL: the privacy example with delivery job on a
// 3-node JetStream cluster, faces served by two processes and blur by a
// third, each on its own node; one faces process is killed (SIGKILL) once
// frames flow. The output has as many frames as the one-process run, in
// order, none twice, and the run's stream is gone after it.
func TestJobSurvivesSIGKILL(t *testing.T) {
	e2e.Long(t)
	example, err := filepath.Abs("../../examples/irl-privacy/pipeline.yaml")
	if err != nil {
		t.Fatal(err)
	}
	base := []string{"AVFLOW_MEDIA=" + mediaDir(t), "AVFLOW_MODEL_MIRROR=" + e2e.Models(t), "AVFLOW_MODELS=" + t.TempDir(),
		"AVFLOW_OFFLINE=1", "AVFLOW_CLIP=hungry"}
	c := startJetStreamCluster(t, `    {user: job, password: job-pw}`)

	one := t.TempDir()
	r := avflow(t, append(base, "AVFLOW_OUT="+one), "run", example)
	if r.code != 0 {
		t.Fatalf("one process: exit %d:\n%s", r.code, r.stderr)
	}
	frames := probe(t, filepath.Join(one, "hungry-private.mp4"))["video"].frames()

	split := t.TempDir()
	env := append(base, "AVFLOW_OUT="+split, "AVFLOW_NATS_USER=job", "AVFLOW_NATS_PASSWORD=job-pw")
	meta := watchMeta(t, c.urls[1], "avflow.irl-privacy.faces.meta", nats.UserInfo("job", "job-pw"))
	victim := startAvflow(t, env, "serve", example, "--stage", "faces", "--nats", c.urls[1], "--delivery", "job")
	f2 := startAvflow(t, env, "serve", example, "--stage", "faces", "--nats", c.urls[2], "--delivery", "job")
	blur := startAvflow(t, env, "serve", example, "--stage", "blur", "--nats", c.urls[2], "--delivery", "job")
	run := startAvflow(t, env, "run", example, "--nats", c.urls[0], "--remote", "faces", "--remote", "blur", "--delivery", "job")
	waitFor(t, func() bool { return len(meta.snapshot()) >= frames/4 }, 2*time.Minute, run.out)
	if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-victim.done
	killedAt := len(meta.snapshot())
	for name, p := range map[string]*proc{"run": run, "faces": f2, "blur": blur} {
		if code := p.wait(t, 3*time.Minute); code != 0 {
			t.Fatalf("%s: exit %d:\n%s", name, code, p.out)
		}
	}
	if n := monotonicFrames(t, filepath.Join(split, "hungry-private.mp4")); n != frames || n == 0 {
		t.Errorf("with a faces process killed after %d frames: %d frames, one process: %d\nrun:\n%s", killedAt, n, frames, run.out)
	}
	// The killed process had done part of the job: the other did the rest,
	// and what the killed one held when it died.
	if took := stageIn(t, f2.out.String(), "faces"); took == 0 || took >= frames {
		t.Errorf("the faces process that lived took %d of %d frames, want some but not all", took, frames)
	} else {
		t.Logf("killed after %d meta messages; the other faces process took %d of %d frames", killedAt, took, frames)
	}
	if left := leftStreams(t, c.urls[0], nats.UserInfo("job", "job-pw")); len(left) > 0 {
		t.Errorf("streams left after the run: %v", left)
	}
	if !strings.Contains(run.out.String(), "job stream made") {
		t.Errorf("the run made no job stream:\n%s", run.out)
	}
}
