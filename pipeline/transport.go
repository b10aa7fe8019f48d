package pipeline

import (
	"context"
	"errors"
	"strconv"

	"github.com/avflow/avflow/pipeline/envelope"
)

// ErrTransport wraps failures of the message transport (NATS).
var ErrTransport = errors.New("transport")

// Subject returns the NATS subject of a stage's output port:
// avflow.<pipeline>.<stage>.<port>. Flow-control credits for it travel on
// the same subject with ".ack" appended.
func Subject(pipeline, stage, port string) string {
	return "avflow." + pipeline + "." + stage + "." + port
}

// publisher sends one output port's messages to its consumers.
type publisher interface {
	Publish(ctx context.Context, e *envelope.Envelope) error
	Close()
}

// consumerRef is one input edge at its consumer.
type consumerRef struct {
	stage string
	input int
	q     *queue
}

func (c consumerRef) id() string { return c.stage + "/" + strconv.Itoa(c.input) }
