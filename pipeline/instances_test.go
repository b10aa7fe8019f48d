package pipeline

import (
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// TestInstanceSetAnswersAtOnce: asking whether an instance belongs to a
// service returns once that instance answers the PING, without waiting
// for the quiet time after the last answer (each new producer instance's
// first message waited for it: 1.25 s before the first frame came back
// over two hops). The quiet time is made long here, so that waiting for
// it cannot pass for an answer.
func TestInstanceSetAnswersAtOnce(t *testing.T) {
	srv := e2e.NATSServer(t, &server.Options{})
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	for _, inst := range []string{"a", "b"} {
		svc, err := micro.AddService(nc, micro.Config{Name: "p-s", Version: "0.0.1", Metadata: map[string]string{"instance": inst}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = svc.Stop() })
	}
	const quiet = 4 * time.Second
	tests := []struct {
		name, inst string
		want       bool
		quiet      time.Duration
		fast       bool
	}{
		{"an instance that answers", "b", true, quiet, true},
		// The first question stopped at b's answer: a, asked about right
		// after, is asked about again rather than taken for gone.
		{"the other, asked about at once", "a", true, quiet, true},
		{"an unknown one waits for every answer", "x", false, 100 * time.Millisecond, false},
		{"another unknown one", "y", false, 100 * time.Millisecond, false},
		{"one known is known without asking", "a", true, quiet, true},
	}
	set := newInstanceSet(nc, "p-s", "")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set.quiet = tt.quiet
			t0 := time.Now()
			got := set.has(tt.inst)
			took := time.Since(t0)
			if got != tt.want {
				t.Fatalf("has(%q) = %v, want %v", tt.inst, got, tt.want)
			}
			if tt.fast && took >= tt.quiet/2 {
				t.Fatalf("has(%q) took %s: it waited for the quiet time (%s)", tt.inst, took, quiet)
			}
		})
	}
}
