package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/nats-io/nats.go"
)

// gateStage paces the source's packets (a pass-through in the runs for
// throughput) so that the runs for latency get frames at a rate every
// layout sustains: queues stay short and the stamps show the work and the
// hops, not a backlog.
const gateStage = `  - name: gate
    kind: pace
    inputs: [cam.video]
    params: {rate: 1000000000}
`

// tapStage reads the encoder's packets and passes them on to a port no
// stage reads, which avflow publishes on its subject: the benchmark
// subscribes there and reads every frame's stamps (when each stage
// emitted it), in one process and split alike.
const tapStage = `  - name: tap
    kind: pace
    inputs: [enc]
    params: {rate: 1000000000}
`

// splitLayout is one way of running the privacy pipeline.
type splitLayout struct {
	name   string
	serves int  // avflow serve processes for faces (0: all in one process)
	job    bool // delivery job: the edges to and from faces go through a JetStream stream
}

// splitSample is one run of a layout.
type splitSample struct {
	fps      float64
	lat      map[string][]float64 // interval -> ms per frame
	sinkLat  string               // the sink's mean latency in the end table
	disorder int                  // output frames whose timestamp is not above the one before
}

// hop intervals read from the stamps: name, from stage, to stage.
var splitIntervals = [][3]string{
	{"gate->blur", "gate", "blur"},
	{"dec->faces", "dec", "faces"},
	{"faces->track", "faces", "track"},
}

// stampTap collects the stamps of the tap stage's messages.
type stampTap struct {
	mu   sync.Mutex
	lat  map[string][]float64
	n    int
	bad  int
	sub  *nats.Subscription
	conn *nats.Conn
}

func newStampTap(url, subject string) (*stampTap, error) {
	nc, err := nats.Connect(url, nats.Name("avflow-bench tap"))
	if err != nil {
		return nil, err
	}
	t := &stampTap{lat: map[string][]float64{}, conn: nc}
	t.sub, err = nc.Subscribe(subject, t.onMsg)
	if err == nil {
		_ = t.sub.SetPendingLimits(-1, -1)
		err = nc.Flush()
	}
	if err != nil {
		nc.Close()
		return nil, err
	}
	return t, nil
}

func (t *stampTap) onMsg(m *nats.Msg) {
	e, err := envelope.Unmarshal(m.Data)
	t.mu.Lock()
	defer t.mu.Unlock()
	if err != nil || e.Kind == envelope.KindEOS {
		t.bad++
		return
	}
	t.n++
	at := map[string]int64{}
	for _, s := range e.Stamps {
		at[s.Stage] = s.At
	}
	for _, iv := range splitIntervals {
		a, okA := at[iv[1]]
		z, okZ := at[iv[2]]
		if okA && okZ {
			t.lat[iv[0]] = append(t.lat[iv[0]], float64(z-a)/1e6)
		}
	}
}

// close stops the tap and returns what it read, without the first skip
// frames of each interval (the start: connecting, finding instances).
func (t *stampTap) close(skip int) (int, map[string][]float64) {
	_ = t.conn.Flush()
	t.conn.Close()
	t.mu.Lock()
	defer t.mu.Unlock()
	out := map[string][]float64{}
	for k, v := range t.lat {
		out[k] = v[min(skip, len(v)):]
	}
	return t.n, out
}

// splitRun runs the privacy pipeline in one layout: unpaced for its
// throughput (rate 0), or with its source's packets paced at rate for its
// latency.
func splitRun(bin, yaml, out string, srv *natsServer, env []string, l splitLayout, frames int, rate float64) splitSample {
	name := fmt.Sprintf("bench-privacy-%d", l.serves)
	if l.job {
		name += "-job"
	}
	sets := []string{"--name", name, "--set", "cam.loop=true", "--set", fmt.Sprintf("cam.max_frames=%d", frames)}
	if rate > 0 {
		sets = append(sets, "--set", fmt.Sprintf("gate.rate=%.2f", rate))
	}
	tap, err := newStampTap(srv.url, "avflow."+name+".tap.out")
	if err != nil {
		fail(err)
	}
	var serves []*proc
	defer func() {
		for _, s := range serves {
			s.kill()
		}
	}()
	if l.job {
		sets = append(sets, "--delivery", "job")
	}
	for range l.serves {
		p, err := startProc(env, bin, append([]string{"--log-level", "warn", "serve", yaml, "--stage", "faces", "--nats", srv.url}, sets...)...)
		if err != nil {
			fail(err)
		}
		serves = append(serves, p)
	}
	args := append([]string{"run", "--progress-interval", "200ms", yaml, "--nats", srv.url}, sets...)
	if l.serves > 0 {
		args = append(args, "--remote", "faces")
	}
	run, err := startProc(env, bin, args...)
	if err != nil {
		fail(err)
	}
	if _, err := run.wait(10 * time.Minute); err != nil {
		fail(err)
	}
	for _, s := range serves {
		if _, err := s.wait(time.Minute); err != nil {
			fail(err)
		}
	}
	n, lat := tap.close(frames / 10)
	if n != frames {
		fail(fmt.Errorf("%s: the tap read %d messages, want %d", l.name, n, frames))
	}
	log := run.out.String()
	s := splitSample{fps: runFPS(log, int64(frames)), lat: lat}
	for _, row := range endTable(log) {
		if row["stage"] == "out" {
			s.sinkLat = row["latency ms"]
		}
	}
	if s.disorder, err = disorder(out, frames); err != nil {
		fail(fmt.Errorf("%s: %w", l.name, err))
	}
	return s
}

