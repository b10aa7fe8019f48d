package pipeline

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
	"github.com/nats-io/nats.go"
)

// holdingConn is a client's connection to the server that, once held,
// keeps what the client writes until a write asks for a PONG (a flush):
// the client of a producer whose flusher has not yet run.
type holdingConn struct {
	net.Conn
	mu   sync.Mutex
	hold bool
	held []byte
}

func (c *holdingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hold && !bytes.Contains(p, []byte("PING\r\n")) {
		c.held = append(c.held, p...)
		return len(p), nil
	}
	if len(c.held) > 0 {
		if _, err := c.Conn.Write(c.held); err != nil {
			return 0, err
		}
		c.held = nil
	}
	return c.Conn.Write(p)
}

func (c *holdingConn) holding(on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hold = on
}

// holdingServer hands out in-process connections to srv, the first one
// a holdingConn.
type holdingServer struct {
	srv   *embeddedNATS
	first *holdingConn
}

func (h *holdingServer) InProcessConn() (net.Conn, error) {
	c, err := h.srv.srv.InProcessConn()
	if err != nil || h.first != nil {
		return c, err
	}
	h.first = &holdingConn{Conn: c}
	return h.first, nil
}

// TestAttachTakesFromNow: an input attached while the pipeline runs (a
// branch added) takes what its producer in this process sends from then
// on, not a message sent before that its producer's client had not yet
// written when the input subscribed on another connection (the branch's
// file had one frame too many under make test's load).
func TestAttachTakesFromNow(t *testing.T) {
	srv, err := startEmbeddedNATS(false, false)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	hs := &holdingServer{srv: srv}
	pool := &connPool{onErr: func(*nats.Subscription, error) {}, log: slog.New(slog.DiscardHandler), hooks: map[int]func(){}, down: map[*nats.Conn]*time.Timer{}}
	defer pool.Close()
	for range 2 {
		nc, err := nats.Connect("", nats.InProcessServer(hs))
		if err != nil {
			t.Fatal(err)
		}
		pool.conns = append(pool.conns, nc)
	}
	const producer, consumer = "tap", "branch"
	if pool.connFor(producer) != pool.conns[0] {
		pool.conns[0], pool.conns[1] = pool.conns[1], pool.conns[0]
	}
	if pool.connFor(consumer) == pool.connFor(producer) {
		t.Fatalf("stages %q and %q share a connection: pick other names", producer, consumer)
	}
	log := slog.New(slog.DiscardHandler)
	fail := func(err error) { t.Errorf("the transport failed: %v", err) }
	tr := newNATSTransport("at", "me", pool, func(PortType) FlowMode { return FlowBlock }, 4, fail, &sync.Map{}, log)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	port := Port{Name: "out", Type: PortType{Kind: envelope.KindData}}
	pub, err := tr.publisher(producer, port, log)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	if err := tr.sync(); err != nil {
		t.Fatal(err)
	}
	send := func(payload string) {
		t.Helper()
		if err := pub.Publish(ctx, &stage.Msg{Envelope: envelope.Envelope{V: envelope.Version, Kind: envelope.KindData, Payload: []byte(payload)}}); err != nil {
			t.Fatal(err)
		}
	}
	hs.first.holding(true)
	send("before")
	q := newQueue(64, FlowBlock)
	in, err := tr.attach(ctx, consumerRef{stage: consumer, input: 0, q: q}, producer, port)
	if err != nil {
		t.Fatal(err)
	}
	defer in.detach()
	// Its subscription reaches the server (the run flushes every
	// connection after wiring, in whatever order their writes go).
	if err := pool.connFor(consumer).Flush(); err != nil {
		t.Fatal(err)
	}
	hs.first.holding(false)
	send("after")
	e, err := q.Pop(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Release()
	if got := string(e.Payload); got != "after" {
		t.Fatalf("the input attached after %q was sent took %q first, want %q", "before", got, "after")
	}
}
