package accelerators

import (
	_ "embed"
	"errors"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

//go:embed accelerators.yaml
var defaultCosts []byte

// ErrInfeasible reports a target no placement can reach.
var ErrInfeasible = errors.New("plan: target cannot be reached")

// Cost is the price and power of one unit of a device kind.
type Cost struct {
	Units        int     `yaml:"units"` // how many exist (cores, cards); 0: as many as needed (cloud)
	PricePerHour float64 `yaml:"price_per_hour"`
	IdleWatts    float64 `yaml:"idle_watts"`
	BusyWatts    float64 `yaml:"busy_watts"`
}

// Costs maps device kinds (cpu, gpu, npu, or finer names) to their cost.
type Costs map[string]Cost

// LoadCosts reads a cost file; "" gives the shipped defaults.
func LoadCosts(path string) (Costs, error) {
	data := defaultCosts
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("plan: reading costs: %w", err)
		}
		data = b
	}
	var f struct {
		Devices Costs `yaml:"devices"`
	}
	if err := yaml.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("plan: costs: %w", err)
	}
	return f.Devices, nil
}

// Measure is what one replica of a stage does on one device kind.
type Measure struct {
	FPS      float64 `yaml:"fps"`                 // frames per second one replica sustains
	P50Ms    float64 `yaml:"p50_ms"`              // per-frame latency
	P99Ms    float64 `yaml:"p99_ms"`              //
	MemoryMB float64 `yaml:"memory_mb,omitempty"` //
}

// Profile is what calibration measured: stage -> device kind -> measure.
type Profile struct {
	Stages []string                      `yaml:"stages"` // in pipeline order
	Perf   map[string]map[string]Measure `yaml:"perf"`
}

// Target is what a plan must reach.
type Target struct {
	Streams   int
	FPS       float64
	P99Ms     float64 // 0: no bound
	Objective string  // cost, energy or latency
}

// Choice is one stage's device and replica count.
type Choice struct {
	Stage       string
	Device      string
	Replicas    int
	CapacityFPS float64 // all replicas together
	Utilisation float64
	PerHour     float64
	Watts       float64
	P99Ms       float64
	RunnerUp    string // why the second-best device lost
}

// Plan is a full placement.
type Plan struct {
	Target           Target
	Choices          []Choice
	PerHour, Watts   float64
	P99Ms            float64 // sum over stages (a chain)
	PerStreamHour    float64
	Explored, Pruned int
}

// MaxUtilisation is the highest load a plan puts on any stage's replicas.
const MaxUtilisation = 0.8

type option struct {
	dev      string
	replicas int
	cap      float64
	util     float64
	perHour  float64
	watts    float64
	p99      float64
}

// options lists each device a stage can run on with the replicas it needs.
func options(p Profile, costs Costs, stage string, need float64) ([]option, string) {
	var out []option
	var best float64
	bestDev := ""
	for dev, m := range p.Perf[stage] {
		c, ok := costs[dev]
		if !ok || m.FPS <= 0 {
			continue
		}
		if m.FPS > best {
			best, bestDev = m.FPS, dev
		}
		r := int(math.Ceil(need / (MaxUtilisation * m.FPS)))
		r = max(r, 1)
		util := need / (float64(r) * m.FPS)
		out = append(out, option{dev: dev, replicas: r, cap: float64(r) * m.FPS, util: util,
			perHour: float64(r) * c.PricePerHour,
			watts:   float64(r) * (c.IdleWatts + util*(c.BusyWatts-c.IdleWatts)),
			p99:     m.P99Ms})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].dev < out[j].dev })
	return out, fmt.Sprintf("%s at %.1f fps per replica", bestDev, best)
}

func (o option) score(objective string) float64 {
	switch objective {
	case "energy":
		return o.watts
	case "latency":
		return o.p99
	}
	return o.perHour
}