// disorder checks that the output holds frames video frames and counts
// those whose timestamp is not above the one before (track needs its
// frames in order: the consumer of a remote stage must put its replicas'
// outputs back in order).
func disorder(path string, frames int) (int, error) {
	n, bad, err := disorderCount(path)
	if err == nil && n != frames {
		err = fmt.Errorf("%s: %d frames, want %d", path, n, frames)
	}
	return bad, err
}

// disorderCount reads a file's video frames with ffprobe: how many, and
// how many have a timestamp not above the one before.
func disorderCount(path string) (frames, bad int, err error) {
	out, err := exec.Command("ffprobe", "-v", "error", "-select_streams", "v", "-show_entries", "frame=pts", "-of", "csv=p=0", path).Output()
	if err != nil {
		return 0, 0, fmt.Errorf("ffprobe %s: %w", path, err)
	}
	prev := int64(-1 << 62)
	for _, l := range strings.Fields(string(out)) {
		v, err := strconv.ParseInt(strings.TrimSuffix(l, ","), 10, 64)
		if err != nil {
			continue
		}
		if v <= prev {
			bad++
		}
		prev, frames = v, frames+1
	}
	return frames, bad, nil
}

// privacyRig is what the benchmarks of the privacy pipeline over
// processes share: a temporary folder with the pipeline file, its output
// path, a nats-server with JetStream, the processes' environment.
type privacyRig struct {
	dir, yaml, out string
	srv            *natsServer
	env            []string
}

func newPrivacyRig(natsBin, prefix string) privacyRig {
	tmp, err := os.MkdirTemp("", prefix)
	if err != nil {
		fail(err)
	}
	srv, err := startNATSServer(natsBin, tmp, "", fmt.Sprintf("jetstream { store_dir: %q }", filepath.Join(tmp, "js")))
	if err != nil {
		fail(err)
	}
	return privacyRig{dir: tmp, yaml: privacySplitYAML(tmp), out: filepath.Join(tmp, "walk-private.mp4"), srv: srv,
		env: append(os.Environ(), "AVFLOW_MEDIA="+mediaDir(), "AVFLOW_OUT="+tmp)}
}

func (r privacyRig) close() {
	r.srv.stop()
	_ = os.RemoveAll(r.dir)
}

// privacySplitYAML writes the privacy example with the gate and tap stages
// into dir and returns its path.
func privacySplitYAML(dir string) string {
	example, err := os.ReadFile("examples/irl-privacy/pipeline.yaml")
	if err != nil {
		fail(err)
	}
	yaml := filepath.Join(dir, "privacy.yaml")
	text := string(example)
	if strings.Count(text, "inputs: [cam.video]") != 1 {
		fail(fmt.Errorf("examples/irl-privacy/pipeline.yaml: want one stage reading cam.video, to put the gate before it"))
	}
	text = strings.Replace(text, "inputs: [cam.video]", "inputs: [gate]", 1) + "\n" + gateStage + tapStage
	if err := os.WriteFile(yaml, []byte(text), 0o644); err != nil {
		fail(err)
	}
	return yaml
}

