package main

import (
	"fmt"
	"net/url"
	"os"

	"github.com/avflow/avflow/pipeline"
)

// printListener prints, once the run is ready, where other clients reach
// its embedded NATS server (avflow run --listen): the only place its
// password is shown, written to stderr past the logs, which would hide it.
func printListener(r *pipeline.Runner, done <-chan struct{}) {
	select {
	case <-r.Ready():
	case <-r.Failed():
		return
	case <-done:
		return
	}
	u, err := url.Parse(r.NATSURL())
	if err != nil || u.Host == "" {
		return
	}
	u.User = url.UserPassword(r.ListenCredentials())
	fmt.Fprintf(os.Stderr, "avflow: other clients reach this run's NATS server at %s (its password is shown only here): nats --server URL micro ls\n", u)
}
