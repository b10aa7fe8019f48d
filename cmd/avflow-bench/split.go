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
	serves int // avflow serve processes for faces (0: all in one process)
}

// splitSample is one run of a layout.
type splitSample struct {
	fps     float64
	lat     map[string][]float64 // interval -> ms per frame
	sinkLat string               // the sink's mean latency in the end table
}

// hop intervals read from the stamps: name, from stage, to stage.
var splitIntervals = [][3]string{
	{"cam->blur", "cam", "blur"},
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
// throughput, or paced in real time (30 fps) for its latency.
func splitRun(bin, yaml string, srv *natsServer, env []string, l splitLayout, frames int, realtime bool) splitSample {
	name := fmt.Sprintf("bench-privacy-%d", l.serves)
	sets := []string{"--name", name, "--set", "cam.loop=true", "--set", fmt.Sprintf("cam.max_frames=%d", frames), "--set", fmt.Sprintf("cam.realtime=%t", realtime)}
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
	out := run.out.String()
	s := splitSample{fps: runFPS(out, int64(frames)), lat: lat}
	for _, row := range endTable(out) {
		if row["stage"] == "out" {
			s.sinkLat = row["latency ms"]
		}
	}
	return s
}

// inOrder checks that the output holds frames video frames with rising
// timestamps (track needs its frames in order: the reorder buffer of a
// remote stage's consumer must have put them back).
func inOrder(path string, frames int) error {
	out, err := exec.Command("ffprobe", "-v", "error", "-select_streams", "v", "-show_entries", "frame=pts", "-of", "csv=p=0", path).Output()
	if err != nil {
		return fmt.Errorf("ffprobe %s: %w", path, err)
	}
	n, prev := 0, int64(-1<<62)
	for _, l := range strings.Fields(string(out)) {
		v, err := strconv.ParseInt(strings.TrimSuffix(l, ","), 10, 64)
		if err != nil {
			continue
		}
		if v <= prev {
			return fmt.Errorf("%s: frame %d has pts %d after %d: frames out of order", path, n, v, prev)
		}
		prev, n = v, n+1
	}
	if n != frames {
		return fmt.Errorf("%s: %d frames, want %d", path, n, frames)
	}
	return nil
}

// splitBench: the privacy example in one process against faces served by
// one and by two other processes.
func splitBench(b *strings.Builder, bin, natsBin string, rounds, frames int) {
	tmp, err := os.MkdirTemp("", "avflow-bench-split")
	if err != nil {
		fail(err)
	}
	defer os.RemoveAll(tmp)
	example, err := os.ReadFile("examples/irl-privacy/pipeline.yaml")
	if err != nil {
		fail(err)
	}
	yaml := filepath.Join(tmp, "privacy.yaml")
	if err := os.WriteFile(yaml, append(append(example, '\n'), tapStage...), 0o644); err != nil {
		fail(err)
	}
	srv, err := startNATSServer(natsBin, tmp, "")
	if err != nil {
		fail(err)
	}
	defer srv.stop()
	env := append(os.Environ(), "AVFLOW_MEDIA="+mediaDir(), "AVFLOW_OUT="+tmp)
	layouts := []splitLayout{
		{name: "one process (`avflow run`)", serves: 0},
		{name: "faces in 1 `avflow serve` (2 processes)", serves: 1},
		{name: "faces in 2 `avflow serve` (3 processes)", serves: 2},
	}
	fast := make([][]splitSample, len(layouts))
	live := make([][]splitSample, len(layouts))
	for i := 0; i < rounds; i++ {
		for j, l := range layouts {
			slog.Info("privacy split round", "layout", l.name, "round", i+1, "of", rounds)
			fast[j] = append(fast[j], splitRun(bin, yaml, srv, env, l, frames, false))
			if err := inOrder(filepath.Join(tmp, "walk-private.mp4"), frames); err != nil {
				fail(fmt.Errorf("%s: %w", l.name, err))
			}
			live[j] = append(live[j], splitRun(bin, yaml, srv, env, l, frames, true))
			slog.Info("privacy split", "layout", l.name, "fps", fmt.Sprintf("%.1f", fast[j][i].fps),
				"p50_ms", fmt.Sprintf("%.1f", quantile(live[j][i].lat["cam->blur"], 0.5)))
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
	fmt.Fprintf(b, "## The privacy pipeline split over processes\n\n")
	fmt.Fprintf(b, "examples/irl-privacy/pipeline.yaml (facecam walk.mkv 640x480 looped to %d frames: decode, UltraFace every 3rd frame, track, blur with a verify pass, x264), with one more stage, `tap` (`pace` reading the encoder's packets, its port read by no stage and so published on `avflow.<name>.tap.out`), from which the benchmark reads every frame's stamps. "+
		"All processes use one `bin/nats-server` on a loopback port. One process: `avflow run privacy.yaml --nats URL`. Split: `avflow serve privacy.yaml --stage faces --nats URL` once or twice, and `avflow run privacy.yaml --nats URL --remote faces`; each frame then crosses two process hops, dec -> faces and faces -> track "+
		"(track needs its frames in order: the run's input from faces puts the replicas' outputs back in order by their `src`; every output is checked to have its %d frames in order). "+
		"Throughput: the source unpaced, frames/s at the sink between 10%% and 90%% of the frames. Latency: the same with `cam.realtime=true` (30 fps, so that queues do not fill), from the stamps of each frame, the first 10%% of the frames left out (the start); quantiles over every round's frames.\n\n", frames, frames)
	fmt.Fprintf(b, "| layout | frames/s (median) | ratio vs one process |\n|---|---:|---:|\n")
	one := fpsOf(fast[0])
	for j, l := range layouts {
		fmt.Fprintf(b, "| %s | %.1f | %.3f |\n", l.name, fpsOf(fast[j]), fpsOf(fast[j])/one)
	}
	fmt.Fprintf(b, "\nLatency in ms at 30 fps (p50 / p99). cam->blur spans both hops; the added latency per hop is the difference to one process, halved; dec->faces and faces->track are the two hops themselves (each includes the stage's own work and queue).\n\n")
	fmt.Fprintf(b, "| layout | cam->blur | added per hop | dec->faces | faces->track | sink's mean latency (end table) |\n|---|---:|---:|---:|---:|---:|\n")
	base := pooled(live[0], "cam->blur")
	for j, l := range layouts {
		e2e := pooled(live[j], "cam->blur")
		added := "-"
		if j > 0 {
			added = fmt.Sprintf("%+.1f / %+.1f", (quantile(e2e, 0.5)-quantile(base, 0.5))/2, (quantile(e2e, 0.99)-quantile(base, 0.99))/2)
		}
		var sink []string
		for _, s := range live[j] {
			sink = append(sink, s.sinkLat)
		}
		pq := func(v []float64) string { return fmt.Sprintf("%.1f / %.1f", quantile(v, 0.5), quantile(v, 0.99)) }
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s |\n", l.name, pq(e2e), added, pq(pooled(live[j], "dec->faces")), pq(pooled(live[j], "faces->track")), strings.Join(sink, ", "))
	}
	fmt.Fprintf(b, "\n")
}
