package main

import (
	"fmt"
	"log/slog"
	"net/url"
	"os"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/natsauth"
)

// announceListener says, once the run is ready, where other clients reach
// its embedded NATS server: printed once on stderr with --listen (the
// only place its password is shown, past the logs, which would hide it),
// and in the run file that avflow viewers reads (0600, removed at the
// end) whenever the server listens. The returned func waits for it and
// removes the run file.
func announceListener(r *pipeline.Runner, name string, print bool, done <-chan struct{}) (wait func()) {
	removed := make(chan func(), 1)
	go func() {
		defer close(removed)
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
		user, password := r.ListenCredentials()
		remove, err := natsauth.WriteRunFile(natsauth.RunFile{Pipeline: name, URL: u.String(), User: user, Password: password, PID: os.Getpid()})
		if err != nil {
			slog.Warn("other processes cannot find this run (avflow viewers needs --nats)", "error", err)
		} else {
			removed <- remove
		}
		if print {
			u.User = url.UserPassword(user, password)
			fmt.Fprintf(os.Stderr, "avflow: other clients reach this run's NATS server at %s (its password is shown only here): nats --server URL micro ls\n", u)
		}
	}()
	return func() {
		if remove := <-removed; remove != nil {
			remove()
		}
	}
}
