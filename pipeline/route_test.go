package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// TestCreditsPick: the replica a message goes to alone.
func TestCreditsPick(t *testing.T) {
	const window = 4
	tests := []struct {
		name                string
		hello, stale, live  []string // said hello now, said it too long ago, have sent credits
		gone, leaving       []string
		sentTo, taken, last map[string]uint64
		want                string
	}{
		{name: "none known"},
		{name: "one known", hello: []string{"a"}, want: "a"},
		{name: "said hello before its first credit", hello: []string{"a", "b"}, live: []string{"a"},
			sentTo: map[string]uint64{"a": 2}, want: "b"},
		{name: "credits without a hello: no subject of its own", hello: []string{"a"}, live: []string{"a", "b"},
			sentTo: map[string]uint64{"a": 2}, want: "a"},
		{name: "a hello too long ago counts no more", hello: []string{"a"}, stale: []string{"b"},
			sentTo: map[string]uint64{"a": 2}, want: "a"},
		{name: "the one with the fewest not taken", hello: []string{"a", "b"},
			sentTo: map[string]uint64{"a": 5, "b": 6}, taken: map[string]uint64{"a": 2, "b": 5}, want: "b"},
		{name: "what it took beyond what it was sent alone counts as nothing owed", hello: []string{"a", "b"},
			sentTo: map[string]uint64{"a": 1}, taken: map[string]uint64{"a": 3, "b": 0}, want: "a", last: map[string]uint64{"b": 9}},
		{name: "equals: the one picked longest ago", hello: []string{"a", "b", "c"},
			last: map[string]uint64{"a": 7, "b": 3, "c": 5}, want: "b"},
		{name: "an ended instance gets nothing", hello: []string{"a", "b"}, gone: []string{"b"},
			sentTo: map[string]uint64{"a": 2}, want: "a"},
		{name: "a leaving instance gets nothing", hello: []string{"a", "b"}, leaving: []string{"a"},
			sentTo: map[string]uint64{"b": 3}, want: "b"},
		{name: "each has a full window", hello: []string{"a", "b"},
			sentTo: map[string]uint64{"a": window, "b": window + 2}, taken: map[string]uint64{"b": 2}},
	}
	set := func(l []string) map[string]bool {
		m := map[string]bool{}
		for _, s := range l {
			m[s] = true
		}
		return m
	}
	orEmpty := func(m map[string]uint64) map[string]uint64 {
		if m == nil {
			return map[string]uint64{}
		}
		return m
	}
	now := time.Now()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hello := map[string]time.Time{}
			for _, inst := range tt.hello {
				hello[inst] = now
			}
			for _, inst := range tt.stale {
				hello[inst] = now.Add(-helloFresh - time.Millisecond)
			}
			c := &credits{live: set(tt.live), hello: hello, gone: set(tt.gone), leaving: set(tt.leaving), sentTo: orEmpty(tt.sentTo), taken: orEmpty(tt.taken), picked: orEmpty(tt.last)}
			if got := c.pick(window, now); got != tt.want {
				t.Errorf("picked %q, want %q", got, tt.want)
			}
		})
	}
}

// TestRouteAroundAStuckReplica: two instances of a consumer stage share
// its input; one stops taking messages. It holds at most its window and
// the other gets the rest: the producer never stalls behind it. (With
// the queue group's random picks the stuck one got about half of them
// until the producer's window was full, and the run stalled.)
func TestRouteAroundAStuckReplica(t *testing.T) {
	srv, err := startEmbeddedNATS(false, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown) // after the pools' Close
	log := slog.New(slog.DiscardHandler)
	const window, msgs = 4, 40
	fail := func(err error) { t.Errorf("the transport failed: %v", err) }
	flow := func(PortType) FlowMode { return FlowBlock }
	transport := func(inst string) *natsTransport {
		pool, err := connectPool(srv, "", nil, inst, 1, func(_ *nats.Subscription, err error) { fail(err) }, log)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		tr := newNATSTransport("rt", inst, pool, flow, window, fail, &sync.Map{}, log)
		// Each answers for its stage's service, as a host's micro service does.
		stage := map[string]string{"prod": "g"}[inst]
		if stage == "" {
			stage, tr.serving = "c", true
		}
		svc, err := micro.AddService(pool.conns[0], micro.Config{Name: ServiceName("rt", stage), Version: "1.0.0", Metadata: map[string]string{"instance": inst}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = svc.Stop() })
		return tr
	}
	prod := transport("prod")
	prod.remote = func(s string) bool { return s == "c" }
	prod.remoteReaders = func(s, p string) []consumerRef {
		if s == "g" {
			return []consumerRef{{stage: "c", input: 0}}
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	port := Port{Name: "out", Type: PortType{Kind: envelope.KindData}}
	queues := map[string]*queue{}
	for _, inst := range []string{"fast", "stuck"} {
		queues[inst] = newQueue(2*msgs, FlowBlock)
		in, err := transport(inst).attach(ctx, consumerRef{stage: "c", input: 0, q: queues[inst]}, "g", port)
		if err != nil {
			t.Fatal(err)
		}
		defer in.detach()
	}
	pub, err := prod.publisher("g", port, log)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	p := pub.(*natsPublisher)
	e2e.WaitFor(t, 10*time.Second, func() string { return "both instances to say hello" }, func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.cons["c/0"].routable(time.Now()) == 2
	})
	taken := make(chan int)
	go func() { // fast takes all it gets
		n := 0
		for n < msgs-window {
			e, err := queues["fast"].Pop(ctx)
			if err != nil {
				break
			}
			e.Ack()
			n++
		}
		taken <- n
	}()
	for i := range msgs {
		c, stop := context.WithTimeout(ctx, 5*time.Second)
		err := pub.Publish(c, &stage.Msg{Envelope: envelope.Envelope{V: envelope.Version, Kind: envelope.KindData, Seq: uint64(i), Payload: []byte(fmt.Sprint(i))}})
		stop()
		if err != nil {
			t.Fatalf("message %d: %v (the producer waits behind the stuck instance)", i, err)
		}
	}
	if n := <-taken; n < msgs-window {
		t.Errorf("the fast instance took %d messages, want at least %d", n, msgs-window)
	}
	if n := queues["stuck"].Len(); n > window {
		t.Errorf("the stuck instance holds %d messages, more than its window %d", n, window)
	}
}