// Solve chooses, for every stage, a device and replica count so that each
// stage keeps up with the target at most 80% utilised and the objective is
// smallest. It is exact: a depth-first branch and bound over the stages
// with the best remaining per-stage score as the bound, and the p99 bound
// checked on the chain.
func Solve(p Profile, costs Costs, t Target) (Plan, error) {
	if t.Streams <= 0 || t.FPS <= 0 {
		return Plan{}, fmt.Errorf("plan: need --streams and --fps above 0")
	}
	switch t.Objective {
	case "", "cost":
		t.Objective = "cost"
	case "energy", "latency":
	default:
		return Plan{}, fmt.Errorf("plan: objective %q: want cost, energy or latency", t.Objective)
	}
	need := float64(t.Streams) * t.FPS
	opts := make([][]option, len(p.Stages))
	for i, s := range p.Stages {
		o, best := options(p, costs, s, need)
		if len(o) == 0 {
			return Plan{}, fmt.Errorf("%w: stage %s has no measured device with a known cost", ErrInfeasible, s)
		}
		opts[i] = o
		_ = best
	}
	// Lower bounds of what the remaining stages add.
	rest := make([]float64, len(p.Stages)+1)
	restP99 := make([]float64, len(p.Stages)+1)
	for i := len(p.Stages) - 1; i >= 0; i-- {
		m, mp := math.Inf(1), math.Inf(1)
		for _, o := range opts[i] {
			m = min(m, o.score(t.Objective))
			mp = min(mp, o.p99)
		}
		rest[i], restP99[i] = rest[i+1]+m, restP99[i+1]+mp
	}
	best := math.Inf(1)
	var bestPick []int
	pick := make([]int, len(p.Stages))
	used := map[string]int{}
	explored, pruned := 0, 0
	var walk func(i int, score, p99 float64)
	walk = func(i int, score, p99 float64) {
		explored++
		if score+rest[i] >= best || (t.P99Ms > 0 && p99+restP99[i] > t.P99Ms) {
			pruned++
			return
		}
		for dev, n := range used {
			if u := costs[dev].Units; u > 0 && n > u {
				pruned++
				return
			}
		}
		if i == len(p.Stages) {
			best, bestPick = score, append([]int(nil), pick...)
			return
		}
		// Cheapest first, so good plans come early and prune more.
		order := make([]int, len(opts[i]))
		for k := range order {
			order[k] = k
		}
		sort.Slice(order, func(a, b int) bool {
			return opts[i][order[a]].score(t.Objective) < opts[i][order[b]].score(t.Objective)
		})
		for _, k := range order {
			o := opts[i][k]
			pick[i] = k
			used[o.dev] += o.replicas
			walk(i+1, score+o.score(t.Objective), p99+o.p99)
			used[o.dev] -= o.replicas
		}
	}
	walk(0, 0, 0)
	if bestPick == nil {
		return Plan{}, infeasible(p, costs, t, opts)
	}
	plan := Plan{Target: t, Explored: explored, Pruned: pruned}
	for i, k := range bestPick {
		o := opts[i][k]
		c := Choice{Stage: p.Stages[i], Device: o.dev, Replicas: o.replicas, CapacityFPS: o.cap, Utilisation: o.util,
			PerHour: o.perHour, Watts: o.watts, P99Ms: o.p99}
		// Why the runner-up lost.
		var second *option
		for j := range opts[i] {
			if j != k && (second == nil || opts[i][j].score(t.Objective) < second.score(t.Objective)) {
				second = &opts[i][j]
			}
		}
		if second != nil {
			c.RunnerUp = fmt.Sprintf("%s would need %d replica(s): %s", second.dev, second.replicas, describe(*second, t.Objective))
			if u := costs[second.dev].Units; u > 0 && second.replicas > u {
				c.RunnerUp += fmt.Sprintf(", more than its %d unit(s)", u)
			}
		}
		plan.Choices = append(plan.Choices, c)
		plan.PerHour += o.perHour
		plan.Watts += o.watts
		plan.P99Ms += o.p99
	}
	plan.PerStreamHour = plan.PerHour / float64(t.Streams)
	return plan, nil
}

