package pipeline_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/stage"
)

// The per-stage cost of a pipeline: pipelines of many light stages (a
// chain, or cameras of 6 stages each) built from the runner's test kinds,
// measured from Run to Ready (start), to the first message at a sink
// (first frame) and to the end, with the memory, goroutines and idle CPU
// of the running pipeline. Run one size per process, so that the process
// RSS belongs to that size:
//
//	go test -run '^$' -bench 'Scale/nats/chain-1000$' -benchtime 1x ./pipeline/

// scaleLayouts are the pipelines measured: name -> YAML stages.
var scaleLayouts = []struct {
	name   string
	stages int
	yaml   func() string
}{
	{"chain-10", 10, func() string { return chainYAML(10) }},
	{"chain-100", 100, func() string { return chainYAML(100) }},
	{"cameras-64x6", 384, func() string { return camerasYAML(64) }},
	{"chain-1000", 1000, func() string { return chainYAML(1000) }},
	{"cameras-167x6", 1002, func() string { return camerasYAML(167) }},
	{"chain-2000", pipeline.MaxStages, func() string { return chainYAML(pipeline.MaxStages) }},
}

// chainYAML is a source, n-2 relays and a sink in one line.
func chainYAML(n int) string {
	var b strings.Builder
	b.WriteString("name: scale\nstages:\n  - {name: s0, kind: idle}\n")
	for i := 1; i < n-1; i++ {
		fmt.Fprintf(&b, "  - {name: s%d, kind: relay, inputs: [s%d]}\n", i, i-1)
	}
	fmt.Fprintf(&b, "  - {name: s%d, kind: tally, inputs: [s%d]}\n", n-1, n-2)
	return b.String()
}

// camerasYAML is c cameras of 6 stages: a source, 4 relays, a sink.
func camerasYAML(c int) string {
	var b strings.Builder
	b.WriteString("name: scale\nstages:\n")
	for i := range c {
		fmt.Fprintf(&b, "  - {name: c%d-src, kind: idle}\n", i)
		prev := fmt.Sprintf("c%d-src", i)
		for j := range 4 {
			name := fmt.Sprintf("c%d-r%d", i, j)
			fmt.Fprintf(&b, "  - {name: %s, kind: relay, inputs: [%s]}\n", name, prev)
			prev = name
		}
		fmt.Fprintf(&b, "  - {name: c%d-sink, kind: tally, inputs: [%s]}\n", i, prev)
	}
	return b.String()
}

// idleSource sends a few messages once released, then idles until the run
// drains: the pipeline's idle cost is measured while it waits.
type idleSource struct {
	stage.Base
	release <-chan struct{}
	gen     gen
}

