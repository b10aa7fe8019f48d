package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/nats-io/nats.go"
)

// natsTransport sends a pipeline's messages on NATS subjects (see
// Subject), over the run's shared connections.
type natsTransport struct {
	pipeline string
	pool     *connPool
	flow     func(PortType) FlowMode // an edge's flow control, by its type
	window   int                     // credits per consumer in block flow
	fail     func(error)
	owners   *sync.Map // subscription -> stage, for the connections' error handler

	mu       sync.Mutex
	expected map[string][]consumerRef // subject -> inputs attached to it
	pubs     map[string]*natsPublisher
}

func newNATSTransport(pipeline string, pool *connPool, flow func(PortType) FlowMode, window int, fail func(error), owners *sync.Map) *natsTransport {
	return &natsTransport{pipeline: pipeline, pool: pool, flow: flow, window: window, fail: fail, owners: owners,
		expected: map[string][]consumerRef{}, pubs: map[string]*natsPublisher{}}
}

// conn is the shared connection a stage's subscriptions and service use.
func (t *natsTransport) conn(stage string) *nats.Conn { return t.pool.connFor(stage) }

func (t *natsTransport) attach(ctx context.Context, ref consumerRef, stage string, port Port) (inlet, error) {
	subject := Subject(t.pipeline, stage, port.Name)
	s, err := newNATSSubscriber(ctx, t.conn(ref.stage), subject, ref, t.flow(port.Type), t.window, t.fail)
	if err != nil {
		return nil, err
	}
	s.producer = t.conn(stage)
	t.owners.Store(s.sub, ref.stage)
	t.mu.Lock()
	defer t.mu.Unlock()
	if p := t.pubs[subject]; p != nil && !p.expect(ref) {
		s.detach()
		return nil, errPortEnded
	}
	t.expected[subject] = append(t.expected[subject], ref)
	return s, nil
}

func (t *natsTransport) publisher(stage string, port Port, log *slog.Logger) (publisher, error) {
	subject := Subject(t.pipeline, stage, port.Name)
	t.mu.Lock()
	defer t.mu.Unlock()
	p, err := newNATSPublisher(t.conn(stage), subject, t.expected[subject], t.flow(port.Type), t.window, log)
	if err != nil {
		return nil, err
	}
	if p.ackSub != nil {
		t.owners.Store(p.ackSub, stage)
	}
	t.pubs[subject] = p
	return p, nil
}

func (t *natsTransport) sync() error {
	if err := t.pool.Flush(); err != nil {
		return fmt.Errorf("%w: flushing the subscriptions failed: %w", ErrTransport, err)
	}
	return nil
}

// natsPublisher publishes one port on its subject, chunking messages larger
// than the server's max payload. In block mode it holds at most window
// unacknowledged messages per known consumer that has not ended.
//
// Credits travel on the subject with ".ack" appended, as "<consumer> <n>"
// (the consumer, stage/input, has taken n messages) or "<consumer> end"
// (it has ended and takes nothing more: the publisher stops waiting for it).
type natsPublisher struct {
	nc      *nats.Conn
	subject string
	block   bool
	window  uint64
	maxPart int
	chunkID uint64
	log     *slog.Logger

	mu     sync.Mutex
	sent   uint64
	acked  map[string]uint64 // consumers that have not ended -> messages they took
	names  map[string]string // consumer id -> stage name
	base   map[string]uint64 // consumer id -> messages sent before it attached
	ended  []string          // consumers that ended, not yet warned about
	eos    bool              // the port has ended
	credit chan struct{}
	ackSub *nats.Subscription
	buf    []byte
}

func newNATSPublisher(nc *nats.Conn, subject string, consumers []consumerRef, mode FlowMode, window int, log *slog.Logger) (*natsPublisher, error) {
	p := &natsPublisher{
		nc: nc, subject: subject, block: mode == FlowBlock, window: uint64(window), log: log,
		acked: map[string]uint64{}, names: map[string]string{}, base: map[string]uint64{}, credit: make(chan struct{}, 1),
	}
	// Leave room for headers and protocol overhead.
	p.maxPart = int(nc.MaxPayload()) - 1024
	if p.maxPart < 4096 {
		return nil, fmt.Errorf("%w: server max payload %d is too small", ErrTransport, nc.MaxPayload())
	}
	if p.block {
		for _, c := range consumers {
			p.acked[c.id()] = 0
			p.names[c.id()] = c.stage
		}
		sub, err := nc.Subscribe(subject+".ack", p.onAck)
		if err != nil {
			return nil, fmt.Errorf("%w: subscribing to %s.ack failed: %w", ErrTransport, subject, err)
		}
		p.ackSub = sub
	}
	return p, nil
}

// expect adds a consumer attached after the publisher was made: from
// now on the publisher waits for its credits too.
// It returns false when the port has already ended.
func (p *natsPublisher) expect(c consumerRef) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.eos {
		return false
	}
	if p.block {
		// What was sent before it attached is not its to take: its
		// credits count from here.
		p.acked[c.id()], p.base[c.id()] = p.sent, p.sent
		p.names[c.id()] = c.stage
	}
	return true
}

