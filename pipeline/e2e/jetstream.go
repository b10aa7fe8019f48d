package e2e

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// JetStreamConn starts an in-process NATS server with JetStream (its
// store in a temporary folder) and returns a connection to it; both end
// with the test.
func JetStreamConn(t testing.TB) *nats.Conn {
	t.Helper()
	s := NATSServer(t, &server.Options{JetStream: true, StoreDir: t.TempDir()})
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// JetStream is a JetStream client of the server at url, on a connection
// closed when the test ends.
func JetStream(t testing.TB, url string, opts ...nats.Option) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// Streams lists the JetStream streams on the server at url (what a job
// run must not leave behind).
func Streams(t testing.TB, url string, opts ...nats.Option) []string {
	t.Helper()
	js := JetStream(t, url, opts...)
	var out []string
	names := js.StreamNames(context.Background())
	for n := range names.Name() {
		out = append(out, n)
	}
	if err := names.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// FakeJetStreamAPI starts an in-process NATS server without JetStream on
// which a responder answers the requests on subject (a JetStream API
// subject) with reply(n), n counting them from 1 (nil: no answer, as a
// cluster without a meta leader). It returns a connection to the server
// and the count of requests; both end with the test.
func FakeJetStreamAPI(t testing.TB, subject string, reply func(n int32) []byte) (*nats.Conn, *atomic.Int32) {
	t.Helper()
	s := NATSServer(t, &server.Options{})
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	asked := &atomic.Int32{}
	if _, err := nc.Subscribe(subject, func(m *nats.Msg) {
		if b := reply(asked.Add(1)); b != nil {
			_ = m.Respond(b)
		}
	}); err != nil {
		t.Fatal(err)
	}
	return nc, asked
}
