package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/secret"
	"github.com/avflow/avflow/stages/infer"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
	"github.com/urfave/cli/v2"
)

// serveInfer is avflow serve --infer MODEL: the shared inference service
// of one model, until SIGTERM or Ctrl-C.
func serveInfer(c *cli.Context) error {
	auth, natsOpts, err := natsOptions(c, c.String("nats"))
	if err != nil {
		return err
	}
	if c.Int("max-batch") < 1 || c.Duration("max-wait") < 0 || c.Int("threads") < 0 {
		return cli.Exit("avflow serve: --max-batch must be at least 1, --max-wait and --threads at least 0", exitInvalid)
	}
	model := c.String("infer")
	opts := append([]nats.Option{nats.Name("avflow serve --infer " + model), nats.MaxReconnects(-1)}, natsOpts...)
	nc, err := nats.Connect(auth.URL, opts...)
	if err != nil {
		return cli.Exit(fmt.Sprintf("avflow serve: connecting to %s failed: %v", secret.URL(auth.URL), natsAuthError(err, auth)), exitRun)
	}
	defer nc.Close()
	slog.Info("external NATS server", "url", secret.URL(auth.URL), "nats", auth)
	host, _ := os.Hostname()
	dir, _ := os.Getwd()
	ctx, cancel := context.WithCancel(c.Context)
	defer cancel()
	svc, err := infer.NewService(ctx, nc, infer.ServiceOptions{Model: model, Dir: dir, MaxBatch: c.Int("max-batch"), MaxWait: c.Duration("max-wait"),
		Threads: c.Int("threads"), Version: pipeline.ServiceVersion, Instance: nuid.Next(), Host: host, Log: slog.Default()})
	if err != nil {
		return cli.Exit("avflow serve: "+err.Error(), exitRun)
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, stopSignals...)
	defer signal.Stop(sigs)
	select {
	case sig := <-sigs:
		slog.Info("stopping the inference service", "signal", sig.String())
	case <-ctx.Done():
	}
	st := svc.Stats()
	err = svc.Stop()
	if derr := nc.Drain(); err == nil && !errors.Is(derr, nats.ErrConnectionClosed) {
		err = derr
	}
	slog.Info("inference service stopped", "requests", st.Requests, "images", st.Images, "batches", st.Batches, "mean_batch", st.MeanBatch, "bad_requests", st.BadRequests)
	if err != nil {
		return cli.Exit("avflow serve: "+err.Error(), exitRun)
	}
	return nil
}
