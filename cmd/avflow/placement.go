package main

import (
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/avflow/avflow/accelerators"
	"github.com/avflow/avflow/pipeline"
	"github.com/urfave/cli/v2"
	"go.yaml.in/yaml/v3"
)

// profileFile is what avflow calibrate writes.
type profileFile struct {
	Pipeline  string                                     `yaml:"pipeline"`
	Frames    int                                        `yaml:"frames"`
	Measured  string                                     `yaml:"measured"`
	PeakRSSMB float64                                    `yaml:"peak_rss_mb"` // the whole process; FFmpeg and ONNX Runtime memory is not attributed per stage
	Note      string                                     `yaml:"note,omitempty"`
	Stages    []string                                   `yaml:"stages"`
	Perf      map[string]map[string]accelerators.Measure `yaml:"perf"`
}

// placementFile is what avflow plan writes and avflow run --placement reads.
type placementFile struct {
	Pipeline  string           `yaml:"pipeline"`
	Streams   int              `yaml:"streams"`
	FPS       float64          `yaml:"fps"`
	Objective string           `yaml:"objective"`
	PerHour   float64          `yaml:"dollars_per_hour"`
	Stages    []placementStage `yaml:"stages"`
}

type placementStage struct {
	Name     string `yaml:"name"`
	Device   string `yaml:"device"`
	Replicas int    `yaml:"replicas"`
}

func calibrateCmd() *cli.Command {
	return &cli.Command{
		Name:      "calibrate",
		Usage:     "measure each stage of a pipeline on each usable device kind, on the pipeline's real input",
		ArgsUsage: "pipeline.yaml",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "frames", Value: 300, Usage: "video frames to run per device kind"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "profile.yaml", Usage: "profile file to write"},
			&cli.StringSliceFlag{Name: "set", Usage: "override a param: stage.param=value"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return cli.Exit("avflow calibrate: want one pipeline file", exitInvalid)
			}
			inv := accelerators.Machine("")
			prof := profileFile{Frames: c.Int("frames"), Measured: time.Now().UTC().Format(time.RFC3339), Perf: map[string]map[string]accelerators.Measure{},
				Note: "fps is per replica (1000 / mean processing ms of the stage while the whole pipeline ran); p50/p99 are per-frame processing times"}
			for _, kind := range []accelerators.Kind{accelerators.CPU, accelerators.GPU, accelerators.NPU} {
				if len(inv.Usable(kind)) == 0 {
					slog.Info("calibrate: skipping device kind", "kind", kind, "why", inv.Why(kind))
					continue
				}
				cfg, err := load(c.Args().First(), c.StringSlice("set"))
				if err != nil {
					return err
				}
				prof.Pipeline = cfg.Name
				for _, s := range cfg.Stages {
					s.Accelerator, s.Strict, s.Fallback, s.Device = string(kind), false, nil, ""
					// Stages are measured here side by side on one kind, but a plan
					// may place neighbours apart: a GPU decoder is measured with
					// its copy back to system memory (the cost it has next to a
					// CPU stage), not with its frames left for a GPU neighbour.
					if s.Kind == "decode" && (!s.Params.Has("hw_format") || s.Params.String("hw_format") == "auto") {
						_ = cfg.Set(s.Name + ".hw_format=planar")
					}
					if s.Kind == "source" {
						if err := cfg.Set(s.Name + ".max_frames=" + fmt.Sprint(c.Int("frames"))); err != nil {
							return cli.Exit(err.Error(), exitInvalid)
						}
						_ = cfg.Set(s.Name + ".realtime=false")
						_ = cfg.Set(s.Name + ".loop=true")
					}
				}
				if err := pipeline.Default.Validate(cfg); err != nil {
					return cli.Exit(err.Error(), exitInvalid)
				}
				r, err := pipeline.NewRunner(pipeline.Default, cfg, pipeline.Options{Transport: pipeline.TransportLocal, Log: slog.New(slog.DiscardHandler)})
				if err != nil {
					return cli.Exit("avflow: "+err.Error(), exitInvalid)
				}
				slog.Info("calibrating", "kind", kind, "frames", c.Int("frames"))
				if err := r.Run(c.Context); err != nil {
					return cli.Exit("avflow: calibrate: "+err.Error(), exitRun)
				}
				prof.Stages = prof.Stages[:0]
				for _, st := range r.Metrics().Snapshot() {
					prof.Stages = append(prof.Stages, st.Name)
					if inv.KindOf(st.Device) != kind || st.BusyMs <= 0 {
						continue // the stage fell back to another kind: not a measure of this one
					}
					if prof.Perf[st.Name] == nil {
						prof.Perf[st.Name] = map[string]accelerators.Measure{}
					}
					prof.Perf[st.Name][string(kind)] = accelerators.Measure{FPS: 1000 / st.BusyMs, P50Ms: st.BusyP50Ms, P99Ms: st.BusyP99Ms}
				}
			}
			prof.PeakRSSMB = peakRSSMB()
			b, _ := yaml.Marshal(prof)
			if err := os.WriteFile(c.String("output"), b, 0o644); err != nil {
				return cli.Exit("avflow: "+err.Error(), exitRun)
			}
			fmt.Print(string(b))
			return nil
		},
	}
}