// onAck takes a credit or a consumer's end (see natsPublisher).
func (p *natsPublisher) onAck(m *nats.Msg) {
	id, n, ok := strings.Cut(string(m.Data), " ")
	if !ok {
		return
	}
	p.mu.Lock()
	prev, known := p.acked[id]
	switch {
	case !known:
	case n == ackEnd:
		delete(p.acked, id)
		if !p.eos {
			p.ended = append(p.ended, id)
		}
	default:
		if count, err := strconv.ParseUint(n, 10, 64); err == nil && p.base[id]+count > prev {
			p.acked[id] = p.base[id] + count
		}
	}
	p.mu.Unlock()
	signal(p.credit)
}

// ackEnd is the credit a consumer sends when it has ended.
const ackEnd = "end"

// lagging returns the consumers the publisher must wait for before it may
// send one more message (none: it may send). Called with mu held.
func (p *natsPublisher) lagging() []string {
	first := true
	var least uint64
	for _, v := range p.acked {
		if first || v < least {
			least, first = v, false
		}
	}
	if first || p.sent-least < p.window {
		return nil
	}
	var out []string
	for id, v := range p.acked {
		if v == least {
			out = append(out, p.names[id])
		}
	}
	sort.Strings(out)
	return out
}

func (p *natsPublisher) Publish(ctx context.Context, e *envelope.Envelope) error {
	// nats.go copies the data into its write buffer before Publish returns,
	// so one buffer serves every message of this port.
	data, err := envelope.AppendMarshal(p.buf[:0], e)
	if err != nil {
		return err
	}
	p.buf = data
	if e.Kind == envelope.KindEOS {
		p.mu.Lock()
		p.eos = true
		p.mu.Unlock()
	} else if p.block {
		if err := p.waitCredit(ctx); err != nil {
			return err
		}
	}
	if err := p.send(data); err != nil {
		return fmt.Errorf("%w: publishing on %s failed: %w", ErrTransport, p.subject, err)
	}
	if e.Kind != envelope.KindEOS {
		p.mu.Lock()
		p.sent++
		p.mu.Unlock()
	}
	return nil
}

// waitCredit waits until every consumer that has not ended has room for
// one more message, warning when the wait is long (a slow consumer).
func (p *natsPublisher) waitCredit(ctx context.Context) error {
	var w slowWait
	defer w.stop()
	for {
		p.mu.Lock()
		lagging, ended := p.lagging(), p.ended
		p.ended = nil
		p.mu.Unlock()
		for _, id := range ended {
			if ctx.Err() == nil {
				p.log.Warn("a consumer has ended: what this port sends it from now on is not read", "subject", p.subject, "consumer", p.names[id])
			}
		}
		if lagging == nil {
			return nil
		}
		select {
		case <-p.credit:
		case <-ctx.Done():
			return ctx.Err()
		case <-w.tick():
			if p.nc.IsClosed() {
				return fmt.Errorf("%w: NATS connection closed while waiting for %s consumers", ErrTransport, p.subject)
			}
			if waited, due := w.due(); due {
				p.log.Warn("slow consumer: waiting for credits", "subject", p.subject, "waiting_for", lagging, "waited", waited.Round(time.Second))
			}
		}
	}
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
	producer *nats.Conn // the producer's connection, when it is in this process
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
		return nil, fmt.Errorf("%w: subscribing to %s failed: %w", ErrTransport, subject, err)
	}
	// Credits bound what is in flight; the client must never drop on its own.
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		return nil, fmt.Errorf("%w: setting the pending limits of %s failed: %w", ErrTransport, subject, err)
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
			s.fail(fmt.Errorf("%w: stage %q input %d (%s): %w", ErrTransport, s.ref.stage, s.ref.input, s.subject, err))
			return
		}
		if data == nil {
			return
		}
	}
	e, err := envelope.Unmarshal(data)
	if err != nil {
		s.fail(fmt.Errorf("%w: stage %q input %d (%s): %w", ErrTransport, s.ref.stage, s.ref.input, s.subject, err))
		return
	}
	e.Input = s.ref.input
	_ = s.ref.q.Push(s.ctx, e, nil)
}

// ended tells the edge's producer that this consumer takes nothing more,
// so it stops waiting for its credits.
func (s *natsSubscriber) ended() {
	if s.block {
		_ = s.nc.Publish(s.subject+".ack", []byte(s.ref.id()+" "+ackEnd))
	}
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

func (s *natsSubscriber) detach() { _ = s.sub.Unsubscribe() }

// drain makes sure the server has what the producer (a stage of this
// process) has written, then unsubscribes once the messages the server
// had sent before are in the queue.
func (s *natsSubscriber) drain(ctx context.Context) error {
	closed := s.sub.StatusChanged(nats.SubscriptionClosed)
	if s.producer != nil {
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := s.producer.FlushWithContext(fctx); err != nil {
			return fmt.Errorf("%w: flushing %s failed: %w", ErrTransport, s.subject, err)
		}
	}
	if err := s.sub.Drain(); err != nil {
		return fmt.Errorf("%w: draining %s failed: %w", ErrTransport, s.subject, err)
	}
	select {
	case <-closed:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
