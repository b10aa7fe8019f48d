package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// scaleOutYAML: small raw frames through a stage capped at a fixed rate
// per instance (pace), which other processes serve.
const scaleOutYAML = `name: bench-scaleout
queue: %d
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2=size=160x120:rate=25", max_frames: %d, audio: false}}
  - {name: slow, kind: pace, inputs: [src.video], params: {rate: %g}, replicas: %d}
  - {name: out, kind: sink, inputs: [slow], params: {path: "null"}}
`

// scaleOutCase is one layout of the scale-out benchmark.
type scaleOutCase struct {
	serves, replicas, queue int
}

func (c scaleOutCase) instances() int { return c.serves * c.replicas }

// scaleOutRun serves slow in c.serves processes and runs the rest; it
// returns the steady frames/s at the sink.
func scaleOutRun(bin, dir string, srv *natsServer, c scaleOutCase, rate, secs float64) float64 {
	frames := int(rate * secs * float64(c.instances()))
	yaml := filepath.Join(dir, fmt.Sprintf("scaleout-%d-%d-%d.yaml", c.serves, c.replicas, c.queue))
	if err := os.WriteFile(yaml, []byte(fmt.Sprintf(scaleOutYAML, c.queue, frames, rate, c.replicas)), 0o644); err != nil {
		fail(err)
	}
	var serves []*proc
	defer func() {
		for _, s := range serves {
			s.kill()
		}
	}()
	for range c.serves {
		p, err := startProc(os.Environ(), bin, "--log-level", "warn", "serve", yaml, "--stage", "slow", "--nats", srv.url)
		if err != nil {
			fail(err)
		}
		serves = append(serves, p)
	}
	run, err := startProc(os.Environ(), bin, "run", "--progress-interval", "200ms", yaml, "--nats", srv.url, "--remote", "slow")
	if err != nil {
		fail(err)
	}
	if _, err := run.wait(5 * time.Minute); err != nil {
		fail(err)
	}
	took := 0
	for _, s := range serves {
		if _, err := s.wait(time.Minute); err != nil {
			fail(err)
		}
		for _, row := range endTable(s.out.String()) {
			if row["stage"] == "slow" {
				n, err := strconv.Atoi(row["in"])
				if err != nil {
					fail(fmt.Errorf("serve's end table: slow took %q messages", row["in"]))
				}
				took += n
			}
		}
	}
	if took != frames {
		fail(fmt.Errorf("the serve processes took %d frames in all, want %d", took, frames))
	}
	return runFPS(run.out.String(), int64(frames))
}

// scaleOutBench: a stage capped at rate messages/s per instance, served
// by 1, 2 and 4 processes (and with a wider credit window), against one
// avflow run.
func scaleOutBench(b *strings.Builder, bin, natsBin string, rounds int, rate, secs float64) {
	tmp, err := os.MkdirTemp("", "avflow-bench-scaleout")
	if err != nil {
		fail(err)
	}
	defer os.RemoveAll(tmp)
	srv, err := startNATSServer(natsBin, tmp, "")
	if err != nil {
		fail(err)
	}
	defer srv.stop()
	cases := []scaleOutCase{
		{1, 1, 4}, {2, 1, 4}, {4, 1, 4},
		{1, 1, 16}, {2, 1, 16}, {4, 1, 16},
		{1, 4, 4}, // the in-process replica pool, for reference
	}
	got := make([][]float64, len(cases))
	for i := 0; i < rounds; i++ {
		for j, c := range cases {
			slog.Info("scale-out round", "serve_processes", c.serves, "replicas", c.replicas, "queue", c.queue, "round", i+1, "of", rounds)
			fps := scaleOutRun(bin, tmp, srv, c, rate, secs)
			slog.Info("scale-out", "serve_processes", c.serves, "replicas", c.replicas, "queue", c.queue, "fps", fmt.Sprintf("%.1f", fps))
			got[j] = append(got[j], fps)
		}
	}
	fmt.Fprintf(b, "## Scale-out: a stage capped at %g messages/s per instance, served by 1, 2 and 4 processes\n\n", rate)
	fmt.Fprintf(b, "`lavfi:testsrc2=size=160x120` source (raw video packets) -> slow (`pace`, `rate: %g`) -> sink(null). `avflow serve scaleout.yaml --stage slow --nats URL` in N processes, `avflow run scaleout.yaml --nats URL --remote slow` in one more, one `bin/nats-server` on loopback; %g s of messages per instance (%g x %g x N frames). "+
		"The pace stage sleeps, so the 2 cores are not the limit: N instances can pass N x %g/s, and what they pass is what the machinery (queue group, credits, routing each message to the replica with the most room, reorder buffer) lets through. frames/s is the steady rate at the sink (10%% to 90%% of the frames, from the run's progress lines); median of %d rounds. "+
		"`queue` is the pipeline's credit window (the file's `queue:` key): messages an edge holds per consumer before the producer waits. The last row is one serve process with `replicas: 4` (the in-process replica pool), for comparison.\n\n", rate, secs, rate, secs, rate, rounds)
	fmt.Fprintf(b, "| serve processes | replicas each | queue | instances | frames/s (steady) | of the cap (instances x rate) | ratio vs 1 process (same queue) |\n|---:|---:|---:|---:|---:|---:|---:|\n")
	base := map[int]float64{}
	for j, c := range cases {
		fps := medianOf(got[j])
		if c.serves == 1 && c.replicas == 1 {
			base[c.queue] = fps
		}
		ratio := "-"
		if c.replicas == 1 && base[c.queue] > 0 {
			ratio = fmt.Sprintf("%.2fx", fps/base[c.queue])
		}
		fmt.Fprintf(b, "| %d | %d | %d | %d | %.1f | %.0f%% | %s |\n", c.serves, c.replicas, c.queue, c.instances(), fps, 100*fps/(rate*float64(c.instances())), ratio)
	}
	fmt.Fprintf(b, "\nTarget: 2 processes at least 1.9x and 4 at least 3.6x the throughput of one.\n\n")
}
