package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
	"github.com/nats-io/nats.go"
)

// The NATS wire protocol of an edge (docs/services.md):
//
//   - data on the port's subject, each message with the publishing
//     process's instance id in the Avflow-Instance header; the inputs that
//     read it subscribe in a queue group named after the consumer stage and
//     input, so the processes serving one stage share its messages;
//   - the end of stream on <subject>.eos (every instance gets it), with
//     the same header and, in Avflow-Sent, the number of data messages that
//     instance sent on the subject;
//   - credits on <subject>.ack: "<consumer> <consumer instance> <n>
//     <producer instance>" (that consumer instance has taken n messages of
//     that producer instance) or "<consumer> <consumer instance> end";
//     and requests "<consumer> <consumer instance> ended? <producer
//     instance>", which that producer instance answers with "<instance>
//     running" or "<instance> ended" (a consumer asks before it takes an
//     end of stream as the end);
//   - "<consumer> <consumer instance> hello", every helloEvery from an
//     instance of a stage that may have replicas, once its own subject
//     (directSubject) is subscribed: producers send messages alone only to
//     the instances that said hello lately. Credits not followed by a
//     message for helloEvery go again (a credit lost on the way would
//     stall the producer).
//
// Whatever else arrives on these subjects (no instance header, an
// instance the producer's or consumer's service does not announce, a
// message that does not parse, a credit above what was sent) is dropped or
// clamped, counted (dropped_messages, clamped_credits) and logged once per
// source; it never fails the run.
const (
	HeaderInstance = "Avflow-Instance"
	HeaderSent     = "Avflow-Sent"
	// HeaderSole is set ("1") on the data of a producer that is its
	// stage's only instance by construction (a stage of the process that
	// drives the pipeline): its stream arrives in order, so a consumer
	// does not put it back in order (it does for any other producer).
	HeaderSole = "Avflow-Sole"
	eosSuffix  = ".eos"
	ackSuffix  = ".ack"
	// directInfix: see directSubject.
	directInfix = ".to."
	ackEnd      = "end"
	ackHello    = "hello"   // a consumer instance whose own subject is subscribed
	ackLeaving  = "leaving" // a consumer instance about to go: send it nothing alone from now on
	ackLeft     = "ok"
	ackAsk      = "ended?"
	ackRunning  = "running"
	ackEnded    = "ended"
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
	// serving: this process serves stages (avflow serve), which other
	// processes may serve too.
	serving bool
	// job: delivery job (see transport_job.go): the data of the edges to
	// and from other processes goes through the run's stream.
	job bool

	mu       sync.Mutex
	expected map[string][]consumerRef // subject -> inputs attached to it
	pubs     map[string]*natsPublisher
	insts    map[string]*instanceSet // stage -> the instances of its service
}

func newNATSTransport(pipeline, instance string, pool *connPool, flow func(PortType) FlowMode, window int, fail func(error), owners *sync.Map, log *slog.Logger) *natsTransport {
	return &natsTransport{pipeline: pipeline, instance: instance, pool: pool, flow: flow, window: window, fail: fail, owners: owners, log: log,
		remoteReaders: func(string, string) []consumerRef { return nil },
		expected:      map[string][]consumerRef{}, pubs: map[string]*natsPublisher{}, insts: map[string]*instanceSet{}}
}

// instancesOf is the set of instances of a stage's service (one set per
// stage, shared by its edges). Called with mu held.
func (t *natsTransport) instancesOf(stage string) *instanceSet {
	set := t.insts[stage]
	if set == nil {
		set = newInstanceSet(t.pool.connFor(stage), ServiceName(t.pipeline, stage), t.localInstance(stage))
		t.insts[stage] = set
	}
	return set
}

// conn is the shared connection a stage's subscriptions and service use.
func (t *natsTransport) conn(stage string) *nats.Conn { return t.pool.connFor(stage) }

