package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
)

// Bounds of what an input takes from the bus, whoever sends it.
const (
	maxPendingMsgs     = 1 << 16 // messages the client holds for one subscription
	maxPendingBytes    = 1 << 30
	maxProducerStreams = 16 // producer instances an input reassembles chunks for
	maxWarnedSources   = 64 // sources whose bad messages are logged (once each)
)

// Timing of an input's end (variables: tests shorten them).
var (
	// maxPartialAge is how long a partial chunked message is kept.
	maxPartialAge = 10 * time.Second
	// eosWait is how long an input that has every end of stream waits
	// without progress for the messages they say were sent.
	eosWait = 2 * time.Second
	// ghostWait is how long it waits for an instance of the producer's
	// service that has sent nothing at all, once every other has ended.
	ghostWait = 10 * time.Second
	// helloEvery is how often an input says hello (when it has a subject
	// of its own) and, when it has sent no credit since, sends its credits
	// again; helloFresh is how long a producer takes a hello to hold.
	helloEvery = 500 * time.Millisecond
	helloFresh = 4 * helloEvery
	// gapProbe is how long a gap of the reorder waits before the input
	// asks whether a producer instance is gone (probeGap); gapQuiet is how
	// long that ask waits after the last answer.
	gapProbe = 300 * time.Millisecond
	gapQuiet = 500 * time.Millisecond
)

// natsSubscriber feeds one input edge from its subject into the stage
// queue, and sends credits back as the stage takes messages. It takes data
// and ends of stream only from the instances of its producer stage's
// service; whatever else arrives is dropped and counted.
type natsSubscriber struct {
	nc        *nats.Conn
	subject   string
	ref       consumerRef
	instance  string             // this process's
	sub       *nats.Subscription // the queue group's
	direct    *nats.Subscription // this instance's own (directSubject), when the stage may have replicas
	eosSub    *nats.Subscription
	job       *jobInput       // delivery job: the edge's consumer in the run's stream (no data subscriptions)
	window    int             // delivery job: messages taken at a time
	producer  *nats.Conn      // the producer's connection, when it is in this process
	producers *instanceSet    // the producer stage's instances
	self      *instanceSet    // the consumer stage's instances (this one among them)
	sources   map[string]bool // producer instances seen (data callback), until the reorder buffer is on
	block     bool
	ackEvery  uint64
	ctx       context.Context
	log       *slog.Logger
	drops     *dropLog
	unhook    func()

	// recvMu makes the data subscriptions' callbacks take turns; the
	// chunk joiner is theirs.
	recvMu  sync.Mutex
	chunks  joiner
	parking parking
	// orderMu guards the reorder buffer and its gap timer.
	orderMu    sync.Mutex
	reorder    *reorder
	gapTimer   *time.Timer
	probeTimer *time.Timer // probeGap, while a gap waits

	// The hello loop (announce); credits counts the credits sent.
	credits      atomic.Uint64
	stopAnnounce chan struct{}
	announceDone chan struct{}
	announceOnce sync.Once

	mu       sync.Mutex
	taken    map[string]*atomic.Uint64 // producer instance -> messages taken
	from     map[string]*fromProducer  // producer instance -> what it sent here
	ending   bool
	endSent  bool // ended() has told the producers
	endOnce  sync.Once
	detached bool
}

// fromProducer is what one producer instance has sent an input.
type fromProducer struct {
	got      uint64 // data messages taken from the bus
	firstSeq uint64 // the Seq of the first of them
	lastSeq  uint64 // the highest Seq among them
	eos      bool   // it has sent its end of stream...
	sent     uint64 // ...saying it sent this many data messages
}

func (s *natsSubscriber) subscribe(queue string) error {
	if s.job != nil {
		return s.subscribeJob()
	}
	sub, err := s.subscribeData(s.subject, queue)
	if err != nil {
		return err
	}
	var direct *nats.Subscription
	if s.block && s.self.local == "" {
		// A producer that hears the replicas sends each message to the
		// one with the most room (see natsPublisher.route).
		if direct, err = s.subscribeData(directSubject(s.subject, s.ref, s.instance), ""); err != nil {
			_ = sub.Unsubscribe()
			return err
		}
	}
	eos, err := s.nc.Subscribe(s.subject+eosSuffix, s.onEOS)
	if err != nil {
		_ = sub.Unsubscribe()
		if direct != nil {
			_ = direct.Unsubscribe()
		}
		return fmt.Errorf("%w: subscribing to %s%s failed: %w", ErrTransport, s.subject, eosSuffix, err)
	}
	s.sub, s.direct, s.eosSub, s.sources = sub, direct, eos, map[string]bool{}
	if s.block {
		s.stopAnnounce, s.announceDone = make(chan struct{}), make(chan struct{})
		go s.announce()
	}
	return nil
}

// announce says hello every helloEvery when the input has a subject of
// its own (after subscribing it, on the same connection: a producer that
// hears it can send there), and sends its credits again when it has sent
// none since the last time: a credit lost on the way (or refused while
// the consumer's service did not yet answer for it) would leave the
// producer waiting for ever. It runs until stopAnnouncing.
func (s *natsSubscriber) announce() {
	defer close(s.announceDone)
	tick := time.NewTicker(helloEvery)
	defer tick.Stop()
	sent := s.credits.Load()
	for ticks := 0; ; ticks++ {
		if s.direct != nil {
			_ = s.nc.Publish(s.subject+ackSuffix, []byte(s.ref.id()+" "+s.instance+" "+ackHello))
		}
		select {
		case <-tick.C:
		case <-s.stopAnnounce:
			return
		}
		if s.direct != nil && ticks%peersEvery == 0 {
			s.meetPeers()
		}
		if n := s.credits.Load(); n != sent {
			sent = n
			continue
		}
		s.mu.Lock()
		counts := s.takenLocked()
		s.mu.Unlock()
		for inst, n := range counts {
			s.credit(inst, n)
		}
		sent = s.credits.Load()
	}
}

