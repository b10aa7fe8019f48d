package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
)

// localTransport passes messages between the hosts of one process by
// reference: a frame is never copied, only referenced once more for each
// further consumer of its port.
type localTransport struct {
	mu    sync.Mutex
	ports map[string]*localPort // stage.port -> its consumers
}

func newLocalTransport() *localTransport {
	return &localTransport{ports: map[string]*localPort{}}
}

// localPort is the inputs attached to one output port. consumers is
// replaced, never changed in place, so a publisher reads it under mu and
// uses it after.
type localPort struct {
	mu        sync.Mutex
	consumers []consumerRef
	ended     bool // the port has sent its end of stream
}

// errPortEnded refuses an input attached to a port that has already sent
// its end of stream: it would wait for one for ever.
var errPortEnded = fmt.Errorf("%w: the port has already ended", ErrGraph)

func (t *localTransport) port(stage, port string) *localPort {
	t.mu.Lock()
	defer t.mu.Unlock()
	lp := t.ports[stage+"."+port]
	if lp == nil {
		lp = &localPort{}
		t.ports[stage+"."+port] = lp
	}
	return lp
}

func (t *localTransport) attach(_ context.Context, ref consumerRef, stage string, port Port) (inlet, error) {
	lp := t.port(stage, port.Name)
	lp.mu.Lock()
	defer lp.mu.Unlock()
	if lp.ended {
		return nil, errPortEnded
	}
	lp.consumers = append(slices.Clip(lp.consumers), ref)
	return &localInlet{lp: lp, id: ref.id()}, nil
}

func (t *localTransport) publisher(stage string, port Port, log *slog.Logger) (publisher, error) {
	return &localPublisher{port: stage + "." + port.Name, lp: t.port(stage, port.Name), log: log, gone: map[string]bool{}}, nil
}

func (t *localTransport) sync() error { return nil }

// localInlet is an input attached to a localPort. A consumer's queue
// bounds what is in flight, so there are no credits to send.
type localInlet struct {
	lp *localPort
	id string
}

func (l *localInlet) ended() {}

// drain detaches: a local publisher has put what it sent in the queue
// before its Publish returned.
func (l *localInlet) drain(context.Context) error {
	l.detach()
	return nil
}

func (l *localInlet) detach() {
	l.lp.mu.Lock()
	defer l.lp.mu.Unlock()
	l.lp.consumers = slices.DeleteFunc(slices.Clone(l.lp.consumers), func(c consumerRef) bool { return c.id() == l.id })
}

type localPublisher struct {
	port string // stage.port, for the log
	lp   *localPort
	log  *slog.Logger
	gone map[string]bool // consumers found ended, warned about once
}

func (p *localPublisher) Publish(ctx context.Context, e *stage.Msg) error {
	p.lp.mu.Lock()
	consumers := p.lp.consumers
	if e.Kind == envelope.KindEOS {
		p.lp.ended = true
	}
	p.lp.mu.Unlock()
	for i, c := range consumers {
		m := e
		if i < len(consumers)-1 {
			var err error
			if m, err = e.Clone(); err != nil {
				return err
			}
		}
		m.Input = c.input
		stalled := func(waited time.Duration) {
			p.log.Warn("slow consumer: waiting for room in its input queue", "port", p.port, "waiting_for", c.stage, "waited", waited.Round(time.Second))
		}
		err := c.q.Push(ctx, m, stalled)
		if errors.Is(err, errConsumerEnded) {
			if ctx.Err() == nil && !p.gone[c.id()] && e.Kind != envelope.KindEOS {
				p.log.Warn("a consumer has ended: what this port sends it from now on is dropped", "port", p.port, "consumer", c.stage)
			}
			p.gone[c.id()] = true
			continue
		}
		if err != nil {
			if i < len(consumers)-1 {
				e.Release()
			}
			return err
		}
	}
	if len(consumers) == 0 {
		e.Release()
	}
	return nil
}

func (p *localPublisher) Close() {}

// readers is how many inputs the port has now.
func (lp *localPort) readers() int {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	return len(lp.consumers)
}