func (t *natsTransport) attach(ctx context.Context, ref consumerRef, stage string, port Port) (inlet, error) {
	subject := Subject(t.pipeline, stage, port.Name)
	log := t.log.With("stage", ref.stage, "subject", subject)
	t.mu.Lock()
	producers, self := t.instancesOf(stage), t.instancesOf(ref.stage)
	before := t.pubs[subject]
	t.mu.Unlock()
	if before != nil {
		// A producer in this process may hold messages its client has not
		// written yet: they were sent before this input attached, and the
		// server must route them before it subscribes (TestAttachTakesFromNow).
		if err := flushConn(ctx, before.nc, subject); err != nil {
			return nil, err
		}
	}
	s := &natsSubscriber{nc: t.conn(ref.stage), subject: subject, ref: ref, instance: t.instance,
		block: t.flow(port.Type) == FlowBlock, ackEvery: uint64(max(1, t.window/4)), ctx: ctx,
		producers: producers, self: self, log: log, drops: &dropLog{log: log}, taken: map[string]*atomic.Uint64{},
		from: map[string]*fromProducer{}, reorder: t.reorderFor(stage, port)}
	if t.job {
		if err := t.jobInlet(ctx, s, stage); err != nil {
			return nil, err
		}
	}
	if err := s.subscribe(queueGroup(t.pipeline, ref)); err != nil {
		return nil, err
	}
	for _, sub := range s.dataSubs() {
		t.owners.Store(sub, ref.stage)
	}
	s.unhook = t.pool.onReconnect(s.reconnected)
	t.mu.Lock()
	defer t.mu.Unlock()
	if p := t.pubs[subject]; p != nil {
		s.producer = p.nc // in this process: drain can flush it
		if !p.expect(ref, self) {
			s.detach()
			return nil, errPortEnded
		}
	}
	t.expected[subject] = append(t.expected[subject], ref)
	return s, nil
}

// jobInlet makes s an input of the job stream: it waits for the edge's
// consumer, takes window messages at a time, sends no credits, and puts its
// messages back in order for as long as a redelivery takes, dropping those
// it has passed already.
func (t *natsTransport) jobInlet(ctx context.Context, s *natsSubscriber, producer string) error {
	cons, err := jobConsumer(ctx, s.nc, jobSubject(s.subject, s.ref), jobDurable(s.ref), s.log)
	if err != nil {
		return fmt.Errorf("stage %q: %w", s.ref.stage, err)
	}
	s.job, s.block, s.window = newJobInput(cons, s.log), false, t.window
	// In the driver a message is acknowledged as it arrives: the run ends
	// with the driver (its stream goes too), and what the reorder buffer
	// holds must not fill the edge's window, or the message it waits for
	// could not be sent. A served stage's input acknowledges after the
	// stage's work, and its reorder buffer gives up on a gap before it
	// holds the consumer's whole window.
	s.job.early = !t.serving
	if t.localInstance(producer) == "" {
		limit := 0
		if t.serving {
			limit = jobAckPending(t.window) - 2*t.window
		}
		s.reorder = newReorder(limit, jobReorderWait)
		s.reorder.dup = func(e *stage.Msg) {
			s.job.dups.Add(1)
			if done := e.TakeDone(); done != nil {
				done() // its outputs are in the stream already: it goes
			}
			e.Release()
		}
	}
	return nil
}

// jobPublisher publishes a port read by stages of other processes on the
// job stream.
func (t *natsTransport) jobPublisher(stageName string, port Port, log *slog.Logger) (publisher, error) {
	subject := Subject(t.pipeline, stageName, port.Name)
	p, err := newJobPublisher(t.conn(stageName), subject, t.instance, t.remoteReaders(stageName, port.Name), log)
	if err != nil {
		return nil, err
	}
	p.sole = t.localInstance(stageName) != ""
	return p, nil
}

