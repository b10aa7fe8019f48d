package e2e

import (
	"context"
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
