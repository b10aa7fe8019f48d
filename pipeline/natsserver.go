package pipeline

import (
	"fmt"
	"hash/fnv"
	"runtime"
	"strconv"
	"time"

	"github.com/avflow/avflow/pipeline/secret"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// EmbeddedMaxPayload is the max message size of the embedded server (8 MiB,
// the largest NATS recommends). Larger messages are chunked.
const EmbeddedMaxPayload = 8 << 20

// StartEmbeddedNATS starts an in-process NATS server on a free loopback port.
// Stages of the same process connect to it in-process (no TCP); outside tools
// (nats sub, nats micro ls) can reach it at its ClientURL.
func StartEmbeddedNATS() (*server.Server, error) {
	opts := &server.Options{
		ServerName: "avflow-embedded",
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		NoLog:      true,
		NoSigs:     true,
		MaxPayload: EmbeddedMaxPayload,
		// Raw frames are large: give slow links room before the server cuts them off.
		MaxPending:    256 << 20,
		WriteDeadline: 10 * time.Second,
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("%w: starting embedded NATS server failed: %w", ErrTransport, err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("%w: embedded NATS server did not start within 10s", ErrTransport)
	}
	return s, nil
}

// connPool is a run's NATS connections, shared by its stages: one per CPU
// at most (they parse and copy messages in parallel), not one per stage,
// whose buffers, goroutines and server-side clients made a pipeline of
// thousands of stages cost gigabytes.
type connPool struct{ conns []*nats.Conn }

// connectPool opens min(stages, GOMAXPROCS) connections. onErr gets the
// asynchronous errors of a connection, with the subscription they concern
// (nil for the connection's own).
func connectPool(srv *server.Server, url string, extra []nats.Option, name string, stages int, onErr func(*nats.Subscription, error)) (*connPool, error) {
	p := &connPool{}
	for i := range max(1, min(stages, runtime.GOMAXPROCS(0))) {
		nc, err := connect(srv, url, extra, name+" "+strconv.Itoa(i), onErr)
		if err != nil {
			p.Close()
			return nil, err
		}
		p.conns = append(p.conns, nc)
	}
	return p, nil
}

// connFor is the connection of a stage (spread by name).
func (p *connPool) connFor(stage string) *nats.Conn {
	h := fnv.New32a()
	_, _ = h.Write([]byte(stage))
	return p.conns[int(h.Sum32()%uint32(len(p.conns)))]
}

// Flush waits until the server has processed everything sent on every connection.
func (p *connPool) Flush() error {
	for _, nc := range p.conns {
		if err := nc.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// Close closes every connection; a nil pool is fine.
func (p *connPool) Close() {
	if p == nil {
		return
	}
	for _, nc := range p.conns {
		nc.Close()
	}
}

// connect opens a NATS connection, in-process when srv is set; extra
// (credentials, TLS) applies to an external server.
func connect(srv *server.Server, url string, extra []nats.Option, name string, onErr func(*nats.Subscription, error)) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.Timeout(5 * time.Second),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = " on " + sub.Subject
			}
			onErr(sub, fmt.Errorf("%w: NATS error%s: %w", ErrTransport, subj, err))
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				onErr(nil, fmt.Errorf("%w: lost the connection to the NATS server at %s: %w", ErrTransport, secret.URL(url), err))
			}
		}),
	}
	if srv != nil {
		opts = append(opts, nats.InProcessServer(srv))
		url = srv.ClientURL()
	} else {
		opts = append(opts, nats.MaxReconnects(0))
		opts = append(opts, extra...)
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: connecting to NATS at %s failed: %w", ErrTransport, secret.URL(url), err)
	}
	return nc, nil
}
