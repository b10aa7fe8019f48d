package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/nats-io/nats.go"
)

// jobRig is the privacy example on a 3-node JetStream cluster, with the
// frame count of its one-process run.
type jobRig struct {
	c       *cluster
	example string
	env     []string // for the split run's processes
	out     string   // the split run's output
	frames  int      // of the one-process run
	meta    *metaLog // the faces stage's meta messages on the cluster
}

func newJobRig(t *testing.T) *jobRig {
	t.Helper()
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
	split := t.TempDir()
	return &jobRig{c: c, example: example, out: filepath.Join(split, "hungry-private.mp4"),
		env:    append(base, "AVFLOW_OUT="+split, "AVFLOW_NATS_USER=job", "AVFLOW_NATS_PASSWORD=job-pw"),
		frames: probe(t, filepath.Join(one, "hungry-private.mp4"))["video"].frames(),
		meta:   watchMeta(t, c.urls[1], "avflow.irl-privacy.faces.meta", nats.UserInfo("job", "job-pw"))}
}

// serve starts avflow serve of a stage with delivery job on node i.
func (r *jobRig) serve(t *testing.T, stage string, node int) *proc {
	return r.serveWith(t, stage, node, "job")
}

func (r *jobRig) serveWith(t *testing.T, stage string, node int, delivery string) *proc {
	return startAvflow(t, r.env, "serve", r.example, "--stage", stage, "--nats", r.c.urls[node], "--delivery", delivery)
}

// run starts the driver on node 0, faces and blur remote.
func (r *jobRig) run(t *testing.T) *proc {
	return r.runWith(t, "job")
}

// runWith is run with a delivery, its progress every 100 ms.
func (r *jobRig) runWith(t *testing.T, delivery string) *proc {
	return startAvflow(t, r.env, "run", "--progress-interval", "100ms", r.example, "--nats", r.c.urls[0], "--remote", "faces", "--remote", "blur", "--delivery", delivery)
}

// flowing waits until a quarter of the frames have been through faces.
func (r *jobRig) flowing(t *testing.T, log *e2e.Buffer) {
	waitFor(t, func() bool { return len(r.meta.snapshot()) >= r.frames/4 }, 2*time.Minute, log)
}

// check waits for the processes and checks the output has every frame,
// in order, once, and that no stream is left.
func (r *jobRig) check(t *testing.T, procs map[string]*proc) {
	t.Helper()
	exitAllWell(t, procs)
	if n := monotonicFrames(t, r.out); n != r.frames || n == 0 {
		t.Errorf("%d frames, one process: %d\nrun:\n%s", n, r.frames, procs["run"].out)
	}
	if left := e2e.Streams(t, r.c.urls[0], nats.UserInfo("job", "job-pw")); len(left) > 0 {
		t.Errorf("streams left after the run: %v", left)
	}
	if !strings.Contains(procs["run"].out.String(), "job stream made") {
		t.Errorf("the run made no job stream:\n%s", procs["run"].out)
	}
}

// exitAllWell waits up to 3 minutes for the processes that were not
// killed to exit 0; when one does not, it fails showing every process's
// log (a stall in one is often caused by another).
func exitAllWell(t *testing.T, procs map[string]*proc) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for name, p := range procs {
		var code int
		select {
		case <-p.done:
			code = p.exitCode()
		case <-time.After(time.Until(deadline)):
			code = -1
		}
		if code != 0 && !p.killed {
			t.Fatalf("%s: exit %d (-1: still running after 3 minutes); every process's log:\n%s", name, code, allLogs(procs))
		}
	}
}

// allLogs is every process's log, each under its name.
func allLogs(procs map[string]*proc) string {
	var all strings.Builder
	for n, q := range procs {
		fmt.Fprintf(&all, "--- %s:\n%s\n", n, q.out)
	}
	return all.String()
}

