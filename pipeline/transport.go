package pipeline

import (
	"context"
	"errors"
	"log/slog"
	"strconv"

	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
)

// ErrTransport wraps failures of the message transport (NATS).
var ErrTransport = errors.New("transport")

// Subject returns the NATS subject of a stage's output port:
// avflow.<pipeline>.<stage>.<port>. Flow-control credits for it travel on
// the same subject with ".ack" appended.
func Subject(pipeline, stage, port string) string {
	return "avflow." + pipeline + "." + stage + "." + port
}

// transport carries a pipeline's messages between its stage hosts: what
// the publisher of a stage's port sends reaches every input attached to
// that port. Inputs attach and detach while the pipeline runs.
//
// The local transport passes messages (stage.Msg) by reference (zero-copy); the NATS
// transport sends them on the port's subject (see Subject).
type transport interface {
	// attach feeds the input ref from stage's port, before or after the
	// port's publisher is made.
	attach(ctx context.Context, ref consumerRef, stage string, port Port) (inlet, error)
	// publisher makes the publisher of stage's port.
	publisher(stage string, port Port, log *slog.Logger) (publisher, error)
	// sync returns once what is attached so far receives what is published.
	sync() error
}

// publisher sends one output port's messages to its consumers.
type publisher interface {
	Publish(ctx context.Context, e *stage.Msg) error
	Close()
}

// inlet is one input edge as its transport feeds it.
type inlet interface {
	// ended says the consumer takes nothing more from this input: its
	// producer stops waiting for it.
	ended()
	// detach ends the input's subscription; the consumer's queue gets
	// nothing more from it.
	detach()
	// drain detaches the input once what its producer has already sent
	// has reached the consumer's queue.
	drain(ctx context.Context) error
}

// consumerRef is one input edge at its consumer.
type consumerRef struct {
	stage string
	input int
	q     *queue
}

// id names the input edge among the consumers of a port: stage/input.
func (c consumerRef) id() string { return c.stage + "/" + strconv.Itoa(c.input) }

// autoTransport is the default: the edges between the stages of this
// process are local (zero-copy); a port that carries metadata, or that no
// stage reads, is also published on its NATS subject for outside
// consumers (nats sub, other services).
type autoTransport struct {
	local  *localTransport
	nats   *natsTransport
	remote func(stage string) bool // the stage runs in another process
}

func (t *autoTransport) attach(ctx context.Context, ref consumerRef, stage string, port Port) (inlet, error) {
	if t.remote(stage) {
		return t.nats.attach(ctx, ref, stage, port)
	}
	return t.local.attach(ctx, ref, stage, port)
}

func (t *autoTransport) publisher(stage string, port Port, log *slog.Logger) (publisher, error) {
	lp, _ := t.local.publisher(stage, port, log)
	remoteReaders := len(t.nats.remoteReaders(stage, port.Name)) > 0
	localOnly := port.Unread == UnreadBranches || t.local.port(stage, port.Name).readers() > 0
	if port.Type.Kind != envelope.KindData && localOnly && !remoteReaders {
		return lp, nil
	}
	newPublisher := t.nats.publisher
	if t.nats.job && remoteReaders {
		newPublisher = t.nats.jobPublisher
	}
	np, err := newPublisher(stage, port, log)
	if err != nil {
		return nil, err
	}
	return &teePublisher{local: lp.(*localPublisher), nats: np}, nil
}

func (t *autoTransport) sync() error { return t.nats.sync() }

// teePublisher sends each message to the port's local consumers by
// reference and a copy on its NATS subject.
type teePublisher struct {
	local *localPublisher
	nats  publisher
}

func (p *teePublisher) Publish(ctx context.Context, e *stage.Msg) error {
	if p.local.lp.readers() == 0 {
		return p.nats.Publish(ctx, e) // marshalling releases e's media
	}
	cp, err := e.Clone()
	if err != nil {
		e.Release()
		return err
	}
	err = p.nats.Publish(ctx, cp)
	cp.Release()
	if err != nil {
		e.Release()
		return err
	}
	return p.local.Publish(ctx, e)
}

// Counts are the NATS publisher's.
func (p *teePublisher) Counts() map[string]int64 {
	if c, ok := p.nats.(eventCounter); ok {
		return c.Counts()
	}
	return nil
}

func (p *teePublisher) Close() {
	p.local.Close()
	p.nats.Close()
}