// splitBench: the privacy example in one process against faces served by
// one and by two other processes.
func splitBench(b *strings.Builder, bin, natsBin string, rounds, frames int) {
	rig := newPrivacyRig(natsBin, "avflow-bench-split")
	defer rig.close()
	yaml, out, srv, env := rig.yaml, rig.out, rig.srv, rig.env
	layouts := []splitLayout{
		{name: "one process (`avflow run`)", serves: 0},
		{name: "faces in 1 `avflow serve` (2 processes)", serves: 1},
		{name: "faces in 2 `avflow serve` (3 processes)", serves: 2},
		{name: "faces in 2 `avflow serve`, `--delivery job` (3 processes, JetStream)", serves: 2, job: true},
	}
	fast := make([][]splitSample, len(layouts))
	live := make([][]splitSample, len(layouts))
	liveFrames := max(frames/2, 60) // paced runs take twice as long a frame
	var rates []float64
	for i := 0; i < rounds; i++ {
		for j, l := range layouts {
			slog.Info("privacy split round, unpaced", "layout", l.name, "round", i+1, "of", rounds)
			fast[j] = append(fast[j], splitRun(bin, yaml, out, srv, env, l, frames, 0))
			slog.Info("privacy split", "layout", l.name, "fps", fmt.Sprintf("%.1f", fast[j][i].fps))
		}
		// Half of what the slowest layout did in this round: every layout keeps up.
		rate := fast[0][i].fps
		for j := range layouts {
			rate = min(rate, fast[j][i].fps)
		}
		rate /= 2
		rates = append(rates, rate)
		for j, l := range layouts {
			slog.Info("privacy split round, paced", "layout", l.name, "rate", fmt.Sprintf("%.1f", rate), "round", i+1, "of", rounds)
			live[j] = append(live[j], splitRun(bin, yaml, out, srv, env, l, liveFrames, rate))
			slog.Info("privacy split", "layout", l.name, "p50_ms", fmt.Sprintf("%.1f", quantile(live[j][i].lat["gate->blur"], 0.5)))
		}
	}
	// Latency quantiles over the frames of every round together.
	pooled := func(ss []splitSample, iv string) []float64 {
		var v []float64
		for _, s := range ss {
			v = append(v, s.lat[iv]...)
		}
		return v
	}
	fpsOf := func(ss []splitSample) float64 {
		var v []float64
		for _, s := range ss {
			v = append(v, s.fps)
		}
		return medianOf(v)
	}
	disorderOf := func(ss []splitSample) string {
		var v []string
		for _, s := range ss {
			v = append(v, strconv.Itoa(s.disorder))
		}
		return strings.Join(v, ", ")
	}
	var rateText []string
	for _, r := range rates {
		rateText = append(rateText, fmt.Sprintf("%.1f", r))
	}
	fmt.Fprintf(b, "## The privacy pipeline split over processes\n\n")
	fmt.Fprintf(b, "examples/irl-privacy/pipeline.yaml (facecam walk.mkv 640x480 looped to %d frames: decode, UltraFace every 3rd frame, track, blur with a verify pass, x264) with two more stages: `gate` (`pace` between the source and the decoder: a pass-through, or the rate of the latency runs) and `tap` (`pace` reading the encoder's packets, its port read by no stage and so published on `avflow.<name>.tap.out`), from which the benchmark reads every frame's stamps. "+
		"All processes use one `bin/nats-server` on a loopback port. One process: `avflow run privacy.yaml --nats URL`. Split: `avflow serve privacy.yaml --stage faces --nats URL` once or twice, and `avflow run privacy.yaml --nats URL --remote faces`; with `--delivery job` on both (the server has JetStream on: file storage, one replica) the two hops go through the run's work-queue stream, each message acknowledged once faces (or track) has published its outputs; each frame then crosses two process hops, dec -> faces and faces -> track "+
		"(track needs its frames in order: the run's input from faces puts the replicas' outputs back in order by their `src`; the output's frames whose timestamp is not above the one before are counted). "+
		"Throughput: unpaced, frames/s at the sink between 10%% and 90%% of the frames. Latency: %d frames with the gate at half the slowest layout's throughput in that round (%s fps), so that queues stay short, from the stamps of each frame, the first 10%% of the frames left out (the start); quantiles over every round's frames; %d rounds.\n\n", frames, liveFrames, strings.Join(rateText, ", "), rounds)
	fmt.Fprintf(b, "| layout | frames/s (median) | ratio vs one process | output frames out of order (per round) |\n|---|---:|---:|---:|\n")
	one := fpsOf(fast[0])
	for j, l := range layouts {
		fmt.Fprintf(b, "| %s | %.1f | %.3f | %s |\n", l.name, fpsOf(fast[j]), fpsOf(fast[j])/one, disorderOf(fast[j]))
	}
	fmt.Fprintf(b, "\nLatency in ms, paced (p50 / p99). gate->blur (from the gate, after which the frames are paced, to the last stage before the encoder, whose packets carry the stamps of the frame it was given, not of the frame they hold) spans both hops; the added latency per hop is the difference to one process, halved; dec->faces and faces->track are the two hops themselves (each includes the stage's own work and queue).\n\n")
	fmt.Fprintf(b, "| layout | gate->blur | added per hop | dec->faces | faces->track | sink's mean latency from the source (end table; with the wait before the gate) | frames out of order |\n|---|---:|---:|---:|---:|---:|---:|\n")
	base := pooled(live[0], "gate->blur")
	for j, l := range layouts {
		e2e := pooled(live[j], "gate->blur")
		added := "-"
		if j > 0 {
			added = fmt.Sprintf("%+.1f / %+.1f", (quantile(e2e, 0.5)-quantile(base, 0.5))/2, (quantile(e2e, 0.99)-quantile(base, 0.99))/2)
		}
		var sink []string
		for _, s := range live[j] {
			sink = append(sink, s.sinkLat)
		}
		pq := func(v []float64) string { return fmt.Sprintf("%.1f / %.1f", quantile(v, 0.5), quantile(v, 0.99)) }
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %s |\n", l.name, pq(e2e), added, pq(pooled(live[j], "dec->faces")), pq(pooled(live[j], "faces->track")), strings.Join(sink, ", "), disorderOf(live[j]))
	}
	fmt.Fprintf(b, "\n")
}
