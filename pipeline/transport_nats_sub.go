package pipeline

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// Bounds of what an input takes from the bus, whoever sends it.
const (
	maxPendingMsgs     = 1 << 16 // messages the client holds for one subscription
	maxPendingBytes    = 1 << 30
	maxProducerStreams = 64 // producer instances an input reassembles chunks for
	maxWarnedSources   = 64 // sources whose bad messages are logged (once each)
)

// natsSubscriber feeds one input edge from its subject into the stage
// queue, and sends credits back as the stage takes messages. It takes data
// and ends of stream only from the instances of its producer stage's
// service; whatever else arrives is dropped and counted.
type natsSubscriber struct {
	nc        *nats.Conn
	subject   string
	ref       consumerRef
	instance  string // this process's
	sub       *nats.Subscription
	eosSub    *nats.Subscription
	producer  *nats.Conn // the producer's connection, when it is in this process
	producers *producerSet
	block     bool
	ackEvery  uint64
	ctx       context.Context
	log       *slog.Logger

	// Used only by the data subscription's callback.
	reasm   map[string]*envelope.Reassembler
	sources map[string]bool // producer instances seen, until the reorder buffer is on
	self    string          // this stage's service
	// orderMu guards the reorder buffer and its gap timer.
	orderMu  sync.Mutex
	reorder  *reorder
	gapTimer *time.Timer

	mu      sync.Mutex
	taken   map[string]*atomic.Uint64 // producer instance -> messages taken
	warned  map[string]bool
	eosFrom map[string]bool
	ending  bool
	dropped atomic.Int64
	endOnce sync.Once
}

func (s *natsSubscriber) subscribe(queue string) error {
	sub, err := s.nc.QueueSubscribe(s.subject, queue, s.onMsg)
	if err != nil {
		return fmt.Errorf("%w: subscribing to %s failed: %w", ErrTransport, s.subject, err)
	}
	// Credits bound what the pipeline's producers send; these bound the rest.
	if err := sub.SetPendingLimits(maxPendingMsgs, maxPendingBytes); err != nil {
		return fmt.Errorf("%w: setting the pending limits of %s failed: %w", ErrTransport, s.subject, err)
	}
	eos, err := s.nc.Subscribe(s.subject+eosSuffix, s.onEOS)
	if err != nil {
		_ = sub.Unsubscribe()
		return fmt.Errorf("%w: subscribing to %s%s failed: %w", ErrTransport, s.subject, eosSuffix, err)
	}
	s.sub, s.eosSub, s.reasm, s.sources = sub, eos, map[string]*envelope.Reassembler{}, map[string]bool{}
	return nil
}

// Counts reports the messages dropped (pipeline.EventCounter).
func (s *natsSubscriber) Counts() map[string]int64 {
	return map[string]int64{"dropped_messages": s.dropped.Load()}
}

// drop counts a message that is not the pipeline's, logging the first of
// each source.
func (s *natsSubscriber) drop(source, why string) {
	s.dropped.Add(1)
	s.mu.Lock()
	first := !s.warned[source] && len(s.warned) < maxWarnedSources
	if first {
		if s.warned == nil {
			s.warned = map[string]bool{}
		}
		s.warned[source] = true
	}
	s.mu.Unlock()
	if first {
		s.log.Warn("dropped a message that is not the pipeline's (further ones from this source are only counted)", "from", source, "why", why)
	}
}

func (s *natsSubscriber) onMsg(m *nats.Msg) {
	inst := m.Header.Get(HeaderInstance)
	if inst == "" {
		s.drop("unknown", "no "+HeaderInstance+" header")
		return
	}
	if !s.producers.has(inst) {
		s.drop(inst, "not an instance of "+s.producers.service)
		return
	}
	data := m.Data
	if h := m.Header.Get(envelope.HeaderChunk); h != "" {
		r := s.reasm[inst]
		if r == nil {
			if len(s.reasm) >= maxProducerStreams {
				s.drop(inst, "too many producers sending chunks")
				return
			}
			r = &envelope.Reassembler{}
			s.reasm[inst] = r
		}
		id, idx, n, err := envelope.ParseChunkHeader(h)
		if err == nil {
			data, err = r.Add(envelope.Chunk{ID: id, Index: idx, Count: n, Data: m.Data})
		}
		if err != nil {
			s.drop(inst, err.Error())
			return
		}
		if data == nil {
			return
		}
	}
	e, err := envelope.Unmarshal(data)
	switch {
	case err != nil:
		s.drop(inst, err.Error())
		return
	case e.Kind == envelope.KindEOS:
		s.drop(inst, "an end of stream on the data subject")
		return
	}
	e.Input, e.From = s.ref.input, inst
	if s.reorder != nil && !s.reorder.active && !s.sources[inst] {
		s.sources[inst] = true
		// Outputs of several producer instances (there at the first
		// message, or a second one seen later) are put back in order,
		// unless this instance takes only part of them (its queue group
		// has others): then there is no whole order to restore.
		if len(s.sources) == 2 || (len(s.sources) == 1 && len(s.producers.live()) > 1) {
			alone := len(pingInstances(s.nc, s.self, 200*time.Millisecond)) <= 1
			s.orderMu.Lock()
			s.reorder.active = alone
			s.orderMu.Unlock()
		}
	}
	s.ordered(func() []*envelope.Envelope {
		if s.reorder == nil {
			return []*envelope.Envelope{e}
		}
		return s.reorder.add(e, time.Now())
	})
}