func describe(o option, objective string) string {
	switch objective {
	case "energy":
		return fmt.Sprintf("%.0f W", o.watts)
	case "latency":
		return fmt.Sprintf("p99 %.1f ms", o.p99)
	}
	return fmt.Sprintf("$%.3f/h", o.perHour)
}

// infeasible explains which bound cannot be met.
func infeasible(p Profile, costs Costs, t Target, opts [][]option) error {
	if t.P99Ms > 0 {
		var sum float64
		var parts []string
		for i, s := range p.Stages {
			m := math.Inf(1)
			for _, o := range opts[i] {
				m = min(m, o.p99)
			}
			sum += m
			parts = append(parts, fmt.Sprintf("%s %.1f ms", s, m))
		}
		return fmt.Errorf("%w: cannot keep p99 under %.1f ms for %d streams at %.0f fps: the fastest devices add up to %.1f ms (%s)",
			ErrInfeasible, t.P99Ms, t.Streams, t.FPS, sum, strings.Join(parts, ", "))
	}
	// Name the stage that cannot keep up even with every unit of its best device.
	need := float64(t.Streams) * t.FPS
	for _, s := range p.Stages {
		top, where := 0.0, ""
		for dev, m := range p.Perf[s] {
			c, ok := costs[dev]
			if !ok || m.FPS <= 0 {
				continue
			}
			if c.Units == 0 {
				top, where = math.Inf(1), "" // as many units as needed
				break
			}
			if capFPS := float64(c.Units) * m.FPS * MaxUtilisation; capFPS > top {
				top, where = capFPS, fmt.Sprintf("%d %s unit(s) at %.1f fps each, %d%% utilised", c.Units, dev, m.FPS, int(MaxUtilisation*100))
			}
		}
		if where != "" && top < need {
			return fmt.Errorf("%w: cannot reach %.0f fps for %d streams: the %s stage tops out at %.1f fps (%s)",
				ErrInfeasible, t.FPS, t.Streams, s, top, where)
		}
	}
	return fmt.Errorf("%w: no placement fits %d streams at %.0f fps on the devices' units together", ErrInfeasible, t.Streams, t.FPS)
}

// PredictedFPS is the total frame rate the plan's stages sustain when the
// stages on kind share units of it (a CPU's cores): the least of each
// stage's capacity and, per kind, units / sum of the seconds each stage
// spends per frame there.
func (p Plan) PredictedFPS(prof Profile, units map[string]int) float64 {
	best := math.Inf(1)
	perFrame := map[string]float64{}
	for _, c := range p.Choices {
		best = min(best, c.CapacityFPS)
		if m := prof.Perf[c.Stage][c.Device]; m.FPS > 0 {
			perFrame[c.Device] += 1 / m.FPS
		}
	}
	for dev, sec := range perFrame {
		if u := units[dev]; u > 0 && sec > 0 {
			best = min(best, float64(u)/sec)
		}
	}
	return best
}

// Table prints the plan: one row per stage and one line per stage on why the runner-up lost.
func (p Plan) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-12s %-10s %8s %12s %6s %9s %8s\n", "STAGE", "DEVICE", "REPLICAS", "CAPACITY fps", "UTIL", "$/h", "W")
	for _, c := range p.Choices {
		fmt.Fprintf(&b, "%-12s %-10s %8d %12.1f %5.0f%% %9.3f %8.1f\n", c.Stage, c.Device, c.Replicas, c.CapacityFPS, c.Utilisation*100, c.PerHour, c.Watts)
	}
	fmt.Fprintf(&b, "total: $%.3f/h, $%.4f per stream-hour, %.0f W, p99 chain %.1f ms (%d nodes explored, %d pruned)\n",
		p.PerHour, p.PerStreamHour, p.Watts, p.P99Ms, p.Explored, p.Pruned)
	for _, c := range p.Choices {
		if c.RunnerUp != "" {
			fmt.Fprintf(&b, "  %s: chose %s; runner-up %s\n", c.Stage, c.Device, c.RunnerUp)
		}
	}
	return b.String()
}