// TestJobSurvivesSIGKILL: the privacy example with delivery job on a
// 3-node JetStream cluster, faces served by two processes and blur by a
// third, on their own nodes; one faces process is killed (SIGKILL) once
// frames flow. The output has as many frames as the one-process run, in
// order, none twice, and the run's stream is gone after it. (With
// --delivery live the same run lost 4 of 49 frames.)
func TestJobSurvivesSIGKILL(t *testing.T) {
	e2e.Long(t)
	r := newJobRig(t)
	victim, f2, blur := r.serve(t, "faces", 1), r.serve(t, "faces", 2), r.serve(t, "blur", 2)
	run := r.run(t)
	r.flowing(t, run.out)
	victim.kill(t)
	r.check(t, map[string]*proc{"run": run, "faces": f2, "blur": blur})
	// The other did the rest and what the killed one held unacknowledged
	// (it may redo all of it: the killed one's work is acknowledged only
	// once its outputs are published).
	took := stageIn(t, f2.out.String(), "faces")
	if took == 0 {
		t.Errorf("the faces process that lived took no frame")
	}
	t.Logf("the faces process that lived took %d of %d frames", took, r.frames)
}

// TestJobSurvivesBlurRestart: the only blur process is killed once frames
// flow and started again 2 s later: the job completes with every frame.
func TestJobSurvivesBlurRestart(t *testing.T) {
	e2e.Long(t)
	r := newJobRig(t)
	faces, blur := r.serve(t, "faces", 1), r.serve(t, "blur", 2)
	run := r.run(t)
	r.flowing(t, run.out)
	t.Logf("%s: killing blur after %d meta messages", time.Now().Format(time.StampMilli), len(r.meta.snapshot()))
	blur.kill(t)
	<-time.After(2 * time.Second) // the scenario: blur is away for 2 s
	again := r.serve(t, "blur", 2)
	t.Logf("%s: blur started again", time.Now().Format(time.StampMilli))
	r.check(t, map[string]*proc{"run": run, "faces": faces, "blur again": again})
}

// TestJobSurvivesNodeRestart: the NATS node faces is connected to is
// killed once frames flow and started again a second later: the stream
// (3 replicas) and the clients (reconnecting to the other nodes) carry on
// and the job completes with every frame.
func TestJobSurvivesNodeRestart(t *testing.T) {
	e2e.Long(t)
	r := newJobRig(t)
	faces, blur := r.serve(t, "faces", 1), r.serve(t, "blur", 2)
	run := r.run(t)
	r.flowing(t, run.out)
	r.c.restart(t, 1, time.Second)
	r.check(t, map[string]*proc{"run": run, "faces": faces, "blur": blur})
}

// TestLiveSurvivesSIGKILL: the privacy example with delivery live on the
// same cluster, faces served twice; one faces process is killed
// (SIGKILL) once frames flow. The stream goes on: the run ends well, the
// frames the killed process had taken are given up as soon as it is
// found gone and counted (the output's frames and the run's
// lost_messages add up to the one-process run's), the output stays in
// order, and the sink's frame count never stands still for more than 2 s
// beyond the longest it stood still before the kill.
func TestLiveSurvivesSIGKILL(t *testing.T) {
	e2e.Long(t)
	r := newJobRig(t)
	victim, f2, blur := r.serveWith(t, "faces", 1, "live"), r.serveWith(t, "faces", 2, "live"), r.serveWith(t, "blur", 2, "live")
	run := r.runWith(t, "live")
	r.flowing(t, run.out)
	killed := time.Now()
	victim.kill(t)
	procs := map[string]*proc{"run": run, "faces": f2, "blur": blur, "killed faces": victim}
	exitAllWell(t, procs)
	log := run.out.String()
	n, lost := monotonicFrames(t, r.out), endEvent(log, "track", "lost_messages")
	if lost == 0 || n+lost != r.frames {
		t.Errorf("%d frames out and %d counted lost, want them to add up to %d, some lost:\n%s", n, lost, r.frames, log)
	}
	before, after := stalls(log, killed)
	if after > before+2*time.Second {
		t.Errorf("the sink stood still for %s after the kill (at most %s before it); every process's log:\n%s", after, before, allLogs(procs))
	}
	t.Logf("%d of %d frames, %d lost; longest stall %s after the kill, %s before", n, r.frames, lost, after, before)
}
