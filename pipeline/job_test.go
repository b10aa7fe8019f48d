package pipeline_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
)

// runJobSplit runs yaml over the server at url as 1+serves processes
// would: rl served serves times, the rest driven with rl remote, all with
// delivery job. It returns the driver's error, the first of the served
// ones, the src seq of each message collected, in order, and the
// driver's log. beforeDriver, when given, runs once the served ones are
// started, before the driver is.
func runJobSplit(t *testing.T, url, yaml string, serves int, beforeDriver ...func()) (drvErr, srvErr error, got []uint64, drvLog string) {
	t.Helper()
	var logs e2e.Buffer
	col := &collector{}
	env := testEnv(t, col)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type result struct {
		driver bool
		err    error
	}
	done := make(chan result, 1+serves)
	for i := range 1 + serves {
		driver := i == serves
		cfg, err := pipeline.Parse([]byte(yaml), "t.yaml")
		if err != nil {
			t.Fatal(err)
		}
		opts := pipeline.Options{Serve: []string{"rl"}}
		if driver {
			opts = pipeline.Options{Remote: []string{"rl"}, RemoteTimeout: 10 * time.Second}
		}
		opts.NATSURL, opts.Delivery, opts.Log = url, pipeline.DeliveryJob, slog.New(slog.DiscardHandler)
		if driver {
			opts.Log = slog.New(slog.NewTextHandler(&logs, nil))
		}
		r, err := pipeline.NewRunner(env, cfg, opts)
		if err != nil {
			t.Fatal(err)
		}
		if driver {
			for _, f := range beforeDriver {
				f()
			}
		}
		go func() { done <- result{driver, r.Run(ctx)} }()
	}
	for range 1 + serves {
		res := <-done
		if res.err != nil {
			cancel()
		}
		if res.driver {
			drvErr = res.err
		} else if srvErr == nil {
			srvErr = res.err
		}
	}
	col.mu.Lock()
	defer col.mu.Unlock()
	for _, m := range col.got {
		if m.Src == nil {
			t.Fatalf("a message without src: %+v", m.Envelope)
		}
		got = append(got, m.Src.Seq)
	}
	return drvErr, srvErr, got, logs.String()
}

// TestJobDelivery: a pipeline split over two processes with delivery job
// passes every message through the run's stream, in order, and leaves no
// stream behind.
func TestJobDelivery(t *testing.T) {
	e2e.Long(t)
	srv := e2e.NATSServer(t, &server.Options{JetStream: true, StoreDir: t.TempDir()})
	drvErr, srvErr, got, log := runJobSplit(t, srv.ClientURL(), splitYAML, 1)
	if drvErr != nil || srvErr != nil || len(got) != 20 {
		t.Fatalf("driver %v, server %v, %d of 20 messages", drvErr, srvErr, len(got))
	}
	if !strings.Contains(log, "job stream made") || !strings.Contains(log, "edges=2") {
		t.Errorf("the driver did not make a stream for the two edges to and from rl:\n%s", log)
	}
	if left := e2e.Streams(t, srv.ClientURL()); len(left) > 0 {
		t.Errorf("streams left after the run: %v", left)
	}
}

