package pipeline

import (
	"maps"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
)

const (
	// parkLimit is how many messages an input holds from producer
	// instances its service has not answered for yet; more are dropped.
	parkLimit = 64
	// parkQuiet is how long the PING that asks for them waits after the
	// last answer (at most five times that in all): a loaded machine can
	// take a few hundred milliseconds to answer, and nothing waits on it.
	parkQuiet = time.Second
)

// parked is a data message of a producer instance not known yet.
type parked struct {
	inst   string
	header nats.Header
	data   []byte
	at     time.Time
}

// parking holds the messages of producer instances that the producer's
// service has not answered for yet (one that has just started, or whose
// answer was slow), while one PING in the background asks for them: a
// real instance's messages go on, in order, once it answers; the others
// are dropped and counted. Nothing waits on the ask, so a client sending
// forged instances costs a bounded queue, not a stalled input. Guarded by
// the subscriber's recvMu.
type parking struct {
	held []parked
	from map[string]int // instance -> messages held
	done chan struct{}  // closed when the background ask ends; nil when none runs
}

// full reports whether the parking has no room.
func (p *parking) full() bool {
	return len(p.held) >= parkLimit
}

// park holds a message of inst and starts the ask when none runs. Called
// with recvMu held.
func (s *natsSubscriber) park(inst string, header nats.Header, data []byte) {
	p := &s.parking
	if p.from == nil {
		p.from = map[string]int{}
	}
	p.held = append(p.held, parked{inst: inst, header: header, data: data, at: time.Now()})
	p.from[inst]++
	if p.done == nil {
		p.done = make(chan struct{})
		go s.resolve(p.done)
	}
}

// mustPark reports whether a message of inst waits: its instance is not
// known yet, or earlier messages of it wait (order is kept). Called with
// recvMu held.
func (s *natsSubscriber) mustPark(inst string) bool {
	return s.parking.from[inst] > 0 || !s.producers.seen(inst)
}

// resolve asks the producer's service for the instances of the held
// messages until none is held: those whose instance answered go on, those
// held before an ask that did not hear their instance are dropped.
func (s *natsSubscriber) resolve(done chan struct{}) {
	defer close(done)
	for {
		s.recvMu.Lock()
		want := s.parkedInstances()
		s.recvMu.Unlock()
		started := time.Now()
		_ = s.producers.askAll(want, parkQuiet, s.ctx.Done())
		s.recvMu.Lock()
		s.unpark(started, s.ctx.Err() != nil)
		if len(s.parking.held) == 0 {
			s.parking.done = nil
			s.recvMu.Unlock()
			return
		}
		s.recvMu.Unlock()
	}
}

// parkedInstances are the instances of the held messages. Called with
// recvMu held.
func (s *natsSubscriber) parkedInstances() []string {
	return slices.Collect(maps.Keys(s.parking.from))
}

// unpark passes on the held messages of known instances, in order, and
// drops those held since before started whose instance is still unknown
// (all of them once the run ends). Called with recvMu held.
func (s *natsSubscriber) unpark(started time.Time, stop bool) {
	p := &s.parking
	held := p.held
	p.held, p.from = nil, map[string]int{}
	for _, m := range held {
		switch {
		case stop:
			s.drops.drop(m.inst, "the run ended while asking whether it is an instance of "+s.producers.service)
		case s.producers.seen(m.inst) && p.from[m.inst] == 0:
			s.accept(m.inst, m.header, m.data, nil, nil)
		case m.at.Before(started) && !s.producers.seen(m.inst):
			s.drops.drop(m.inst, "not an instance of "+s.producers.service)
		default:
			p.held = append(p.held, m)
			p.from[m.inst]++
		}
	}
}

// waitParked waits until the held messages have gone on or been dropped.
func (s *natsSubscriber) waitParked(stop <-chan struct{}) {
	s.recvMu.Lock()
	done := s.parking.done
	s.recvMu.Unlock()
	if done == nil {
		return
	}
	select {
	case <-done:
	case <-stop:
	}
}

// seen reports whether inst is (or was) an instance of the service,
// without asking.
func (p *instanceSet) seen(inst string) bool {
	if p.local != "" {
		return inst == p.local
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.known[inst]
}

// askAll pings the service and records the instances that answer, and
// returns them; it returns once every one of want has answered, quiet
// after the last answer, or when done is closed.
func (p *instanceSet) askAll(want []string, quiet time.Duration, done <-chan struct{}) []string {
	if p.local != "" {
		return []string{p.local}
	}
	insts := pingInstances(p.nc, p.service, quiet, want, done)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.recordLocked(insts)
	return insts
}
