package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/avflow/avflow/accelerators"
)

var sustainsRe = regexp.MustCompile(`sustains about ([0-9.]+) fps`)

// planBench: the planner's time on a 12-stage x 6-device problem, and the
// fps a CPU placement chosen by plan predicts vs the fps it runs at.
func planBench(b *strings.Builder, bin, work string, rounds int) {
	p := accelerators.Profile{Perf: map[string]map[string]accelerators.Measure{}}
	c := accelerators.Costs{}
	for d := 0; d < 6; d++ {
		c[fmt.Sprintf("dev%d", d)] = accelerators.Cost{PricePerHour: 0.1 * float64(d+1), BusyWatts: float64(10 * (6 - d))}
	}
	for s := 0; s < 12; s++ {
		name := fmt.Sprintf("s%d", s)
		p.Stages = append(p.Stages, name)
		p.Perf[name] = map[string]accelerators.Measure{}
		for d := 0; d < 6; d++ {
			p.Perf[name][fmt.Sprintf("dev%d", d)] = accelerators.Measure{FPS: float64(10 + (s*7+d*13)%50), P99Ms: float64(1 + (s+d)%9)}
		}
	}
	var solve []measure
	for i := 0; i < rounds; i++ {
		for _, obj := range []string{"cost", "energy", "latency"} {
			t0 := time.Now()
			if _, err := accelerators.Solve(p, c, accelerators.Target{Streams: 8, FPS: 30, Objective: obj, P99Ms: 60}); err != nil {
				fail(err)
			}
			solve = append(solve, measure{wall: time.Since(t0)})
		}
	}
	worst := time.Duration(0)
	for _, m := range solve {
		worst = max(worst, m.wall)
	}
	fmt.Fprintf(b, "## Placement planner\n\n")
	fmt.Fprintf(b, "Exact branch and bound over 12 stages x 6 device kinds (cost, energy and latency objectives, p99 bound 60 ms, 8 streams at 30 fps), %d solves: median %s, worst %s. Target: under 1 s.\n\n", len(solve), median(solve).wall, worst)

	media := mediaDir()
	env := append(os.Environ(), "AVFLOW_MEDIA="+media)
	pipe, _ := filepath.Abs("examples/irl-privacy/pipeline.yaml")
	profile := filepath.Join(work, "profile.yaml")
	placement := filepath.Join(work, "placement.yaml")
	run := func(args ...string) string {
		cmd := exec.Command(bin, args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			fail(fmt.Errorf("%s: %w\n%s", strings.Join(args, " "), err, tail(string(out), 2000)))
		}
		return string(out)
	}
	fmt.Fprintf(b, "Prediction vs run: `avflow calibrate examples/irl-privacy/pipeline.yaml --frames 300`, `avflow plan --streams 1 --fps 30` (CPU only here), then the pipeline run unpaced over 600 frames with `--placement`; the planner's predicted throughput on this machine against the run's measured fps at the sink.\n\n| round | predicted fps | measured fps | measured / predicted |\n|---:|---:|---:|---:|\n")
	for i := 0; i < min(rounds, 3); i++ {
		run("--log-level", "warn", "calibrate", "--frames", "300", "-o", profile, pipe)
		out := run("plan", "--profile", profile, "--streams", "1", "--fps", "30", "-o", placement, pipe)
		m := sustainsRe.FindStringSubmatch(out)
		if m == nil {
			fail(fmt.Errorf("plan printed no prediction:\n%s", out))
		}
		pred, _ := strconv.ParseFloat(m[1], 64)
		out = run("--log-level", "warn", "run", "--transport", "local", "--placement", placement, "--set", "cam.loop=true", "--set", "cam.max_frames=600", pipe)
		measured := 0.0
		for _, row := range endTable(out) {
			if row["stage"] == "out" && row["kind"] == "sink" {
				measured, _ = strconv.ParseFloat(row["fps"], 64)
			}
		}
		fmt.Fprintf(b, "| %d | %.1f | %.1f | %.2f |\n", i+1, pred, measured, measured/pred)
	}
	fmt.Fprintf(b, "\nTarget: measured within 15%% of predicted.\n\n")
}
