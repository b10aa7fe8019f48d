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

// The NATS wire protocol of an edge (docs/services.md):
//
//   - data on the port's subject, each message with the publishing
//     process's instance id in the Avflow-Instance header; the inputs that
//     read it subscribe in a queue group named after the consumer stage and
//     input, so the processes serving one stage share its messages;
//   - the end of stream on <subject>.eos (every instance gets it), with
//     the same header;
//   - credits on <subject>.ack: "<consumer> <consumer instance> <n>
//     <producer instance>" (that consumer instance has taken n messages of
//     that producer instance) or "<consumer> <consumer instance> end".
const (
	HeaderInstance = "Avflow-Instance"
	eosSuffix      = ".eos"
	ackSuffix      = ".ack"
	ackEnd         = "end"
)

// natsTransport sends a pipeline's messages on NATS subjects (see
// Subject), over the run's shared connections.
type natsTransport struct {
	pipeline string
	instance string // this process's instance id
	pool     *connPool
	flow     func(PortType) FlowMode // an edge's flow control, by its type
	window   int                     // credits per consumer in block flow
	fail     func(error)
	owners   *sync.Map // subscription -> stage, for the connections' error handler
	log      *slog.Logger
	// remoteReaders are the inputs of stages in other processes that read
	// a port (stage, port) of this process.
	remoteReaders func(stage, port string) []consumerRef
	// remote says a stage runs in another process (nil: none does).
	remote func(stage string) bool

	mu       sync.Mutex
	expected map[string][]consumerRef // subject -> inputs attached to it
	pubs     map[string]*natsPublisher
}

func newNATSTransport(pipeline, instance string, pool *connPool, flow func(PortType) FlowMode, window int, fail func(error), owners *sync.Map, log *slog.Logger) *natsTransport {
	return &natsTransport{pipeline: pipeline, instance: instance, pool: pool, flow: flow, window: window, fail: fail, owners: owners, log: log,
		remoteReaders: func(string, string) []consumerRef { return nil },
		expected:      map[string][]consumerRef{}, pubs: map[string]*natsPublisher{}}
}

// conn is the shared connection a stage's subscriptions and service use.
func (t *natsTransport) conn(stage string) *nats.Conn { return t.pool.connFor(stage) }

func (t *natsTransport) attach(ctx context.Context, ref consumerRef, stage string, port Port) (inlet, error) {
	subject := Subject(t.pipeline, stage, port.Name)
	s := &natsSubscriber{nc: t.conn(ref.stage), subject: subject, ref: ref, instance: t.instance,
		block: t.flow(port.Type) == FlowBlock, ackEvery: uint64(max(1, t.window/4)), ctx: ctx,
		producers: newProducerSet(t.conn(ref.stage), ServiceName(t.pipeline, stage), t.localInstance(stage)),
		log:       t.log.With("stage", ref.stage, "subject", subject), taken: map[string]*atomic.Uint64{},
		reorder: t.reorderFor(stage, port), self: ServiceName(t.pipeline, ref.stage)}
	if err := s.subscribe(queueGroup(t.pipeline, ref)); err != nil {
		return nil, err
	}
	t.owners.Store(s.sub, ref.stage)
	t.mu.Lock()
	defer t.mu.Unlock()
	if p := t.pubs[subject]; p != nil {
		s.producer = p.nc // in this process: drain can flush it
		if !p.expect(ref) {
			s.detach()
			return nil, errPortEnded
		}
	}
	t.expected[subject] = append(t.expected[subject], ref)
	return s, nil
}

// localInstance is this process's instance id when stage runs here (it
// is then the producer's only instance), "" when it runs elsewhere.
func (t *natsTransport) localInstance(stage string) string {
	if t.remote != nil && t.remote(stage) {
		return ""
	}
	return t.instance
}

// reorderFor is the reorder buffer of an input from stage's port: none
// when the stage runs here (one instance sends in order); for a remote
// one, a gap waits long in block flow (nothing is dropped, a replica is
// only slow) and briefly where frames may be dropped (live).
func (t *natsTransport) reorderFor(stage string, port Port) *reorder {
	if t.localInstance(stage) != "" {
		return nil
	}
	if t.flow(port.Type) == FlowDropOldest {
		return newReorder(2*t.window, 100*time.Millisecond)
	}
	return newReorder(0, 5*time.Second) // the producers' credits bound what waits
}

// queueGroup is the queue group of an input: every process that serves the
// consumer stage takes part of its messages.
func queueGroup(pipeline string, ref consumerRef) string {
	return pipeline + "-" + ref.stage + "-" + strconv.Itoa(ref.input)
}