// TestJobDeliveryNeedsJetStream: over a server without JetStream the run
// fails before it starts, saying so.
func TestJobDeliveryNeedsJetStream(t *testing.T) {
	srv := e2e.NATSServer(t, &server.Options{})
	cfg, err := pipeline.Parse([]byte(splitYAML), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r, err := pipeline.NewRunner(testEnv(t, &collector{}), cfg, pipeline.Options{NATSURL: srv.ClientURL(), Remote: []string{"rl"},
		Delivery: pipeline.DeliveryJob, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	err = r.Run(context.Background())
	if !errors.Is(err, pipeline.ErrJob) || !strings.Contains(err.Error(), "-js") {
		t.Fatalf("run: %v, want a job delivery error naming -js", err)
	}
}

// TestJobFailedRunLeavesNoStream: a job run that fails after its stream
// was made (its remote stage never comes) removes the stream.
func TestJobFailedRunLeavesNoStream(t *testing.T) {
	srv := e2e.NATSServer(t, &server.Options{JetStream: true, StoreDir: t.TempDir()})
	cfg, err := pipeline.Parse([]byte(splitYAML), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var logs e2e.Buffer
	r, err := pipeline.NewRunner(testEnv(t, &collector{}), cfg, pipeline.Options{NATSURL: srv.ClientURL(), Remote: []string{"rl"},
		RemoteTimeout: 500 * time.Millisecond, Delivery: pipeline.DeliveryJob, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Run(context.Background()); !errors.Is(err, pipeline.ErrRemote) {
		t.Fatalf("run: %v, want the remote stage's error", err)
	}
	if !strings.Contains(logs.String(), "job stream made") {
		t.Fatalf("the run failed before it made its stream:\n%s", logs.String())
	}
	if left := e2e.Streams(t, srv.ClientURL()); len(left) > 0 {
		t.Errorf("streams left after the failed run: %v", left)
	}
}

// TestJobReplicasFinishOutOfOrder: rl served twice, each message taking a
// random time there, in job delivery: the driver's collect stage gets
// every message once, in order (its input puts them back in order by
// src), and the run does not stall behind a frame whose replica is behind.
func TestJobReplicasFinishOutOfOrder(t *testing.T) {
	e2e.Long(t)
	const n = 200
	yaml := `name: t
queue: 2
stages:
  - {name: g, kind: gen, params: {n: 200}}
  - {name: rl, kind: relay, inputs: [g], params: {jitter: 10ms}}
  - {name: c, kind: collect, inputs: [rl]}
`
	srv := e2e.NATSServer(t, &server.Options{JetStream: true, StoreDir: t.TempDir()})
	drvErr, srvErr, got, _ := runJobSplit(t, srv.ClientURL(), yaml, 2)
	if drvErr != nil || srvErr != nil {
		t.Fatalf("driver %v, served %v", drvErr, srvErr)
	}
	if len(got) != n {
		t.Fatalf("%d of %d messages", len(got), n)
	}
	if !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != n {
		t.Errorf("messages out of order or twice (by src seq): %v", got)
	}
}

// TestJobServeOutlivesAStaleStream: a driver killed mid-run leaves its
// stream and consumers on the server. A served stage started then finds
// and takes from them; the next driver removes that stream and makes it
// again. The served stage takes from the new one (its consumer was
// removed: it looks for it again) and the run gets every message.
func TestJobServeOutlivesAStaleStream(t *testing.T) {
	e2e.Long(t)
	srv := e2e.NATSServer(t, &server.Options{JetStream: true, StoreDir: t.TempDir()})
	js := e2e.JetStream(t, srv.ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// What a killed driver of pipeline t leaves (names as docs/services.md says).
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "AVFLOW_t", Subjects: []string{"avflow.t.*.*.job.>"}, Retention: jetstream.WorkQueuePolicy}); err != nil {
		t.Fatal(err)
	}
	stale, err := js.CreateOrUpdateConsumer(ctx, "AVFLOW_t", jetstream.ConsumerConfig{Durable: "rl-0", FilterSubject: "avflow.t.g.out.job.rl.0", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	taking := func() {
		e2e.WaitFor(t, 15*time.Second, func() string { return "the served stage to take from the stale stream" }, func() bool {
			info, err := stale.Info(ctx)
			return err == nil && info.NumWaiting > 0
		})
	}
	drvErr, srvErr, got, log := runJobSplit(t, srv.ClientURL(), splitYAML, 1, taking)
	if drvErr != nil || srvErr != nil || len(got) != 20 {
		t.Fatalf("driver %v, served %v, %d of 20 messages:\n%s", drvErr, srvErr, len(got), log)
	}
	if !strings.Contains(log, "removing the job stream an earlier run of the pipeline left") {
		t.Errorf("the driver did not say it removed the stale stream:\n%s", log)
	}
}