// peersEvery is how many hellos apart an input with replicas asks who its
// peers are (meetPeers).
const peersEvery = 20

// meetPeers asks which instances of the consumer's stage are there, so
// that the end of stream knows whether this one had peers (see alone).
func (s *natsSubscriber) meetPeers() {
	_ = s.self.ask("", s.stopAnnounce)
}

// stopAnnouncing ends the hello loop and waits for it: nothing of its
// may follow the input's leaving or end.
func (s *natsSubscriber) stopAnnouncing() {
	if s.stopAnnounce == nil {
		return
	}
	s.announceOnce.Do(func() { close(s.stopAnnounce) })
	<-s.announceDone
}

// subscribeJob takes the input's data from its consumer in the job stream
// and its ends of stream from core NATS.
func (s *natsSubscriber) subscribeJob() error {
	eos, err := s.nc.Subscribe(s.subject+eosSuffix, s.onEOS)
	if err != nil {
		return fmt.Errorf("%w: subscribing to %s%s failed: %w", ErrTransport, s.subject, eosSuffix, err)
	}
	s.eosSub, s.sources = eos, map[string]bool{}
	if err := s.job.start(s.window, s.onJobMsg, s.onJobErr); err != nil {
		_ = eos.Unsubscribe()
		return err
	}
	// The end is watched from the start: an instance that starts after
	// its producers' ends of stream (a restarted one) gets none.
	go s.waitJobEnd()
	return nil
}

// onJobErr hears what goes wrong with the input's consumer: one that was
// removed (a new run replaced the stream this input had found, one an
// earlier run had left) is looked for again.
func (s *natsSubscriber) onJobErr(err error) {
	switch {
	case s.ctx.Err() != nil:
	case errors.Is(err, jetstream.ErrConsumerDeleted):
		go s.rebindJob()
	default:
		s.log.Debug("job stream consumer", "err", err)
	}
}

// rebindJob waits for the edge's consumer in the new stream and takes
// from it.
func (s *natsSubscriber) rebindJob() {
	durable := jobDurable(s.ref)
	s.log.Warn("the job stream's consumer was removed (a new run of the pipeline replaced the stream): waiting for the new one", "consumer", durable)
	cons, err := jobConsumer(s.ctx, s.nc, jobSubject(s.subject, s.ref), durable, s.log)
	if err != nil {
		return // the run ended meanwhile
	}
	if err := s.job.rebind(cons, s.window, s.onJobMsg, s.onJobErr); err != nil {
		s.log.Warn("taking from the new job stream failed", "consumer", durable, "err", err)
	}
}

// onJobMsg takes a message of the job stream: done acknowledges it once
// the stage's outputs for it are published.
func (s *natsSubscriber) onJobMsg(m jetstream.Msg) {
	done, term, later := s.job.take(m)
	if done == nil {
		s.drops.drop("unknown", "a job stream message without metadata")
		return
	}
	s.recvMu.Lock()
	defer s.recvMu.Unlock()
	// A message from an instance its service does not answer for yet
	// (one that has just started) comes again in a moment.
	if inst := m.Headers().Get(HeaderInstance); inst != "" && !s.producers.has(inst) && later() {
		return
	}
	if s.job.early { // acknowledged once it is known to be the pipeline's
		done()
		done = func() {}
	}
	s.receive(m.Headers(), m.Data(), done, term)
}

// subscribeData subscribes onMsg to a data subject, in a queue group
// unless queue is "".
func (s *natsSubscriber) subscribeData(subject, queue string) (*nats.Subscription, error) {
	sub, err := s.nc.QueueSubscribe(subject, queue, s.onMsg)
	if err != nil {
		return nil, fmt.Errorf("%w: subscribing to %s failed: %w", ErrTransport, subject, err)
	}
	// Credits bound what the pipeline's producers send; these bound the rest.
	if err := sub.SetPendingLimits(maxPendingMsgs, maxPendingBytes); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("%w: setting the pending limits of %s failed: %w", ErrTransport, subject, err)
	}
	return sub, nil
}

// dataSubs are the input's data subscriptions.
func (s *natsSubscriber) dataSubs() []*nats.Subscription {
	if s.job != nil {
		return nil
	}
	if s.direct == nil {
		return []*nats.Subscription{s.sub}
	}
	return []*nats.Subscription{s.sub, s.direct}
}