func (t *natsTransport) publisher(stage string, port Port, log *slog.Logger) (publisher, error) {
	subject := Subject(t.pipeline, stage, port.Name)
	t.mu.Lock()
	defer t.mu.Unlock()
	consumers := append(t.expected[subject][:len(t.expected[subject]):len(t.expected[subject])], t.remoteReaders(stage, port.Name)...)
	p, err := newNATSPublisher(t.conn(stage), subject, t.instance, consumers, t.flow(port.Type), t.window, log)
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
// messages not yet taken per consumer (stage/input) that has not ended,
// counting what every instance of the consumer has taken.
type natsPublisher struct {
	nc       *nats.Conn
	subject  string
	instance string
	block    bool
	window   uint64
	maxPart  int
	chunkID  uint64
	log      *slog.Logger

	mu     sync.Mutex
	sent   uint64
	cons   map[string]*credits // consumer id (stage/input) -> what it took
	ended  []string            // consumers that ended, not yet warned about
	eos    bool                // the port has ended
	credit chan struct{}
	ackSub *nats.Subscription
	buf    []byte
}

// credits is what the instances of one consumer have taken from this
// publisher. A consumer whose every instance has ended is waited for no
// more.
type credits struct {
	stage string
	base  uint64            // messages sent before it attached
	taken map[string]uint64 // consumer instance -> messages taken
	live  map[string]bool   // instances that have not ended
}

// took is how many messages the consumer has taken, at most sent (a forged
// credit cannot make the publisher send more than its window).
func (c *credits) took(sent uint64) uint64 {
	n := c.base
	for _, v := range c.taken {
		n += v
	}
	return min(n, sent)
}

func newNATSPublisher(nc *nats.Conn, subject, instance string, consumers []consumerRef, mode FlowMode, window int, log *slog.Logger) (*natsPublisher, error) {
	p := &natsPublisher{
		nc: nc, subject: subject, instance: instance, block: mode == FlowBlock, window: uint64(window), log: log,
		cons: map[string]*credits{}, credit: make(chan struct{}, 1),
	}
	// Leave room for headers and protocol overhead.
	p.maxPart = int(nc.MaxPayload()) - 1024
	if p.maxPart < 4096 {
		return nil, fmt.Errorf("%w: server max payload %d is too small", ErrTransport, nc.MaxPayload())
	}
	if p.block {
		for _, c := range consumers {
			p.cons[c.id()] = &credits{stage: c.stage, taken: map[string]uint64{}, live: map[string]bool{}}
		}
		sub, err := nc.Subscribe(subject+ackSuffix, p.onAck)
		if err != nil {
			return nil, fmt.Errorf("%w: subscribing to %s.ack failed: %w", ErrTransport, subject, err)
		}
		p.ackSub = sub
	}
	return p, nil
}

// expect adds a consumer attached after the publisher was made: from
// now on the publisher waits for its credits too. It returns false when
// the port has already ended.
func (p *natsPublisher) expect(c consumerRef) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.eos {
		return false
	}
	if p.block {
		// What was sent before it attached is not its to take: its
		// credits count from here.
		p.cons[c.id()] = &credits{stage: c.stage, base: p.sent, taken: map[string]uint64{}, live: map[string]bool{}}
	}
	return true
}

// onAck takes a credit or a consumer instance's end. Credits of consumers
// it does not expect, or meant for another producer instance, are ignored.
func (p *natsPublisher) onAck(m *nats.Msg) {
	f := strings.Fields(string(m.Data))
	if len(f) < 3 {
		return
	}
	id, inst := f[0], f[1]
	p.mu.Lock()
	c := p.cons[id]
	switch {
	case c == nil:
	case f[2] == ackEnd && len(f) == 3:
		if _, known := c.taken[inst]; !known {
			c.taken[inst] = 0
		}
		delete(c.live, inst)
		if len(c.live) == 0 {
			delete(p.cons, id)
			if !p.eos {
				p.ended = append(p.ended, c.stage)
			}
		}
	case len(f) == 4 && f[3] == p.instance:
		if n, err := strconv.ParseUint(f[2], 10, 64); err == nil && n > c.taken[inst] {
			c.taken[inst] = n
			c.live[inst] = true
		}
	}
	p.mu.Unlock()
	signal(p.credit)
}

// lagging returns the consumers the publisher must wait for before it may
// send one more message (none: it may send). Called with mu held.
func (p *natsPublisher) lagging() []string {
	var out []string
	for _, c := range p.cons {
		// A window for each instance of the consumer that reads now.
		if p.sent-c.took(p.sent) >= p.window*uint64(max(1, len(c.live))) {
			out = append(out, c.stage)
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
		m := &nats.Msg{Subject: p.subject + eosSuffix, Data: data, Header: nats.Header{HeaderInstance: []string{p.instance}}}
		if err := p.nc.PublishMsg(m); err != nil {
			return fmt.Errorf("%w: publishing the end of %s failed: %w", ErrTransport, p.subject, err)
		}
		return nil
	}
	if p.block {
		if err := p.waitCredit(ctx); err != nil {
			return err
		}
	}
	if err := p.send(data); err != nil {
		return fmt.Errorf("%w: publishing on %s failed: %w", ErrTransport, p.subject, err)
	}
	p.mu.Lock()
	p.sent++
	p.mu.Unlock()
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
		for _, stage := range ended {
			if ctx.Err() == nil {
				p.log.Warn("a consumer has ended: what this port sends it from now on is not read", "subject", p.subject, "consumer", stage)
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
		return p.nc.PublishMsg(&nats.Msg{Subject: p.subject, Data: data, Header: nats.Header{HeaderInstance: []string{p.instance}}})
	}
	p.chunkID++
	parts, err := envelope.Split(p.chunkID, data, p.maxPart)
	if err != nil {
		return err
	}
	for _, c := range parts {
		m := &nats.Msg{Subject: p.subject, Data: c.Data, Header: nats.Header{envelope.HeaderChunk: []string{c.Header()}, HeaderInstance: []string{p.instance}}}
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
