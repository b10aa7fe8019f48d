package pipeline

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"

	"github.com/nats-io/nats.go"
)

// A server that hangs up at once: connecting fails, and the error names
// the server without its password.
func TestConnectErrorHidesPassword(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	url := "nats://u:s3cret@" + ln.Addr().String()
	_, err = connect(nil, url, nil, "test", connEvents{err: func(*nats.Subscription, error) {}, lost: func(*nats.Conn, error) {}, back: func(*nats.Conn) {}})
	if err == nil {
		t.Fatal("connected to a server that hangs up")
	}
	if strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Fatalf("error %q: want the address without the password", err)
	}
	if !errors.Is(err, ErrTransport) {
		t.Fatalf("error %q does not wrap ErrTransport", err)
	}
}

// TestReconnectResends: when a connection is back after the server was
// away, a producer counts what it sent before as taken (lost messages
// would otherwise hold its window for good), sends its end of stream
// again, and a consumer sends its credits again.
func TestReconnectResends(t *testing.T) {
	srv, err := startEmbeddedNATS(false, false)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	log := slog.New(slog.DiscardHandler)
	fail := func(err error) { t.Errorf("the transport failed: %v", err) }
	pool, err := connectPool(srv, "", nil, "test", 1, func(_ *nats.Subscription, err error) { fail(err) }, log)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	const window = 4
	tr := newNATSTransport("rc", "me", pool, func(PortType) FlowMode { return FlowBlock }, window, fail, &sync.Map{}, log)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	port := Port{Name: "out", Type: PortType{Kind: envelope.KindData}}
	q := newQueue(64, FlowBlock)
	in, err := tr.attach(ctx, consumerRef{stage: "c", input: 0, q: q}, "g", port)
	if err != nil {
		t.Fatal(err)
	}
	defer in.detach()
	pub, err := tr.publisher("g", port, log)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	watch, err := pool.conns[0].SubscribeSync("avflow.rc.g.out.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.sync(); err != nil {
		t.Fatal(err)
	}
	send := func(ctx context.Context) error {
		return pub.Publish(ctx, &stage.Msg{Envelope: envelope.Envelope{V: envelope.Version, Kind: envelope.KindData, Payload: []byte("x")}})
	}
	for range window {
		if err := send(ctx); err != nil {
			t.Fatal(err)
		}
	}
	e, err := q.Pop(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e.Ack() // one credit: "c/0 me 1 me"
	// The rest of the window is "lost": never taken, so never credited.
	next := func() error {
		c, stop := context.WithTimeout(ctx, 300*time.Millisecond)
		defer stop()
		return send(c)
	}
	if err := next(); err != nil {
		t.Fatal(err) // the credit made room for one
	}
	if err := next(); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("sent beyond the window: %v", err)
	}
	pool.back(pool.conns[0]) // as nats.go calls it after a reconnect
	if err := next(); err != nil {
		t.Fatalf("after the reconnect the window is still full: %v", err)
	}
	if err := pub.Publish(ctx, &stage.Msg{Envelope: envelope.Envelope{V: envelope.Version, Kind: envelope.KindEOS}}); err != nil {
		t.Fatal(err)
	}
	pool.back(pool.conns[0])
	var acks []string
	eos := 0
	for eos < 2 || len(acks) < 3 {
		m, err := watch.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("%d ends of stream and credits %q: %v", eos, acks, err)
		}
		switch {
		case strings.HasSuffix(m.Subject, ".ack") && strings.Contains(string(m.Data), " "+ackAsk+" "):
			// The consumer asks whether the producer has ended when the end
			// of stream's count does not match what arrived (here, what the
			// "lost" window never brought): a question, not a credit.
		case strings.HasSuffix(m.Subject, ".ack"):
			acks = append(acks, string(m.Data))
		case strings.HasSuffix(m.Subject, ".eos"):
			if sent := m.Header.Get(HeaderSent); sent != "6" {
				t.Errorf("the end of stream says %q messages were sent, want 6", sent)
			}
			eos++
		}
	}
	// The credit, then again after each reconnect.
	if want := []string{"c/0 me 1 me", "c/0 me 1 me", "c/0 me 1 me"}; !slices.Equal(acks, want) {
		t.Errorf("credits %q, want %q", acks, want)
	}
}
