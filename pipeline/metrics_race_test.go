package pipeline_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/avflow/avflow/pipeline"
)

// TestMetricsReadWhileStarting: a Prometheus scrape may come while the run
// is still building its stages (the CLI serves /metrics before Run): the
// metrics are safe to read then (run with -race), and show every stage once
// the run is ready.
func TestMetricsReadWhileStarting(t *testing.T) {
	var yaml strings.Builder
	yaml.WriteString("name: scrape\ntransport: local\nstages:\n  - {name: s0, kind: gen, params: {n: 20}}\n")
	for i := 1; i < 30; i++ {
		fmt.Fprintf(&yaml, "  - {name: s%d, kind: relay, inputs: [s%d]}\n", i, i-1)
	}
	yaml.WriteString("  - {name: c, kind: collect, inputs: [s29]}\n")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var r *pipeline.Runner
	ready := make(chan *pipeline.Runner, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		rr := <-ready
		for {
			select {
			case <-stop:
				return
			default:
			}
			_ = rr.Metrics().Snapshot()
			_ = rr.Metrics().Elapsed()
			_ = rr.Metrics().Progress()
		}
	}()
	col := &collector{}
	env := testEnv(t, col)
	cfg, err := pipeline.Parse([]byte(yaml.String()), "scrape.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Validate(cfg); err != nil {
		t.Fatal(err)
	}
	if r, err = pipeline.NewRunner(env, cfg, pipeline.Options{}); err != nil {
		t.Fatal(err)
	}
	ready <- r
	err = r.Run(t.Context())
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if n := len(r.Metrics().Snapshot()); n != 31 {
		t.Fatalf("%d stages in the metrics, want 31", n)
	}
}