// drainData drains the data subscriptions and waits until the messages
// the server had sent them have been through onMsg.
func (s *natsSubscriber) drainData(ctx context.Context) error {
	if s.job != nil {
		s.job.stopTaking()
	}
	for _, sub := range s.dataSubs() {
		closed := sub.StatusChanged(nats.SubscriptionClosed)
		if err := sub.Drain(); err != nil {
			return fmt.Errorf("%w: draining %s failed: %w", ErrTransport, sub.Subject, err)
		}
		select {
		case <-closed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s.waitParked(ctx.Done())
	return ctx.Err()
}

// Counts reports the messages dropped, once there are some (an eventCounter).
func (s *natsSubscriber) Counts() map[string]int64 {
	m := map[string]int64{"dropped_messages": s.drops.n.Load()}
	if s.job != nil {
		m["redelivered_duplicates"] = s.job.dups.Load()
		m["redelivered"] = s.job.redone.Load()
	}
	if s.reorder != nil {
		s.orderMu.Lock()
		m["lost_messages"] = int64(s.reorder.lost)
		s.orderMu.Unlock()
	}
	return nonZero(m)
}

// dropLog counts the messages an edge drops and logs the first of each
// source (at most maxWarnedSources of them).
type dropLog struct {
	log    *slog.Logger
	n      atomic.Int64
	mu     sync.Mutex
	warned map[string]bool
}

func (d *dropLog) drop(source, why string) {
	d.n.Add(1)
	if source == "" {
		source = "unknown"
	}
	d.mu.Lock()
	first := !d.warned[source] && len(d.warned) < maxWarnedSources
	if first {
		if d.warned == nil {
			d.warned = map[string]bool{}
		}
		d.warned[source] = true
	}
	d.mu.Unlock()
	if first {
		d.log.Warn("dropped a message that is not the pipeline's (further ones from this source are only counted)", "from", source, "why", why)
	}
}

func (s *natsSubscriber) onMsg(m *nats.Msg) {
	s.recvMu.Lock()
	defer s.recvMu.Unlock()
	s.receive(m.Header, m.Data, nil, nil)
}

// receive takes one data message (or chunk) of a producer instance. In
// job delivery done acknowledges it and term drops it for good; a message
// that is dropped is termed. A core message of an instance not known yet
// waits while its service is asked (park). Called with recvMu held.
func (s *natsSubscriber) receive(header nats.Header, data []byte, done, term func()) {
	drop := func(source, why string) {
		s.drops.drop(source, why)
		if term != nil {
			term()
		}
	}
	inst := header.Get(HeaderInstance)
	if inst == "" {
		drop("unknown", "no "+HeaderInstance+" header")
		return
	}
	notOurs := "not an instance of " + s.producers.service
	if s.job != nil {
		// Job delivery has asked (onJobMsg), and redelivers what it drops.
		if !s.producers.has(inst) {
			drop(inst, notOurs)
			return
		}
	} else if s.mustPark(inst) {
		switch {
		case !s.parking.full():
			s.park(inst, header, data)
			return
		case s.parking.from[inst] > 0:
			drop(inst, notOurs+" (yet), and the queue of such messages is full")
			return
		case !s.producers.has(inst):
			// The parking is full of other instances' messages (a flood
			// of forged ones): this one's service is asked now.
			drop(inst, notOurs)
			return
		}
	}
	s.accept(inst, header, data, done, term)
}

// accept takes a data message (or chunk) of a known producer instance.
// Called with recvMu held.
func (s *natsSubscriber) accept(inst string, header nats.Header, data []byte, done, term func()) {
	drop := func(source, why string) {
		s.drops.drop(source, why)
		if term != nil {
			term()
		}
	}
	if h := header.Get(envelope.HeaderChunk); h != "" && s.job != nil {
		drop(inst, "a chunk in the job stream (job delivery does not split messages)")
		return
	} else if h != "" {
		var err error
		if data, err = s.chunks.add(inst, h, data, time.Now()); err != nil {
			drop(inst, err.Error())
			return
		}
		if data == nil {
			return
		}
	} else if s.chunks.whole(inst) {
		s.drops.drop(inst, "a chunked message that lost its tail")
	}
	e, err := stage.Unmarshal(data)
	switch {
	case err != nil:
		drop(inst, err.Error())
		return
	case e.Kind == envelope.KindEOS:
		drop(inst, "an end of stream on the data subject")
		return
	}
	s.received(inst, e.Seq)
	e.Input = s.ref.input
	if s.block {
		e.SetAck(func() { s.took(inst) })
	}
	if done != nil {
		e.SetDone(done)
	}
	if s.reorder != nil && !s.sources[inst] && len(s.sources) < 2 {
		s.sources[inst] = true
		// Outputs of several producer instances (there at the first
		// message, or a second one seen later) are put back in order,
		// unless this instance takes only part of them (its queue group
		// has others): then there is no whole order to restore. A
		// producer that is its stage's only instance says so
		// (HeaderSole); any other may have replicas, now or starting a
		// moment later, so its stream is put in order from the first
		// message (asking its service would cost a PING's quiet time,
		// and a replica that answers late would see its first messages
		// pass out of order).
		if len(s.sources) == 2 || header.Get(HeaderSole) == "" {
			alone := len(s.self.live()) <= 1
			s.orderMu.Lock()
			s.reorder.active = alone
			s.orderMu.Unlock()
		}
	}
	s.ordered(func() []*stage.Msg { return s.reorder.add(e, inst, time.Now()) })
}

// received counts a data message of a producer instance.
func (s *natsSubscriber) received(inst string, seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.fromLocked(inst)
	if f.got == 0 {
		f.firstSeq, f.lastSeq = seq, seq
	}
	f.got++
	f.lastSeq = max(f.lastSeq, seq)
}

// fromLocked is what inst has sent, made on first use. Called with mu held.
func (s *natsSubscriber) fromLocked(inst string) *fromProducer {
	f := s.from[inst]
	if f == nil {
		f = &fromProducer{}
		s.from[inst] = f
	}
	return f
}

// ordered pushes, in order, what f takes from the reorder buffer, and
// arms the gap timer while messages wait there.
func (s *natsSubscriber) ordered(f func() []*stage.Msg) {
	s.orderMu.Lock()
	defer s.orderMu.Unlock()
	for _, out := range f() {
		_ = s.ref.q.Push(s.ctx, out, nil)
	}
	if s.reorder.waiting() && s.gapTimer == nil {
		s.gapTimer = time.AfterFunc(s.reorder.wait, func() {
			s.orderMu.Lock()
			s.gapTimer = nil
			s.orderMu.Unlock()
			s.ordered(s.reorder.skip)
		})
	}
	if s.reorder.waiting() && s.probeTimer == nil && s.job == nil && s.reorder.wait > gapProbe {
		s.probeTimer = time.AfterFunc(gapProbe, s.probeGap)
	}
}

// probeGap runs while a gap has held messages back for gapProbe: when a
// producer instance that has sent messages here is gone (killed: its
// service no longer answers), what it had taken will never come, and the
// gaps are given up at once rather than after the reorder's wait. Job
// delivery does not ask: the server sends those messages again.
func (s *natsSubscriber) probeGap() {
	gone := s.producerGone()
	s.orderMu.Lock()
	s.probeTimer = nil
	s.orderMu.Unlock()
	s.ordered(func() []*stage.Msg { // asks again while a gap waits
		var out []*stage.Msg
		for _, inst := range gone {
			out = append(out, s.reorder.markGone(inst)...)
		}
		return out
	})
}

// producerGone asks the producer's service for the instances that have
// sent data here and no end of stream, and returns those of them, not
// found gone before, that did not answer.
func (s *natsSubscriber) producerGone() []string {
	s.orderMu.Lock()
	gone := maps.Clone(s.reorder.gone)
	s.orderMu.Unlock()
	s.mu.Lock()
	var want []string
	for inst, f := range s.from {
		if !f.eos && !gone[inst] {
			want = append(want, inst)
		}
	}
	s.mu.Unlock()
	if len(want) == 0 {
		return nil
	}
	answered := s.producers.askAll(want, gapQuiet, s.ctx.Done())
	if s.ctx.Err() != nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var found []string
	for _, inst := range want {
		if !slices.Contains(answered, inst) && !s.from[inst].eos {
			found = append(found, inst)
			s.log.Warn("a producer instance is gone: the messages it had taken are given up", "producer", s.producers.service, "instance", inst)
		}
	}
	return found
}

// onEOS records a producer instance's end of stream. The input ends once
// every instance of the producer's service that is still there has ended
// and, when this is the only instance of the consumer, the messages they
// say they sent have arrived (see waitEnd).
func (s *natsSubscriber) onEOS(m *nats.Msg) {
	inst := m.Header.Get(HeaderInstance)
	if e, err := envelope.Unmarshal(m.Data); err != nil || e.Kind != envelope.KindEOS {
		s.drops.drop(inst, "not an end of stream on the end subject")
		return
	}
	sent, err := strconv.ParseUint(m.Header.Get(HeaderSent), 10, 64)
	if err != nil {
		s.drops.drop(inst, "an end of stream without a valid "+HeaderSent+" header")
		return
	}
	// An instance that sent nothing and has already left (a served stage
	// that ended before this input asked who is there) is unknown, yet its
	// end must count, or the input waits for it for ever.
	if inst == "" || (!s.producers.has(inst) && sent > 0) {
		s.drops.drop(inst, "an end of stream from no instance of "+s.producers.service)
		return
	}
	s.mu.Lock()
	f := s.fromLocked(inst)
	f.eos, f.sent = true, sent         // the latest says
	start := !s.ending && s.job == nil // a job input's end is watched from the start
	s.ending = true
	s.mu.Unlock()
	if start {
		go s.waitEnd()
	}
}

// waitEnd waits until every instance of the producer that is still there
// has sent its end of stream (one that has sent nothing at all is waited
// for ghostWait), and, when this is the only instance the consumer stage
// has had (alone), until the messages they say they sent have arrived;
// then, once none of those instances says it is still running (a forged
// end of stream), it ends the input. An end of stream that says fewer messages
// were sent than arrived (forged, or messages were injected), or one a
// producer contradicts, ends the input only once nothing more has arrived
// for eosWait (and, in block flow, the stage has taken all that did), and
// so does one whose messages do not all come (lost while the server was
// away).
func (s *natsSubscriber) waitEnd() {
	sole := s.self.alone()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var ghostSince, stillSince time.Time
	var lastGot uint64
	contradicted, askedUnsure := false, false
	for {
		live := s.producers.live()
		st := s.endState(live, sole)
		now := time.Now()
		// Still: nothing arrived, and in block flow the stage has taken
		// all that did (a stage that is behind holds its producer back).
		if st.got != lastGot || stillSince.IsZero() || (s.block && st.taken < st.got) {
			lastGot, stillSince = st.got, now
		}
		switch {
		case len(st.open) == 0 || !st.ghosts:
			ghostSince = time.Time{}
		case ghostSince.IsZero():
			ghostSince = now
		case now.Sub(ghostSince) >= ghostWait:
			s.log.Warn("ending the input without the instances of its producer that answer discovery but sent nothing", "service", s.producers.service, "instances", st.open)
			st.open = nil
		}
		still := now.Sub(stillSince) >= eosWait
		// An end whose count does not match what arrived is put to its
		// producer once too: one that says it is still running did not
		// send it (counted, whatever the count says).
		unsureAsk := st.unsure && len(st.open) == 0 && !contradicted && !askedUnsure
		askedUnsure = askedUnsure || unsureAsk
		switch {
		case len(st.open) > 0:
		case unsureAsk && s.stillRunning(st.ended):
			contradicted = true
			s.drops.drop(strings.Join(st.ended, ","), "an end of stream from an instance that says it is still running")
		case st.unsure && !still:
		case st.unsure:
			s.log.Warn("ending the input, though the ends of stream of its producer do not match what arrived", "service", s.producers.service,
				"missing", st.missing, "beyond", st.beyond)
			s.finish()
			return
		case !s.stillRunning(st.ended):
			s.finish()
			return
		case !contradicted:
			contradicted = true
			s.drops.drop(strings.Join(st.ended, ","), "an end of stream from an instance that says it is still running")
		case still:
			s.log.Warn("ending the input: nothing has arrived for a while, though its producer says it is still running", "service", s.producers.service)
			s.finish()
			return
		}
		select {
		case <-tick.C:
		case <-s.ctx.Done():
			return
		}
	}
}

// waitJobEnd ends an input in job delivery once a producer instance has
// sent its end of stream, every instance that is there has (what it sent
// is in the stream then), and the edge's consumer has nothing pending or
// unacknowledged: the counts of the ends do not hold when messages are
// done again.
func (s *natsSubscriber) waitJobEnd() {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var asked, checked time.Time
	for {
		// Every 100 ms once an end of stream has come, every second before.
		s.mu.Lock()
		ending := s.ending
		s.mu.Unlock()
		if !ending && time.Since(checked) < time.Second {
			select {
			case <-tick.C:
				continue
			case <-s.job.stop:
				return
			case <-s.ctx.Done():
				return
			}
		}
		checked = time.Now()
		st := s.endState(s.producers.live(), false)
		// An instance that died without its end of stream has not ended
		// the port: what it left undone goes to another, which sends the
		// end once its own input has ended. So some instance must have
		// sent one (until then, none has ended: a restarted producer is
		// waited for).
		if len(st.ended) > 0 && len(st.open) == 0 && s.job.idle(s.ctx) {
			s.finish()
			return
		}
		// An instance of this stage that started after a producer's end of
		// stream (a restarted one) missed it: it asks, once a second.
		if len(st.open) > 0 && time.Since(asked) >= time.Second && s.job.idle(s.ctx) {
			asked = time.Now()
			s.endedMeanwhile(st.open)
		}
		select {
		case <-tick.C:
		case <-s.job.stop:
			return
		case <-s.ctx.Done():
			return
		}
	}
}

// endedMeanwhile records the end of stream of the instances among insts
// that say they have ended (their end came before this input subscribed).
func (s *natsSubscriber) endedMeanwhile(insts []string) {
	states := s.askEnded(insts)
	s.mu.Lock()
	defer s.mu.Unlock()
	for inst, state := range states {
		if state == ackEnded {
			s.fromLocked(inst).eos = true
		}
	}
}

// stillRunning asks the producer instances that sent an end of stream
// whether they have ended (on the credit subject, which they read): an
// instance that answers "running" did not send it. An instance that does
// not answer (gone) has ended.
func (s *natsSubscriber) stillRunning(insts []string) bool {
	for _, state := range s.askEnded(insts) {
		if state == ackRunning {
			return true
		}
	}
	return false
}

// askEnded asks producer instances whether they have ended their port
// and returns what each that answers within 250 ms says (ackRunning or
// ackEnded).
func (s *natsSubscriber) askEnded(insts []string) map[string]string {
	answered := map[string]string{}
	if len(insts) == 0 {
		return answered
	}
	inbox := s.nc.NewRespInbox()
	sub, err := s.nc.SubscribeSync(inbox)
	if err != nil {
		return answered
	}
	defer func() { _ = sub.Unsubscribe() }()
	for _, inst := range insts {
		_ = s.nc.PublishRequest(s.subject+ackSuffix, inbox, []byte(s.ref.id()+" "+s.instance+" "+ackAsk+" "+inst))
	}
	deadline := time.Now().Add(250 * time.Millisecond)
	for len(answered) < len(insts) {
		m, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			return answered
		}
		inst, state, _ := strings.Cut(string(m.Data), " ")
		if slices.Contains(insts, inst) && (state == ackRunning || state == ackEnded) {
			answered[inst] = state
		}
	}
	return answered
}

// endState is where the ends of stream of an input stand.
type endState struct {
	open  []string // live instances that have not sent their end of stream
	ended []string // instances that have sent it
	// ghosts: none of those has sent anything.
	ghosts bool
	// unsure: what the ends of stream say was sent has not all arrived
	// (missing), or less than arrived (beyond); only for a sole consumer.
	unsure          bool
	missing, beyond uint64
	got, taken      uint64 // messages arrived in all, and taken by the stage (block flow)
}

func (s *natsSubscriber) endState(live []string, sole bool) endState {
	pending := 0
	if sole {
		for _, sub := range s.dataSubs() {
			n, _, _ := sub.Pending() // arrived, not yet through onMsg
			pending += n
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := endState{ghosts: true}
	for _, inst := range live {
		if f := s.from[inst]; f == nil || !f.eos {
			st.open = append(st.open, inst)
			st.ghosts = st.ghosts && f == nil
		}
	}
	for _, c := range s.taken {
		st.taken += c.Load()
	}
	for inst, f := range s.from {
		st.got += f.got
		if f.eos {
			st.ended = append(st.ended, inst)
		}
		if !f.eos || !sole {
			continue
		}
		first := uint64(0)
		if f.got > 0 {
			first = f.firstSeq // an input attached to a running stream missed what came before
		}
		want := f.sent - min(first, f.sent)
		switch {
		case f.got > want:
			st.beyond += f.got - want
		case f.got < want:
			st.missing += want - f.got
		}
	}
	st.missing -= min(st.missing, uint64(pending))
	st.unsure = st.missing > 0 || st.beyond > 0
	return st
}

// finish ends the input: what the server has sent is taken first, then
// what the reorder buffer holds, then the end of stream.
func (s *natsSubscriber) finish() {
	s.endOnce.Do(func() {
		if err := s.drainData(s.ctx); err != nil && s.ctx.Err() != nil {
			return
		}
		s.ordered(s.reorder.flush)
		_ = s.ref.q.Push(s.ctx, stage.EOS(s.ref.input), nil)
	})
}

// ended tells the edge's producers that this consumer instance takes
// nothing more, so they stop waiting for its credits.
func (s *natsSubscriber) ended() {
	s.stopAnnouncing()
	s.mu.Lock()
	s.endSent = true
	s.mu.Unlock()
	if s.block {
		_ = s.nc.Publish(s.subject+ackSuffix, []byte(s.ref.id()+" "+s.instance+" "+ackEnd))
	}
}

// took is a block-flow message's ack hook, run when the stage takes it
// from its queue: it credits the producer instance that sent it.
func (s *natsSubscriber) took(producer string) {
	s.mu.Lock()
	c := s.taken[producer]
	if c == nil {
		c = &atomic.Uint64{}
		s.taken[producer] = c
	}
	s.mu.Unlock()
	if n := c.Add(1); n%s.ackEvery == 0 {
		s.credit(producer, n)
	}
}

func (s *natsSubscriber) credit(producer string, n uint64) {
	s.credits.Add(1)
	_ = s.nc.Publish(s.subject+ackSuffix, []byte(s.ref.id()+" "+s.instance+" "+strconv.FormatUint(n, 10)+" "+producer))
}

// reconnected runs when a connection of the run is back after the server
// was away: credits sent meanwhile may be lost, so they go again (or the
// end, once the input has ended).
func (s *natsSubscriber) reconnected() {
	if !s.block {
		return
	}
	s.mu.Lock()
	ended, detached := s.endSent, s.detached
	counts := s.takenLocked()
	s.mu.Unlock()
	switch {
	case detached:
	case ended:
		s.ended()
	default:
		for inst, n := range counts {
			s.credit(inst, n)
		}
	}
}

// takenLocked is how many messages of each producer instance the stage
// has taken. Called with mu held.
func (s *natsSubscriber) takenLocked() map[string]uint64 {
	counts := make(map[string]uint64, len(s.taken))
	for inst, c := range s.taken {
		counts[inst] = c.Load()
	}
	return counts
}

func (s *natsSubscriber) detach() {
	s.stopAnnouncing()
	if s.job != nil {
		s.job.stopTaking()
	}
	s.mu.Lock()
	s.detached = true
	s.mu.Unlock()
	if s.unhook != nil {
		s.unhook()
	}
	for _, sub := range s.dataSubs() {
		_ = sub.Unsubscribe()
	}
	_ = s.eosSub.Unsubscribe()
}

// drain makes sure the server has what the producer (a stage of this
// process) has written, then unsubscribes once the messages the server
// had sent before are in the queue.
func (s *natsSubscriber) drain(ctx context.Context) error {
	_ = s.eosSub.Unsubscribe()
	s.stopAnnouncing()
	if s.direct != nil {
		s.leave()
	}
	if s.producer != nil {
		if err := flushConn(ctx, s.producer, s.subject); err != nil {
			return err
		}
	}
	if err := s.drainData(ctx); err != nil {
		return err
	}
	s.ordered(s.reorder.flush)
	return nil
}

// leave tells the input's producers that this instance is going, so they
// send it nothing more on its own subject, and waits for their answers
// (each comes after what that producer sent it alone), at most a second,
// or a quarter of one after the last answer.
func (s *natsSubscriber) leave() {
	inbox := s.nc.NewRespInbox()
	sub, err := s.nc.SubscribeSync(inbox)
	if err != nil {
		return
	}
	defer func() { _ = sub.Unsubscribe() }()
	if s.nc.PublishRequest(s.subject+ackSuffix, inbox, []byte(s.ref.id()+" "+s.instance+" "+ackLeaving)) != nil {
		return
	}
	deadline := time.Now().Add(time.Second)
	for wait := time.Second; ; wait = 250 * time.Millisecond {
		if _, err := sub.NextMsg(min(wait, time.Until(deadline))); err != nil {
			return
		}
	}
}

// joiner reassembles the chunked messages of an input: one partial
// message per producer instance, for at most maxProducerStreams of them,
// each of at most envelope.DefaultMaxMessageBytes; a partial message is
// dropped when a whole message of its producer overtakes it (a producer
// sends a message's parts one after the other) or when it is older than
// maxPartialAge.
type joiner struct {
	r     map[string]*envelope.Reassembler
	since map[string]time.Time // when its partial message began
}

// add takes one chunk of inst's; it returns the message once whole.
func (j *joiner) add(inst, header string, data []byte, now time.Time) ([]byte, error) {
	id, idx, n, err := envelope.ParseChunkHeader(header)
	if err != nil {
		return nil, err
	}
	j.expire(now)
	r := j.r[inst]
	if r == nil {
		if len(j.r) >= maxProducerStreams {
			return nil, fmt.Errorf("%w: chunks from more than %d producers", envelope.ErrChunk, maxProducerStreams)
		}
		if j.r == nil {
			j.r, j.since = map[string]*envelope.Reassembler{}, map[string]time.Time{}
		}
		r = &envelope.Reassembler{}
		j.r[inst] = r
	}
	if idx == 0 {
		j.since[inst] = now
	}
	out, err := r.Add(envelope.Chunk{ID: id, Index: idx, Count: n, Data: data})
	if r.Pending() == 0 {
		delete(j.r, inst)
		delete(j.since, inst)
	}
	return out, err
}

// whole says a whole message of inst's arrived: a partial message of its
// is lost. It reports whether there was one.
func (j *joiner) whole(inst string) bool {
	if _, ok := j.r[inst]; !ok {
		return false
	}
	delete(j.r, inst)
	delete(j.since, inst)
	return true
}

// expire drops the partial messages older than maxPartialAge.
func (j *joiner) expire(now time.Time) {
	for inst, t := range j.since {
		if now.Sub(t) > maxPartialAge {
			delete(j.r, inst)
			delete(j.since, inst)
		}
	}
}

// instanceSet is what the instances of a stage's micro service say they
// are (their "instance" metadata), asked with a micro PING.
type instanceSet struct {
	nc      *nats.Conn
	service string
	local   string        // the only instance, when the stage runs in this process
	quiet   time.Duration // how long a PING waits after the last answer

	mu     sync.Mutex
	known  map[string]bool // every instance ever seen
	asked  time.Time       // when every instance last answered
	asking bool            // knows has an ask under way
}

func newInstanceSet(nc *nats.Conn, service, local string) *instanceSet {
	return &instanceSet{nc: nc, service: service, local: local, quiet: 300 * time.Millisecond, known: map[string]bool{}}
}

// has reports whether inst is (or was) an instance of the service; an
// unknown one makes it ask again, at most 5 times a second.
func (p *instanceSet) has(inst string) bool {
	if p.local != "" {
		return inst == p.local
	}
	p.mu.Lock()
	ok, stale := p.known[inst], time.Since(p.asked) > 200*time.Millisecond
	p.mu.Unlock()
	if ok || !stale {
		return ok
	}
	return slices.Contains(p.ask(inst, nil), inst)
}

// knows reports whether inst is (or was) an instance of the service
// without waiting: an unknown one makes it ask in the background (one ask
// at a time, at most 5 a second), so that a later call may know it.
func (p *instanceSet) knows(inst string) bool {
	if p.local != "" {
		return inst == p.local
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.known[inst] {
		return true
	}
	if !p.asking && time.Since(p.asked) > 200*time.Millisecond {
		p.asking = true
		go func() {
			p.ask("", nil)
			p.mu.Lock()
			p.asking = false
			p.mu.Unlock()
		}()
	}
	return false
}

// live asks which instances are there now.
func (p *instanceSet) live() []string {
	if p.local != "" {
		return []string{p.local}
	}
	return p.ask("", nil)
}

// alone reports whether the service has had one instance at most, as far
// as this set has seen: one there now, and none other ever. An instance
// that has had a peer (gone since: killed, or scaled down) took only part
// of the stream, and cannot count on every message its producer sent.
func (p *instanceSet) alone() bool {
	if p.local != "" {
		return true
	}
	live := p.ask("", nil)
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(live) <= 1 && len(p.known) <= 1
}

// ask pings the service and records the instances that answer; it
// returns as soon as want answers (a new instance's first message waits
// for one round trip, not for the quiet time after the last answer), or
// done is closed.
func (p *instanceSet) ask(want string, done <-chan struct{}) []string {
	var wanted []string
	if want != "" {
		wanted = []string{want}
	}
	insts := pingInstances(p.nc, p.service, p.quiet, wanted, done)
	p.mu.Lock()
	defer p.mu.Unlock()
	if (want == "" || !slices.Contains(insts, want)) && !closed(done) {
		// Every answer is in: an instance not among them is not there
		// (for 200 ms). After stopping at want, others may still answer.
		p.asked = time.Now()
	}
	p.recordLocked(insts)
	return insts
}

// recordLocked records instances that answered. Called with mu held.
func (p *instanceSet) recordLocked(insts []string) {
	for _, i := range insts {
		p.known[i] = true
	}
}

// closed reports whether done (nil: never) is closed.
func closed(done <-chan struct{}) bool {
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// pingInstances sends a micro PING to a service and collects the
// "instance" metadata of those that answer, until every one of want has
// answered (none: until quiet after the last answer) or done is closed.
func pingInstances(nc *nats.Conn, service string, quiet time.Duration, want []string, done <-chan struct{}) []string {
	missing := map[string]bool{}
	for _, w := range want {
		missing[w] = true
	}
	stop := func(p micro.Ping) bool {
		delete(missing, p.Metadata["instance"])
		return len(want) > 0 && len(missing) == 0
	}
	var out []string
	for _, ping := range pingServices(nc, pingSubject(service), quiet, stop, done) {
		if i := ping.Metadata["instance"]; i != "" {
			out = append(out, i)
		}
	}
	return out
}

// pingService is pingServices to one service's PING subject, collecting
// every answer.
func pingService(nc *nats.Conn, service string, quiet time.Duration) []micro.Ping {
	return pingServices(nc, pingSubject(service), quiet, nil, nil)
}

// pingSubject is the micro PING subject of one service.
func pingSubject(service string) string { return micro.APIPrefix + ".PING." + service }

// pingServices sends a micro PING on subject and collects the answers,
// waiting at most quiet after the last one, or until stop (when not nil)
// says an answer is the one wanted, or done (when not nil) is closed.
func pingServices(nc *nats.Conn, subject string, quiet time.Duration, stop func(micro.Ping) bool, done <-chan struct{}) []micro.Ping {
	inbox := nc.NewRespInbox()
	answers := make(chan *nats.Msg, 256)
	sub, err := nc.ChanSubscribe(inbox, answers)
	if err != nil {
		return nil
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(subject, inbox, nil); err != nil {
		return nil
	}
	var out []micro.Ping
	deadline := time.NewTimer(5 * quiet)
	defer deadline.Stop()
	wait := time.NewTimer(quiet)
	defer wait.Stop()
	for {
		select {
		case m := <-answers:
			var ping micro.Ping
			if json.Unmarshal(m.Data, &ping) != nil {
				continue
			}
			out = append(out, ping)
			if stop != nil && stop(ping) {
				return out
			}
			wait.Reset(quiet)
		case <-wait.C:
			return out
		case <-deadline.C:
			return out
		case <-done:
			return out
		}
	}
}

// reorder puts back in order, by their Src, the messages of a stream that
// several producer instances send: a message waits for those before it
// until limit messages wait (0: no limit) or wait has passed (a message dropped
// upstream leaves a gap for good; an input attached to a running stream
// starts with one).
type reorder struct {
	active bool             // several producer instances were seen: until then messages pass in order
	dup    func(*stage.Msg) // when set, takes a message passed already (job delivery: done twice) instead of letting it on
	// skipped are the seqs a gap was given up on (when dup is set): one of
	// them that comes late goes on, out of order, and is not a duplicate.
	skipped map[string]map[uint64]bool
	wait    time.Duration // how long a gap may hold messages back
	limit   int
	next    map[string]uint64
	held    map[string][]*stage.Msg
	since   map[string]time.Time
	lost    uint64 // messages given up on
	// last is, per stream, the highest seq (plus one) each producer
	// instance has sent: an instance sends its messages in order, so a gap
	// below what every instance still there has passed will never fill
	// once one of them is gone (hopeless).
	last map[string]map[string]uint64
	gone map[string]bool // producer instances found gone
}

func newReorder(limit int, wait time.Duration) *reorder {
	return &reorder{limit: limit, wait: wait, next: map[string]uint64{}, held: map[string][]*stage.Msg{}, since: map[string]time.Time{},
		last: map[string]map[string]uint64{}}
}

// add takes a message and returns those that may go on, in order. A nil
// reorder (an input whose producer runs here) lets everything through.
func (r *reorder) add(e *stage.Msg, inst string, now time.Time) []*stage.Msg {
	if r == nil || e.Src == nil {
		return []*stage.Msg{e}
	}
	st, seq := e.Src.Stream, e.Src.Seq
	if r.last[st] == nil {
		r.last[st] = map[string]uint64{}
	}
	r.last[st][inst] = max(r.last[st][inst], seq+1)
	delete(r.gone, inst) // it was only slow to answer
	if !r.active {
		r.next[st] = max(r.next[st], seq+1)
		return []*stage.Msg{e}
	}
	if seq < r.next[st] {
		if r.dup != nil && !r.unskip(st, seq) {
			r.dup(e)
			return nil
		}
		return []*stage.Msg{e} // late: on at once rather than never
	}
	h := r.held[st]
	if len(h) == 0 {
		r.since[st] = now
	}
	i, found := slices.BinarySearchFunc(h, seq, func(x *stage.Msg, q uint64) int {
		switch {
		case x.Src.Seq < q:
			return -1
		case x.Src.Seq > q:
			return 1
		}
		return 0
	})
	if found && r.dup != nil {
		r.dup(e)
		return nil
	}
	h = slices.Insert(h, i, e)
	if !r.isNext(st, h[0]) && ((r.limit > 0 && len(h) > r.limit) || now.Sub(r.since[st]) > r.wait) {
		r.giveUp(st, h[0].Src.Seq)
	}
	r.held[st] = h
	return r.release(st, now)
}

// release passes on the held messages of stream st that are next, giving
// up the hopeless gaps on the way (see last).
func (r *reorder) release(st string, now time.Time) []*stage.Msg {
	var out []*stage.Msg
	h := r.held[st]
	for len(h) > 0 {
		if !r.isNext(st, h[0]) {
			bound := r.hopeless(st)
			if bound <= r.next[st] {
				break
			}
			r.giveUp(st, min(h[0].Src.Seq, bound))
			continue
		}
		out = append(out, h[0])
		r.next[st] = h[0].Src.Seq + 1
		h = h[1:]
		r.since[st] = now
	}
	r.held[st] = h
	return out
}

// hopeless is the seq of stream st below which no message can come any
// more: once a producer instance is gone, the least of what the others
// have passed (every seq, when none is left); 0 while none is gone.
func (r *reorder) hopeless(st string) uint64 {
	if len(r.gone) == 0 {
		return 0
	}
	bound, live := uint64(0), false
	for inst, last := range r.last[st] {
		if r.gone[inst] {
			continue
		}
		if !live || last < bound {
			bound, live = last, true
		}
	}
	if !live {
		return ^uint64(0)
	}
	return bound
}

// markGone records that a producer instance is gone and passes on what
// no longer waits for it.
func (r *reorder) markGone(inst string) []*stage.Msg {
	if r.gone == nil {
		r.gone = map[string]bool{}
	}
	r.gone[inst] = true
	var out []*stage.Msg
	now := time.Now()
	for st := range r.held {
		out = append(out, r.release(st, now)...)
	}
	return out
}

// maxSkipped bounds the seqs a reorder remembers it gave up on.
const maxSkipped = 4096

// giveUp gives up on the gap of stream st before seq; with dup set it
// remembers the seqs left out (at most maxSkipped).
func (r *reorder) giveUp(st string, seq uint64) {
	r.lost += seq - r.next[st]
	if r.dup != nil {
		if r.skipped == nil {
			r.skipped = map[string]map[uint64]bool{}
		}
		if r.skipped[st] == nil {
			r.skipped[st] = map[uint64]bool{}
		}
		for q := r.next[st]; q < seq && len(r.skipped[st]) < maxSkipped; q++ {
			r.skipped[st][q] = true
		}
	}
	r.next[st] = seq
}

// unskip reports whether seq of stream st is one a gap was given up on,
// and forgets it.
func (r *reorder) unskip(st string, seq uint64) bool {
	if !r.skipped[st][seq] {
		return false
	}
	delete(r.skipped[st], seq)
	return true
}

// waiting reports whether messages wait for a gap to fill.
func (r *reorder) waiting() bool {
	if r == nil {
		return false
	}
	for _, h := range r.held {
		if len(h) > 0 {
			return true
		}
	}
	return false
}

// skip gives up on the gaps of streams that have waited wait.
func (r *reorder) skip() []*stage.Msg {
	var out []*stage.Msg
	now := time.Now()
	for st, h := range r.held {
		if len(h) == 0 || now.Sub(r.since[st]) < r.wait {
			continue
		}
		r.giveUp(st, h[0].Src.Seq)
		out = append(out, r.release(st, now)...)
	}
	return out
}

// isNext reports whether e may go on in stream st: it is the seq due, or
// says the one before it has gone on (or was given up) already, the seqs
// in between dropped upstream (Origin.After).
func (r *reorder) isNext(st string, e *stage.Msg) bool {
	seq, next := e.Src.Seq, r.next[st]
	return seq == next || (seq > next && e.Src.After != 0 && e.Src.After <= next)
}

// flush returns every message held, in order, giving up (and counting)
// the gaps they waited for: the input ends, nothing more comes.
func (r *reorder) flush() []*stage.Msg {
	if r == nil {
		return nil
	}
	var out []*stage.Msg
	for st, h := range r.held {
		for _, e := range h {
			if !r.isNext(st, e) {
				r.giveUp(st, e.Src.Seq)
			}
			r.next[st] = e.Src.Seq + 1
		}
		out = append(out, h...)
		delete(r.held, st)
	}
	return out
}