func (s *idleSource) Process(ctx context.Context, in stage.Batch) (stage.Batch, error) {
	select {
	case <-s.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if s.gen.sent < s.gen.n {
		return s.gen.Process(ctx, in)
	}
	<-ctx.Done()
	return nil, ctx.Err()
}

// tally counts what reaches the sinks and when the first message came.
type tally struct {
	stage.Base
	t *scaleTally
}

type scaleTally struct {
	n     atomic.Int64
	first atomic.Int64 // unix ns of the first message
	want  int64
	all   chan struct{}
	once  sync.Once
}

func (s tally) Process(_ context.Context, in stage.Batch) (stage.Batch, error) {
	now := time.Now().UnixNano()
	s.t.first.CompareAndSwap(0, now)
	if s.t.n.Add(int64(len(in))) >= s.t.want {
		s.t.once.Do(func() { close(s.t.all) })
	}
	return nil, nil
}

// scaleEnv is the runner's test kinds plus idle and tally.
func scaleEnv(b *testing.B, release <-chan struct{}, st *scaleTally, perSource int) *pipeline.Environment {
	env := testEnv(b, &collector{})
	for _, spec := range []pipeline.Spec{
		{Kind: "idle", MaxInputs: 0,
			Ports: func(pipeline.Params, []pipeline.PortType) ([]pipeline.Port, error) {
				return []pipeline.Port{{Name: "out", Type: dataPort}}, nil
			},
			New: func(context.Context, pipeline.Init) (stage.Stage, error) {
				return &idleSource{release: release, gen: gen{n: perSource, size: 64}}, nil
			}},
		{Kind: "tally", MinInputs: 1, MaxInputs: -1,
			Ports: func(pipeline.Params, []pipeline.PortType) ([]pipeline.Port, error) { return nil, nil },
			New:   func(context.Context, pipeline.Init) (stage.Stage, error) { return tally{t: st}, nil }},
	} {
		if err := env.Register(spec); err != nil {
			b.Fatal(err)
		}
	}
	return env
}

func BenchmarkScale(b *testing.B) {
	for _, transport := range []string{"nats", "local"} {
		for _, l := range scaleLayouts {
			b.Run(transport+"/"+l.name, func(b *testing.B) {
				for b.Loop() {
					scaleRun(b, transport, l.stages, l.yaml())
				}
			})
		}
	}
}

// scaleRun runs one pipeline: it waits for Ready, measures the idle
// pipeline for a second, releases the sources (each sends perSource
// messages), waits for every message at the sinks, then drains.
func scaleRun(b *testing.B, transport string, stages int, yaml string) {
	const perSource = 5
	b.StopTimer()
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	goBase := runtime.NumGoroutine()

	t0 := time.Now()
	cfg, err := pipeline.Parse([]byte(yaml), "scale.yaml")
	if err != nil {
		b.Fatal(err)
	}
	release := make(chan struct{})
	st := &scaleTally{all: make(chan struct{})}
	env := scaleEnv(b, release, st, perSource)
	if err := env.Validate(cfg); err != nil {
		b.Fatal(err)
	}
	sources := 0
	for _, s := range cfg.Stages {
		if s.Kind == "idle" {
			sources++
		}
	}
	st.want = int64(sources * perSource)
	validated := time.Now()
	b.StartTimer()

	r, err := pipeline.NewRunner(env, cfg, pipeline.Options{Transport: transport, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- r.Run(ctx) }()
	select {
	case <-r.Ready():
	case err := <-done:
		b.Fatalf("run ended before Ready: %v", err)
	case <-ctx.Done():
		b.Fatal("not ready within 5 minutes")
	}
	ready := time.Now()

	// The idle pipeline: memory, goroutines, CPU over a second.
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	goroutines := runtime.NumGoroutine() - goBase
	rss := rssBytes(b)
	b.StopTimer()
	cpu0 := cpuTime()
	idleFrom := time.Now()
	time.Sleep(time.Second) // measuring idle CPU: the pipeline must sit still
	idleCPU := (cpuTime() - cpu0).Seconds() / time.Since(idleFrom).Seconds()

	b.StartTimer()
	released := time.Now()
	close(release)
	select {
	case <-st.all:
	case err := <-done:
		b.Fatalf("run ended with %d of %d messages: %v", st.n.Load(), st.want, err)
	case <-ctx.Done():
		b.Fatalf("%d of %d messages within 5 minutes", st.n.Load(), st.want)
	}
	r.Drain()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	end := time.Now()

	b.ReportMetric(float64(stages), "stages")
	b.ReportMetric(validated.Sub(t0).Seconds(), "validate-s")
	b.ReportMetric(ready.Sub(start).Seconds(), "start-s")
	b.ReportMetric(time.Duration(st.first.Load()-released.UnixNano()).Seconds(), "first-frame-s")
	b.ReportMetric(end.Sub(released).Seconds(), "run-s")
	b.ReportMetric(float64(rss)/(1<<20), "rss-MB")
	b.ReportMetric(float64(int64(ms.HeapInuse+ms.StackInuse)-int64(base.HeapInuse+base.StackInuse))/float64(stages)/(1<<10), "KB/stage")
	b.ReportMetric(float64(goroutines)/float64(stages), "goroutines/stage")
	b.ReportMetric(idleCPU*100, "idle-cpu-%")
}

// rssBytes is the process's resident memory now.
func rssBytes(b *testing.B) int64 {
	data, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		b.Skipf("no /proc/self/statm: %v", err)
	}
	f := strings.Fields(string(data))
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		b.Fatal(err)
	}
	return pages * int64(os.Getpagesize())
}

// cpuTime is the CPU time the process used so far (user and system).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
