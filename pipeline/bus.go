package pipeline

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/nats-io/nats.go"
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

// ---- in-process transport (zero-copy) ----

type localPublisher struct{ consumers []consumerRef }

func (p *localPublisher) Publish(ctx context.Context, e *envelope.Envelope) error {
	for i, c := range p.consumers {
		m := e
		if i < len(p.consumers)-1 {
			cp := *e
			if e.Local != nil {
				l, err := e.Local.Clone()
				if err != nil {
					return err
				}
				cp.Local = l
			}
			cp.Stamps = append([]envelope.Stamp(nil), e.Stamps...)
			m = &cp
		}
		m.Input = c.input
		if err := c.q.Push(ctx, m); err != nil {
			if i < len(p.consumers)-1 {
				e.Release()
			}
			return err
		}
	}
	if len(p.consumers) == 0 {
		e.Release()
	}
	return nil
}

func (p *localPublisher) Close() {}

// ---- NATS transport ----

// natsPublisher publishes one port on its subject, chunking messages larger
// than the server's max payload. In block mode it holds at most window
// unacknowledged messages per known consumer.
type natsPublisher struct {
	nc      *nats.Conn
	subject string
	block   bool
	window  uint64
	maxPart int
	chunkID uint64

	mu     sync.Mutex
	sent   uint64
	acked  map[string]uint64
	credit chan struct{}
	ackSub *nats.Subscription
	buf    []byte
	// consumers is how many known consumers send credits, fixed at start
	// (acked is written by the ack callback and read under mu).
	consumers int
}

func newNATSPublisher(nc *nats.Conn, subject string, consumers []consumerRef, mode FlowMode, window int) (*natsPublisher, error) {
	p := &natsPublisher{
		nc: nc, subject: subject, block: mode == FlowBlock, window: uint64(window),
		acked: map[string]uint64{}, credit: make(chan struct{}, 1),
	}
	// Leave room for headers and protocol overhead.
	p.maxPart = int(nc.MaxPayload()) - 1024
	if p.maxPart < 4096 {
		return nil, fmt.Errorf("%w: server max payload %d is too small", ErrTransport, nc.MaxPayload())
	}
	if p.block && len(consumers) > 0 {
		p.consumers = len(consumers)
		for _, c := range consumers {
			p.acked[c.id()] = 0
		}
		sub, err := nc.Subscribe(subject+".ack", func(m *nats.Msg) {
			id, n, ok := strings.Cut(string(m.Data), " ")
			if !ok {
				return
			}
			count, err := strconv.ParseUint(n, 10, 64)
			if err != nil {
				return
			}
			p.mu.Lock()
			if prev, known := p.acked[id]; known && count > prev {
				p.acked[id] = count
			}
			p.mu.Unlock()
			signal(p.credit)
		})
		if err != nil {
			return nil, fmt.Errorf("%w: subscribing to %s.ack failed: %v", ErrTransport, subject, err)
		}
		p.ackSub = sub
	}
	return p, nil
}

func (p *natsPublisher) minAcked() uint64 {
	first := true
	var m uint64
	for _, v := range p.acked {
		if first || v < m {
			m, first = v, false
		}
	}
	return m
}

func (p *natsPublisher) Publish(ctx context.Context, e *envelope.Envelope) error {
	// nats.go copies the data into its write buffer before Publish returns,
	// so one buffer serves every message of this port.
	data, err := envelope.AppendMarshal(p.buf[:0], e)
	if err != nil {
		return err
	}
	p.buf = data
	if p.block && e.Kind != envelope.KindEOS && p.consumers > 0 {
		for {
			p.mu.Lock()
			ok := p.sent-p.minAcked() < p.window
			p.mu.Unlock()
			if ok {
				break
			}
			select {
			case <-p.credit:
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Second):
				if p.nc.IsClosed() {
					return fmt.Errorf("%w: NATS connection closed while waiting for %s consumers", ErrTransport, p.subject)
				}
			}
		}
	}
	if err := p.send(data); err != nil {
		return fmt.Errorf("%w: publishing on %s failed: %v", ErrTransport, p.subject, err)
	}
	if e.Kind != envelope.KindEOS {
		p.mu.Lock()
		p.sent++
		p.mu.Unlock()
	}
	return nil
}

func (p *natsPublisher) send(data []byte) error {
	if len(data) <= p.maxPart {
		return p.nc.Publish(p.subject, data)
	}
	p.chunkID++
	parts, err := envelope.Split(p.chunkID, data, p.maxPart)
	if err != nil {
		return err
	}
	for _, c := range parts {
		m := &nats.Msg{Subject: p.subject, Data: c.Data, Header: nats.Header{envelope.HeaderChunk: []string{c.Header()}}}
		if err := p.nc.PublishMsg(m); err != nil {
			return err
		}
	}
	return nil
}

func (p *natsPublisher) Close() {
	if p.ackSub != nil {
		_ = p.ackSub.Unsubscribe()
	}
}

// natsSubscriber feeds one input edge from its subject into the stage queue,
// and sends credits back as the stage takes messages.
type natsSubscriber struct {
	nc       *nats.Conn
	subject  string
	ref      consumerRef
	sub      *nats.Subscription
	reasm    envelope.Reassembler
	block    bool
	ackEvery uint64
	taken    atomic.Uint64
	lastAck  uint64
	fail     func(error)
	ctx      context.Context
}

func newNATSSubscriber(ctx context.Context, nc *nats.Conn, subject string, ref consumerRef, mode FlowMode, window int, fail func(error)) (*natsSubscriber, error) {
	s := &natsSubscriber{nc: nc, subject: subject, ref: ref, block: mode == FlowBlock, fail: fail, ctx: ctx}
	s.ackEvery = uint64(max(1, window/4))
	sub, err := nc.Subscribe(subject, s.onMsg)
	if err != nil {
		return nil, fmt.Errorf("%w: subscribing to %s failed: %v", ErrTransport, subject, err)
	}
	// Credits bound what is in flight; the client must never drop on its own.
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTransport, err)
	}
	s.sub = sub
	return s, nil
}

func (s *natsSubscriber) onMsg(m *nats.Msg) {
	data := m.Data
	if h := m.Header.Get(envelope.HeaderChunk); h != "" {
		id, idx, n, err := envelope.ParseChunkHeader(h)
		if err == nil {
			data, err = s.reasm.Add(envelope.Chunk{ID: id, Index: idx, Count: n, Data: m.Data})
		}
		if err != nil {
			s.fail(fmt.Errorf("%w: stage %q input %d (%s): %v", ErrTransport, s.ref.stage, s.ref.input, s.subject, err))
			return
		}
		if data == nil {
			return
		}
	}
	e, err := envelope.Unmarshal(data)
	if err != nil {
		s.fail(fmt.Errorf("%w: stage %q input %d (%s): %v", ErrTransport, s.ref.stage, s.ref.input, s.subject, err))
		return
	}
	e.Input = s.ref.input
	_ = s.ref.q.Push(s.ctx, e)
}

// took is called when the stage takes a message of this input from its queue.
func (s *natsSubscriber) took() {
	if !s.block {
		return
	}
	n := s.taken.Add(1)
	if n-s.lastAck >= s.ackEvery {
		s.lastAck = n
		_ = s.nc.Publish(s.subject+".ack", []byte(s.ref.id()+" "+strconv.FormatUint(n, 10)))
	}
}

func (s *natsSubscriber) Close() { _ = s.sub.Unsubscribe() }