// ordered pushes, in order, what f takes from the reorder buffer, and
// arms the gap timer while messages wait there.
func (s *natsSubscriber) ordered(f func() []*envelope.Envelope) {
	if s.reorder == nil {
		for _, out := range f() {
			_ = s.ref.q.Push(s.ctx, out, nil)
		}
		return
	}
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
			s.ordered(func() []*envelope.Envelope { return s.reorder.skip() })
		})
	}
}

// onEOS records a producer instance's end of stream. The input ends once
// every instance of the producer's service that is still there has ended.
func (s *natsSubscriber) onEOS(m *nats.Msg) {
	inst := m.Header.Get(HeaderInstance)
	if e, err := envelope.Unmarshal(m.Data); err != nil || e.Kind != envelope.KindEOS {
		s.drop(inst, "not an end of stream on the end subject")
		return
	}
	if inst == "" {
		s.drop(inst, "an end of stream from no instance")
		return
	}
	// An instance that sent its end and left before this input asked who
	// is there is unknown, yet its end counts: the input ends only once
	// every instance still there has ended too, so a made-up one changes
	// nothing while a producer runs.
	_ = s.producers.has(inst)
	s.mu.Lock()
	if s.eosFrom == nil {
		s.eosFrom = map[string]bool{}
	}
	s.eosFrom[inst] = true
	start := !s.ending
	s.ending = true
	s.mu.Unlock()
	if start {
		go s.waitEnd()
	}
}

