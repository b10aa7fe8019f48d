package accelerators

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func costs() Costs {
	return Costs{
		"cpu": {PricePerHour: 0.04, IdleWatts: 5, BusyWatts: 12},
		"gpu": {PricePerHour: 0.80, IdleWatts: 16, BusyWatts: 72},
		"npu": {PricePerHour: 0.02, IdleWatts: 1, BusyWatts: 8},
	}
}

func profile() Profile {
	return Profile{
		Stages: []string{"decode", "infer", "encode"},
		Perf: map[string]map[string]Measure{
			"decode": {"cpu": {FPS: 200, P99Ms: 4}, "gpu": {FPS: 2000, P99Ms: 2}},
			"infer":  {"cpu": {FPS: 20, P99Ms: 50}, "gpu": {FPS: 600, P99Ms: 8}, "npu": {FPS: 60, P99Ms: 20}},
			"encode": {"cpu": {FPS: 100, P99Ms: 10}},
		},
	}
}

func choice(p Plan, stage string) Choice {
	for _, c := range p.Choices {
		if c.Stage == stage {
			return c
		}
	}
	return Choice{}
}

// TestGPUCheaperOnlyAboveSomeStreams: at 1 stream the NPU/CPU win for
// inference; at many streams one GPU card is cheaper than many small units.
func TestGPUCheaperOnlyAboveSomeStreams(t *testing.T) {
	small, err := Solve(profile(), costs(), Target{Streams: 1, FPS: 30, Objective: "cost"})
	if err != nil {
		t.Fatal(err)
	}
	// infer at 30 fps: cpu needs 2 ($0.08), npu 1 ($0.02), gpu 1 ($0.80).
	if c := choice(small, "infer"); c.Device != "npu" || c.Replicas != 1 {
		t.Fatalf("1 stream: infer on %s x%d, want npu x1\n%s", c.Device, c.Replicas, small.Table())
	}
	big, err := Solve(profile(), costs(), Target{Streams: 16, FPS: 30, Objective: "cost"})
	if err != nil {
		t.Fatal(err)
	}
	// 480 fps: cpu 30 ($1.20), npu 10 ($0.20)... npu still wins unless limited.
	lim := costs()
	lim["npu"] = Cost{Units: 2, PricePerHour: 0.02, IdleWatts: 1, BusyWatts: 8}
	big, err = Solve(profile(), lim, Target{Streams: 16, FPS: 30, Objective: "cost"})
	if err != nil {
		t.Fatal(err)
	}
	if c := choice(big, "infer"); c.Device != "gpu" || c.Replicas != 1 {
		t.Fatalf("16 streams with 2 NPUs: infer on %s x%d, want gpu x1\n%s", c.Device, c.Replicas, big.Table())
	}
	if c := choice(big, "infer"); !strings.Contains(c.RunnerUp, "npu would need 10 replica(s): $0.200/h, more than its 2 unit(s)") {
		t.Errorf("runner-up line: %q", c.RunnerUp)
	}
	// The crossover: find the smallest stream count where the GPU wins with 2 NPUs.
	cross := 0
	for n := 1; n <= 16 && cross == 0; n++ {
		p, err := Solve(profile(), lim, Target{Streams: n, FPS: 30})
		if err != nil {
			t.Fatal(err)
		}
		if choice(p, "infer").Device == "gpu" {
			cross = n
		}
	}
	// 2 NPUs carry 96 fps at 80% = 3 streams; from 4 streams the rest costs CPUs (20 fps each)
	// until those cost more than a GPU card.
	if cross < 3 || cross > 16 {
		t.Fatalf("crossover at %d streams", cross)
	}
}

// TestKnownOptimum compares the planner with brute force on a hand-made case.
func TestKnownOptimum(t *testing.T) {
	for _, obj := range []string{"cost", "energy", "latency"} {
		for _, streams := range []int{1, 3, 8} {
			p, err := Solve(profile(), costs(), Target{Streams: streams, FPS: 30, Objective: obj})
			if err != nil {
				t.Fatal(err)
			}
			if want := bruteForce(t, profile(), costs(), float64(streams)*30, obj); fmt.Sprintf("%.6f", score(p, obj)) != fmt.Sprintf("%.6f", want) {
				t.Errorf("%s, %d streams: planner %.4f, brute force %.4f\n%s", obj, streams, score(p, obj), want, p.Table())
			}
		}
	}
}

func score(p Plan, obj string) float64 {
	switch obj {
	case "energy":
		return p.Watts
	case "latency":
		return p.P99Ms
	}
	return p.PerHour
}

func bruteForce(t *testing.T, p Profile, c Costs, need float64, obj string) float64 {
	best := 1e18
	var rec func(i int, s float64)
	rec = func(i int, s float64) {
		if i == len(p.Stages) {
			best = min(best, s)
			return
		}
		o, _ := options(p, c, p.Stages[i], need)
		for _, x := range o {
			rec(i+1, s+x.score(obj))
		}
	}
	rec(0, 0)
	return best
}

func TestLatencyObjectiveAndBound(t *testing.T) {
	p, err := Solve(profile(), costs(), Target{Streams: 1, FPS: 30, Objective: "latency"})
	if err != nil {
		t.Fatal(err)
	}
	if choice(p, "infer").Device != "gpu" || choice(p, "decode").Device != "gpu" || p.P99Ms != 20 {
		t.Fatalf("latency plan:\n%s", p.Table())
	}
	_, err = Solve(profile(), costs(), Target{Streams: 1, FPS: 30, P99Ms: 15})
	if !errors.Is(err, ErrInfeasible) || !strings.Contains(err.Error(), "fastest devices add up to 20.0 ms") {
		t.Fatalf("p99 bound: %v", err)
	}
	cost, _ := Solve(profile(), costs(), Target{Streams: 1, FPS: 30, P99Ms: 30})
	if cost.P99Ms > 30 {
		t.Fatalf("p99 bound broken: %.1f", cost.P99Ms)
	}
}

func TestInfeasibleNamesTheStage(t *testing.T) {
	c := costs()
	c["cpu"] = Cost{Units: 2, PricePerHour: 0.04}
	_, err := Solve(profile(), c, Target{Streams: 8, FPS: 30})
	if !errors.Is(err, ErrInfeasible) || !strings.Contains(err.Error(), "cannot reach 30 fps for 8 streams: the encode stage tops out at 160.0 fps") {
		t.Fatalf("got %v", err)
	}
}

// TestPlannerScale: 12 stages x 6 device kinds stays well under a second.
func TestPlannerScale(t *testing.T) {
	p := Profile{Perf: map[string]map[string]Measure{}}
	c := Costs{}
	for d := 0; d < 6; d++ {
		c[fmt.Sprintf("dev%d", d)] = Cost{PricePerHour: 0.1 * float64(d+1), BusyWatts: float64(10 * (6 - d))}
	}
	for s := 0; s < 12; s++ {
		name := fmt.Sprintf("s%d", s)
		p.Stages = append(p.Stages, name)
		p.Perf[name] = map[string]Measure{}
		for d := 0; d < 6; d++ {
			p.Perf[name][fmt.Sprintf("dev%d", d)] = Measure{FPS: float64(10 + (s*7+d*13)%50), P99Ms: float64(1 + (s+d)%9)}
		}
	}
	t0 := time.Now()
	plan, err := Solve(p, c, Target{Streams: 8, FPS: 30})
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Choices) != 12 {
		t.Fatal("incomplete plan")
	}
	t.Logf("12 stages x 6 devices: %s, %d nodes explored, %d pruned", time.Since(t0), plan.Explored, plan.Pruned)
}