func planCmd() *cli.Command {
	return &cli.Command{
		Name:      "plan",
		Usage:     "choose a device and replica count for every stage that meets a target at the lowest cost, energy or latency",
		ArgsUsage: "pipeline.yaml",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "profile", Required: true, Usage: "profile from avflow calibrate"},
			&cli.IntFlag{Name: "streams", Value: 1},
			&cli.Float64Flag{Name: "fps", Value: 30},
			&cli.Float64Flag{Name: "p99-ms", Usage: "upper bound on the sum of the stages' p99 processing times"},
			&cli.StringFlag{Name: "objective", Value: "cost", Usage: "cost, energy or latency"},
			&cli.StringFlag{Name: "costs", Usage: "cost model (default: the shipped accelerators.yaml)"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "placement file to write"},
		},
		Action: func(c *cli.Context) error {
			b, err := os.ReadFile(c.String("profile"))
			if err != nil {
				return cli.Exit("avflow: plan: "+err.Error(), exitInvalid)
			}
			var pf profileFile
			if err := yaml.Unmarshal(b, &pf); err != nil {
				return cli.Exit("avflow: plan: "+c.String("profile")+": "+err.Error(), exitInvalid)
			}
			costs, err := accelerators.LoadCosts(c.String("costs"))
			if err != nil {
				return cli.Exit("avflow: "+err.Error(), exitInvalid)
			}
			t0 := time.Now()
			plan, err := accelerators.Solve(accelerators.Profile{Stages: pf.Stages, Perf: pf.Perf}, costs, accelerators.Target{
				Streams: c.Int("streams"), FPS: c.Float64("fps"), P99Ms: c.Float64("p99-ms"), Objective: c.String("objective")})
			if err != nil {
				return cli.Exit("avflow: "+err.Error(), exitRun)
			}
			fmt.Print(plan.Table())
			pred := plan.PredictedFPS(accelerators.Profile{Stages: pf.Stages, Perf: pf.Perf}, map[string]int{"cpu": runtime.NumCPU()})
			fmt.Printf("planned in %s; on this machine (%d cores shared by the CPU stages) the placement sustains about %.1f fps in all\n",
				time.Since(t0).Round(time.Microsecond), runtime.NumCPU(), pred)
			if out := c.String("output"); out != "" {
				pl := placementFile{Pipeline: pf.Pipeline, Streams: c.Int("streams"), FPS: c.Float64("fps"), Objective: plan.Target.Objective, PerHour: plan.PerHour}
				for _, ch := range plan.Choices {
					pl.Stages = append(pl.Stages, placementStage{Name: ch.Stage, Device: ch.Device, Replicas: ch.Replicas})
				}
				b, _ := yaml.Marshal(pl)
				if err := os.WriteFile(out, b, 0o644); err != nil {
					return cli.Exit("avflow: "+err.Error(), exitRun)
				}
			}
			return nil
		},
	}
}

// applyPlacement sets each stage's accelerator from a placement file.
func applyPlacement(cfg *pipeline.Config, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("placement: %w", err)
	}
	var pl placementFile
	if err := yaml.Unmarshal(b, &pl); err != nil {
		return fmt.Errorf("placement %s: %w", path, err)
	}
	for _, ps := range pl.Stages {
		s := cfg.Stage(ps.Name)
		if s == nil {
			return fmt.Errorf("placement %s: no stage %q in pipeline %s", path, ps.Name, cfg.Name)
		}
		kind, _, _ := strings.Cut(ps.Device, "-") // gpu-h100 -> gpu
		s.Accelerator = kind
		if ps.Replicas > 1 {
			spec, _ := pipeline.Default.Lookup(s.Kind)
			if spec == nil {
				continue
			}
			if err := spec.ReplicasError(s.Params); err != nil {
				slog.Warn("placement asks for replicas of a stage that cannot have them; it runs as one instance",
					"stage", ps.Name, "replicas", ps.Replicas, "why", err)
				continue
			}
			s.Replicas = ps.Replicas
		}
	}
	return nil
}