// localInstance is this process's instance id when stage runs here and
// nowhere else (this process drives the pipeline), "" when other
// processes may run it: its instances are then asked for.
func (t *natsTransport) localInstance(stage string) string {
	if t.serving || (t.remote != nil && t.remote(stage)) {
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

// directSubject is the subject on which the instance inst of the
// consumer ref takes the messages its producers send it alone:
// <subject>.to.<stage>.<input>.<instance>.
func directSubject(subject string, ref consumerRef, inst string) string {
	return subject + directInfix + ref.stage + "." + strconv.Itoa(ref.input) + "." + inst
}

func (t *natsTransport) publisher(stage string, port Port, log *slog.Logger) (publisher, error) {
	subject := Subject(t.pipeline, stage, port.Name)
	t.mu.Lock()
	defer t.mu.Unlock()
	consumers := append(t.expected[subject][:len(t.expected[subject]):len(t.expected[subject])], t.remoteReaders(stage, port.Name)...)
	sets := make([]*instanceSet, len(consumers))
	for i, c := range consumers {
		sets[i] = t.instancesOf(c.stage)
	}
	p, err := newNATSPublisher(t.conn(stage), subject, t.instance, consumers, sets, t.flow(port.Type), t.window, log)
	if err != nil {
		return nil, err
	}
	p.sole = t.localInstance(stage) != ""
	if p.ackSub != nil {
		t.owners.Store(p.ackSub, stage)
	}
	p.unhook = t.pool.onReconnect(p.reconnected)
	t.pubs[subject] = p
	return p, nil
}

// flushConn waits, at most 10 s, until the server has processed what was
// sent on nc (the connection of a producer of subject).
func flushConn(ctx context.Context, nc *nats.Conn, subject string) error {
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := nc.FlushWithContext(fctx); err != nil {
		return fmt.Errorf("%w: flushing %s failed: %w", ErrTransport, subject, err)
	}
	return nil
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
	sole     bool // the only instance of its stage (HeaderSole)
	block    bool
	window   uint64
	maxPart  int
	chunkID  uint64
	log      *slog.Logger
	drops    *dropLog     // credits refused
	clamped  atomic.Int64 // credits above what was sent
	unhook   func()

	sendMu sync.Mutex // held while a message is routed and sent (see leave)

	mu     sync.Mutex
	sent   uint64              // data messages sent or being sent
	cons   map[string]*credits // consumer id (stage/input) -> what it took
	ended  []string            // consumers that ended, not yet warned about
	eos    *nats.Msg           // the end of stream, once sent
	credit chan struct{}
	ackSub *nats.Subscription
	buf    []byte
}

// credits is what the instances of one consumer have taken from this
// publisher. A consumer whose every instance has ended is waited for no
// more, until one of them sends a credit again.
type credits struct {
	ref   consumerRef
	insts *instanceSet      // the consumer stage's instances
	base  uint64            // messages not its to take (sent before it attached, or forgiven)
	taken map[string]uint64 // consumer instance -> messages taken
	live  map[string]bool   // instances that have not ended
	ended bool

	// Routing, for a consumer whose stage may have replicas (its inputs
	// have a subject of their own each: directSubject).
	replicas bool
	hello    map[string]time.Time // instance -> when it last said hello (its own subject is subscribed)
	gone     map[string]bool      // instances that have ended
	leaving  map[string]bool      // instances that said they are going (never undone)
	sentTo   map[string]uint64    // instance -> messages sent to it alone (raised to what it took)
	picked   map[string]uint64    // instance -> when it was last sent one (sent count)
}

func newCredits(ref consumerRef, insts *instanceSet, base uint64) *credits {
	return &credits{ref: ref, insts: insts, base: base, taken: map[string]uint64{}, live: map[string]bool{},
		replicas: insts.local == "", hello: map[string]time.Time{}, gone: map[string]bool{}, leaving: map[string]bool{},
		sentTo: map[string]uint64{}, picked: map[string]uint64{}}
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

// instances is how many instances of the consumer take messages now: a
// window each.
func (c *credits) instances(now time.Time) int {
	n := len(c.live)
	for inst := range c.hello {
		if !c.live[inst] && !c.gone[inst] && c.fresh(inst, now) {
			n++
		}
	}
	return max(1, n)
}

// fresh says inst has said hello lately (helloFresh).
func (c *credits) fresh(inst string, now time.Time) bool {
	at, ok := c.hello[inst]
	return ok && now.Sub(at) <= helloFresh
}

// pick is the instance to send the next message to alone: among those
// that said hello lately (their own subject is subscribed) and have not
// ended or said they are going, the one with the fewest messages sent to
// it and not yet taken, the longest unpicked among equals; "" when there
// is none or each already has window messages to take. Called with the
// publisher's mu held.
func (c *credits) pick(window uint64, now time.Time) string {
	best, bestOut, bestAt := "", window, uint64(0)
	c.eachRoutable(now, func(inst string) {
		out := c.sentTo[inst] - min(c.taken[inst], c.sentTo[inst])
		if at := c.picked[inst]; out < bestOut || (out == bestOut && best != "" && at < bestAt) {
			best, bestOut, bestAt = inst, out, at
		}
	})
	return best
}

// eachRoutable calls f with each instance a message may be sent to alone:
// those that said hello lately, less those that have ended or said they
// are going. (One that answers its service's PING but has no subject of
// its own, such as an instance whose input is not attached yet, never
// says hello: see TestRouteInstanceThatTakesNothing.)
func (c *credits) eachRoutable(now time.Time, f func(string)) {
	for inst := range c.hello {
		if c.fresh(inst, now) && !c.gone[inst] && !c.leaving[inst] {
			f(inst)
		}
	}
}

// routable is how many instances pick chooses among.
func (c *credits) routable(now time.Time) int {
	n := 0
	c.eachRoutable(now, func(string) { n++ })
	return n
}

func newNATSPublisher(nc *nats.Conn, subject, instance string, consumers []consumerRef, sets []*instanceSet, mode FlowMode, window int, log *slog.Logger) (*natsPublisher, error) {
	p := &natsPublisher{
		nc: nc, subject: subject, instance: instance, block: mode == FlowBlock, window: uint64(window), log: log,
		drops: &dropLog{log: log.With("subject", subject+ackSuffix)}, cons: map[string]*credits{}, credit: make(chan struct{}, 1),
	}
	// Leave room for headers and protocol overhead.
	p.maxPart = int(nc.MaxPayload()) - 1024
	if p.maxPart < 4096 {
		return nil, fmt.Errorf("%w: server max payload %d is too small", ErrTransport, nc.MaxPayload())
	}
	if p.block {
		for i, c := range consumers {
			p.add(newCredits(c, sets[i], 0))
		}
	}
	// Credits in block flow, and in every flow the consumers' question
	// whether this instance has ended.
	sub, err := nc.Subscribe(subject+ackSuffix, p.onAck)
	if err != nil {
		return nil, fmt.Errorf("%w: subscribing to %s.ack failed: %w", ErrTransport, subject, err)
	}
	p.ackSub = sub
	return p, nil
}

// Counts reports the credits refused and clamped, once there are some
// (an eventCounter).
func (p *natsPublisher) Counts() map[string]int64 {
	return nonZero(map[string]int64{"dropped_messages": p.drops.n.Load(), "clamped_credits": p.clamped.Load()})
}

// nonZero leaves out the counters that are 0.
func nonZero(m map[string]int64) map[string]int64 {
	for k, v := range m {
		if v == 0 {
			delete(m, k)
		}
	}
	return m
}

// expect adds a consumer attached after the publisher was made: from
// now on the publisher waits for its credits too. It returns false when
// the port has already ended.
func (p *natsPublisher) expect(c consumerRef, insts *instanceSet) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.eos != nil {
		return false
	}
	if p.block {
		// What was sent before it attached is not its to take: its
		// credits count from here.
		p.add(newCredits(c, insts, p.sent))
	}
	return true
}

// add waits for a consumer's credits from now on.
func (p *natsPublisher) add(c *credits) {
	p.cons[c.ref.id()] = c
}

// route is the subject of the next message, and counts it as sent to
// the instance it goes to alone (if any): when the port has one consumer
// whose stage may have replicas, each message goes to the replica with the
// most room. Called with mu held.
func (p *natsPublisher) route() string {
	if !p.block || len(p.cons) != 1 {
		return p.subject
	}
	for _, c := range p.cons {
		if !c.replicas {
			break
		}
		now := time.Now()
		if c.routable(now) < 2 { // the queue group has it (and a new replica its share)
			return p.subject
		}
		inst := c.pick(p.window, now)
		if inst == "" {
			break
		}
		c.sentTo[inst] = max(c.sentTo[inst], c.taken[inst]) + 1
		c.picked[inst] = p.sent
		return directSubject(p.subject, c.ref, inst)
	}
	return p.subject
}

// ack is one message of the credit subject.
type ack struct {
	consumer, inst, producer string
	n                        uint64
	end                      bool
	ask                      bool // has the producer ended?
	leaving                  bool // the consumer instance is about to go
	hello                    bool // the consumer instance's own subject is subscribed
}

// parseAck reads "<consumer> <instance> <n> <producer>", "<consumer>
// <instance> end", "<consumer> <instance> leaving", "<consumer>
// <instance> hello" or "<consumer> <instance> ended? <producer>".
func parseAck(data []byte) (ack, error) {
	f := strings.Fields(string(data))
	switch {
	case len(f) == 3 && f[2] == ackEnd:
		return ack{consumer: f[0], inst: f[1], end: true}, nil
	case len(f) == 3 && f[2] == ackLeaving:
		return ack{consumer: f[0], inst: f[1], leaving: true}, nil
	case len(f) == 3 && f[2] == ackHello:
		return ack{consumer: f[0], inst: f[1], hello: true}, nil
	case len(f) == 4 && f[2] == ackAsk:
		return ack{consumer: f[0], inst: f[1], producer: f[3], ask: true}, nil
	case len(f) == 4:
		n, err := strconv.ParseUint(f[2], 10, 64)
		if err != nil {
			return ack{}, fmt.Errorf("a credit whose count %.20q is not a number", f[2])
		}
		return ack{consumer: f[0], inst: f[1], n: n, producer: f[3]}, nil
	}
	return ack{}, fmt.Errorf("not a credit: %.64q", data)
}

// onAck takes a credit or a consumer instance's end, from the instances
// of the consumers it expects; credits meant for another producer instance
// (a replica of this stage) are theirs.
func (p *natsPublisher) onAck(m *nats.Msg) {
	a, err := parseAck(m.Data)
	if err != nil {
		p.drops.drop("unknown", err.Error())
		return
	}
	if a.producer != p.instance && !a.end && !a.leaving && !a.hello {
		return
	}
	if a.ask {
		p.answer(m)
		return
	}
	p.mu.Lock()
	c := p.cons[a.consumer]
	p.mu.Unlock()
	switch {
	case c == nil:
		p.drops.drop(a.inst, "a credit from "+a.consumer+", which does not read "+p.subject)
		return
	case a.hello && (!c.replicas || !c.insts.knows(a.inst)):
		// Not counted: its service may not answer for it yet (it says
		// hello before it is registered), and it says hello again.
		return
	case !c.insts.has(a.inst): // may ask the service: not under mu
		p.drops.drop(a.inst, "a credit from no instance of "+c.insts.service)
		return
	}
	if a.leaving {
		p.leave(c, a.inst, m)
		return
	}
	p.mu.Lock()
	switch {
	case a.hello:
		c.hello[a.inst] = time.Now()
	case a.end:
		p.endConsumer(c, a.inst)
	default:
		p.take(c, a)
	}
	p.mu.Unlock()
	signal(p.credit)
}

// leave sends a consumer instance that is going nothing more alone, and
// answers once what it was sent alone is on the wire (before the answer,
// on this connection): the instance may then drop its own subject.
func (p *natsPublisher) leave(c *credits, inst string, m *nats.Msg) {
	p.sendMu.Lock()
	p.mu.Lock()
	c.leaving[inst] = true
	p.mu.Unlock()
	p.sendMu.Unlock()
	if m.Reply != "" {
		_ = m.Respond([]byte(p.instance + " " + ackLeft))
	}
}

// answer tells a consumer whether this instance has ended its port.
func (p *natsPublisher) answer(m *nats.Msg) {
	p.mu.Lock()
	state := ackRunning
	if p.eos != nil {
		state = ackEnded
	}
	p.mu.Unlock()
	if m.Reply != "" {
		_ = m.Respond([]byte(p.instance + " " + state))
	}
}

// endConsumer records a consumer instance's end. Called with mu held.
func (p *natsPublisher) endConsumer(c *credits, inst string) {
	if _, known := c.taken[inst]; !known {
		c.taken[inst] = 0
	}
	delete(c.live, inst)
	c.gone[inst] = true
	if len(c.live) == 0 && !c.ended {
		c.ended = true
		if p.eos == nil {
			p.ended = append(p.ended, c.ref.stage)
		}
	}
}

// take records a credit, clamped to what was sent: no consumer can have
// taken more. Called with mu held.
func (p *natsPublisher) take(c *credits, a ack) {
	if a.n > p.sent {
		if p.clamped.Add(1) == 1 {
			p.log.Warn("a credit above what was sent: clamped (further ones are only counted)", "subject", p.subject+ackSuffix,
				"from", a.inst, "credit", a.n, "sent", p.sent)
		}
		a.n = p.sent
	}
	if a.n > c.taken[a.inst] {
		c.taken[a.inst] = a.n
	}
	c.live[a.inst] = true
	delete(c.gone, a.inst)
	c.ended = false // an instance that has ended sends no credit: a forged end is undone
}

// lagging returns the consumers the publisher must wait for before it may
// send one more message (none: it may send). Called with mu held.
func (p *natsPublisher) lagging() []string {
	var out []string
	now := time.Now()
	for _, c := range p.cons {
		// A window for each instance of the consumer that reads now.
		if !c.ended && p.sent-c.took(p.sent) >= p.window*uint64(c.instances(now)) {
			out = append(out, c.ref.stage)
		}
	}
	sort.Strings(out)
	return out
}

// reconnected runs when a connection of the run is back after the server
// was away: messages and credits in flight then may be lost, so what was
// sent before counts as taken (a consumer may get one window more), and
// an end of stream already sent is sent again.
func (p *natsPublisher) reconnected() {
	p.mu.Lock()
	for _, c := range p.cons {
		c.base += p.sent - c.took(p.sent)
		clear(c.sentTo) // what was sent to an instance counts as taken too
	}
	eos := p.eos
	p.mu.Unlock()
	signal(p.credit)
	if eos != nil {
		_ = p.nc.PublishMsg(eos)
	}
}

func (p *natsPublisher) Publish(ctx context.Context, e *stage.Msg) error {
	// nats.go copies the data into its write buffer before Publish returns,
	// so one buffer serves every message of this port.
	data, err := stage.AppendMarshal(p.buf[:0], e)
	if err != nil {
		return err
	}
	p.buf = data
	if e.Kind == envelope.KindEOS {
		return p.publishEOS(ctx, data)
	}
	if p.block {
		if err := p.waitCredit(ctx); err != nil {
			return err
		}
	}
	// Counted before it goes: a credit for it may come back at once. The
	// route and the send are one step for leave.
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	p.mu.Lock()
	subject := p.route()
	p.sent++
	p.mu.Unlock()
	if err := p.send(ctx, subject, data); err != nil {
		return fmt.Errorf("%w: publishing on %s failed: %w", ErrTransport, p.subject, err)
	}
	return nil
}

func (p *natsPublisher) publishEOS(ctx context.Context, data []byte) error {
	p.mu.Lock()
	m := &nats.Msg{Subject: p.subject + eosSuffix, Data: slices.Clone(data), Header: nats.Header{
		HeaderInstance: []string{p.instance}, HeaderSent: []string{strconv.FormatUint(p.sent, 10)}}}
	p.eos = m
	p.mu.Unlock()
	if err := p.publishMsg(ctx, m); err != nil {
		return fmt.Errorf("%w: publishing the end of %s failed: %w", ErrTransport, p.subject, err)
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

func (p *natsPublisher) send(ctx context.Context, subject string, data []byte) error {
	if len(data) <= p.maxPart {
		return p.publishMsg(ctx, &nats.Msg{Subject: subject, Data: data, Header: p.header()})
	}
	p.chunkID++
	parts, err := envelope.Split(p.chunkID, data, p.maxPart)
	if err != nil {
		return err
	}
	for _, c := range parts {
		h := p.header()
		h[envelope.HeaderChunk] = []string{c.Header()}
		m := &nats.Msg{Subject: subject, Data: c.Data, Header: h}
		if err := p.publishMsg(ctx, m); err != nil {
			return err
		}
	}
	return nil
}

// header is a data message's headers.
func (p *natsPublisher) header() nats.Header {
	h := nats.Header{HeaderInstance: []string{p.instance}}
	if p.sole {
		h[HeaderSole] = []string{"1"}
	}
	return h
}

// publishMsg publishes m; while the server is away and the connection's
// reconnect buffer is full, it waits for the server (the pool fails the
// run if it stays away).
func (p *natsPublisher) publishMsg(ctx context.Context, m *nats.Msg) error {
	for {
		err := p.nc.PublishMsg(m)
		if !errors.Is(err, nats.ErrReconnectBufExceeded) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (p *natsPublisher) Close() {
	if p.unhook != nil {
		p.unhook()
	}
	if p.ackSub != nil {
		_ = p.ackSub.Unsubscribe()
	}
}