// waitEnd waits until no instance of the producer that has not sent its
// end of stream is left, then ends the input.
func (s *natsSubscriber) waitEnd() {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		live := s.producers.live()
		s.mu.Lock()
		done := true
		for _, inst := range live {
			done = done && s.eosFrom[inst]
		}
		s.mu.Unlock()
		if done {
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

// finish ends the input: what the server has sent is taken first, then
// what the reorder buffer holds, then the end of stream.
func (s *natsSubscriber) finish() {
	s.endOnce.Do(func() {
		closed := s.sub.StatusChanged(nats.SubscriptionClosed)
		if s.sub.Drain() == nil {
			select {
			case <-closed:
			case <-s.ctx.Done():
				return
			}
		}
		if s.reorder != nil {
			s.ordered(s.reorder.flush)
		}
		_ = s.ref.q.Push(s.ctx, &envelope.Envelope{V: envelope.Version, Kind: envelope.KindEOS, Input: s.ref.input}, nil)
	})
}

// ended tells the edge's producers that this consumer instance takes
// nothing more, so they stop waiting for its credits.
func (s *natsSubscriber) ended() {
	if s.block {
		_ = s.nc.Publish(s.subject+ackSuffix, []byte(s.ref.id()+" "+s.instance+" "+ackEnd))
	}
}

// took is called when the stage takes a message of this input from its
// queue: it credits the producer instance that sent it.
func (s *natsSubscriber) took(e *envelope.Envelope) {
	if !s.block || e.From == "" {
		return
	}
	s.mu.Lock()
	c := s.taken[e.From]
	if c == nil {
		c = &atomic.Uint64{}
		s.taken[e.From] = c
	}
	s.mu.Unlock()
	if n := c.Add(1); n%s.ackEvery == 0 {
		_ = s.nc.Publish(s.subject+ackSuffix, []byte(s.ref.id()+" "+s.instance+" "+strconv.FormatUint(n, 10)+" "+e.From))
	}
}

func (s *natsSubscriber) detach() {
	_ = s.sub.Unsubscribe()
	_ = s.eosSub.Unsubscribe()
}

// drain makes sure the server has what the producer (a stage of this
// process) has written, then unsubscribes once the messages the server
// had sent before are in the queue.
func (s *natsSubscriber) drain(ctx context.Context) error {
	_ = s.eosSub.Unsubscribe()
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
	case <-ctx.Done():
		return ctx.Err()
	}
	if s.reorder != nil {
		s.ordered(s.reorder.flush)
	}
	return nil
}

// producerSet is what the instances of a producer stage's micro service
// say they are (their "instance" metadata), asked with a micro PING.
type producerSet struct {
	nc      *nats.Conn
	service string
	local   string // the only instance, when the producer is in this process

	mu    sync.Mutex
	known map[string]bool // every instance ever seen
	asked time.Time
}

func newProducerSet(nc *nats.Conn, service, local string) *producerSet {
	return &producerSet{nc: nc, service: service, local: local, known: map[string]bool{}}
}

// has reports whether inst is (or was) an instance of the service; an
// unknown one makes it ask again, at most 5 times a second.
func (p *producerSet) has(inst string) bool {
	if p.local != "" {
		return inst == p.local
	}
	p.mu.Lock()
	ok, stale := p.known[inst], time.Since(p.asked) > 200*time.Millisecond
	p.mu.Unlock()
	if ok || !stale {
		return ok
	}
	return slices.Contains(p.ask(inst), inst)
}

// live asks which instances are there now.
func (p *producerSet) live() []string { return p.ask("") }

// ask pings the service; it stops early once want (when set) answers.
func (p *producerSet) ask(want string) []string {
	if p.local != "" {
		return []string{p.local}
	}
	insts := pingUntil(p.nc, p.service, 300*time.Millisecond, want)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.asked = time.Now()
	for _, i := range insts {
		p.known[i] = true
	}
	return insts
}

// pingInstances sends a micro PING to a service and collects the
// "instance" metadata of those that answer, waiting at most quiet after
// the last answer.
func pingInstances(nc *nats.Conn, service string, quiet time.Duration) []string {
	return pingUntil(nc, service, quiet, "")
}

// pingUntil is pingInstances that returns as soon as want answers.
func pingUntil(nc *nats.Conn, service string, quiet time.Duration, want string) []string {
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(micro.APIPrefix+".PING."+service, inbox, nil); err != nil {
		return nil
	}
	var out []string
	deadline := time.Now().Add(5 * quiet)
	for time.Now().Before(deadline) {
		m, err := sub.NextMsg(quiet)
		if err != nil {
			break
		}
		var ping micro.Ping
		if json.Unmarshal(m.Data, &ping) == nil && ping.Metadata["instance"] != "" {
			out = append(out, ping.Metadata["instance"])
			if want != "" && ping.Metadata["instance"] == want {
				break
			}
		}
	}
	return out
}

// reorder puts back in order, by their Src, the messages of a stream that
// several producer instances send: a message waits for those before it
// until limit messages wait (0: no limit) or wait has passed (a message dropped
// upstream leaves a gap for good; an input attached to a running stream
// starts with one).
type reorder struct {
	active bool // two producer instances were seen: until then messages pass in order
	limit  int
	wait   time.Duration // how long a gap may hold messages back
	next   map[string]uint64
	held   map[string][]*envelope.Envelope
	since  map[string]time.Time
}

func newReorder(limit int, wait time.Duration) *reorder {
	return &reorder{limit: limit, wait: wait, next: map[string]uint64{}, held: map[string][]*envelope.Envelope{}, since: map[string]time.Time{}}
}

// add takes a message and returns those that may go on, in order.
func (r *reorder) add(e *envelope.Envelope, now time.Time) []*envelope.Envelope {
	if e.Src == nil {
		return []*envelope.Envelope{e}
	}
	st, seq := e.Src.Stream, e.Src.Seq
	if !r.active {
		r.next[st] = max(r.next[st], seq+1)
		return []*envelope.Envelope{e}
	}
	if seq < r.next[st] {
		return []*envelope.Envelope{e} // late: on at once rather than never
	}
	h := r.held[st]
	if len(h) == 0 {
		r.since[st] = now
	}
	i, _ := slices.BinarySearchFunc(h, seq, func(x *envelope.Envelope, q uint64) int {
		switch {
		case x.Src.Seq < q:
			return -1
		case x.Src.Seq > q:
			return 1
		}
		return 0
	})
	h = slices.Insert(h, i, e)
	if h[0].Src.Seq != r.next[st] && ((r.limit > 0 && len(h) > r.limit) || now.Sub(r.since[st]) > r.wait) {
		r.next[st] = h[0].Src.Seq // give up on the gap
	}
	var out []*envelope.Envelope
	for len(h) > 0 && h[0].Src.Seq == r.next[st] {
		out = append(out, h[0])
		h = h[1:]
		r.next[st]++
		r.since[st] = now
	}
	r.held[st] = h
	return out
}

// waiting reports whether messages wait for a gap to fill.
func (r *reorder) waiting() bool {
	for _, h := range r.held {
		if len(h) > 0 {
			return true
		}
	}
	return false
}

// skip gives up on the gaps of streams that have waited gapWait.
func (r *reorder) skip() []*envelope.Envelope {
	var out []*envelope.Envelope
	now := time.Now()
	for st, h := range r.held {
		if len(h) == 0 || now.Sub(r.since[st]) < r.wait {
			continue
		}
		r.next[st] = h[0].Src.Seq
		for len(h) > 0 && h[0].Src.Seq == r.next[st] {
			out = append(out, h[0])
			h = h[1:]
			r.next[st]++
		}
		r.held[st], r.since[st] = h, now
	}
	return out
}

// flush returns every message held, in order.
func (r *reorder) flush() []*envelope.Envelope {
	var out []*envelope.Envelope
	for st, h := range r.held {
		out = append(out, h...)
		delete(r.held, st)
	}
	return out
}
