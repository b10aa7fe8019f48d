package pipeline

import (
	"fmt"
	"time"

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
		return nil, fmt.Errorf("%w: starting embedded NATS server failed: %v", ErrTransport, err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("%w: embedded NATS server did not start within 10s", ErrTransport)
	}
	return s, nil
}

// connect opens a NATS connection, in-process when srv is set.
func connect(srv *server.Server, url, name string, onErr func(error)) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.Timeout(5 * time.Second),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = " on " + sub.Subject
			}
			onErr(fmt.Errorf("%w: NATS error%s: %v", ErrTransport, subj, err))
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				onErr(fmt.Errorf("%w: lost the connection to the NATS server at %s: %w", ErrTransport, RedactURL(url), err))
			}
		}),
	}
	if srv != nil {
		opts = append(opts, nats.InProcessServer(srv))
		url = srv.ClientURL()
	} else {
		opts = append(opts, nats.MaxReconnects(0))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: connecting to NATS at %s failed: %w", ErrTransport, RedactURL(url), err)
	}
	return nc, nil
}
