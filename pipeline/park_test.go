package pipeline

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// slowPing answers the PING of stage's service for inst after delay, as a
// process on a loaded machine does.
func (r *routeRig) slowPing(stageName, inst string, delay time.Duration) {
	nc := r.conn()
	svc := ServiceName("rt", stageName)
	answer, err := json.Marshal(micro.Ping{Type: micro.PingResponseType,
		ServiceIdentity: micro.ServiceIdentity{Name: svc, ID: "slow-" + inst, Version: "1.0.0", Metadata: map[string]string{"instance": inst}}})
	if err != nil {
		r.t.Fatal(err)
	}
	if _, err := nc.Subscribe(pingSubject(svc), func(m *nats.Msg) {
		time.AfterFunc(delay, func() { _ = m.Respond(answer) })
	}); err != nil {
		r.t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		r.t.Fatal(err)
	}
}

// dropped is what an input of the rig has dropped.
func (r *routeRig) dropped(inst string) int64 {
	return r.ins[inst].(*natsSubscriber).drops.n.Load()
}

// TestSlowPingAnswerLosesNothing: the producer's service answers its PING
// late (700 ms, more than an ask waits for the first answer), as a busy
// process on a loaded machine does. Its messages reach the consumer
// anyway, all of them and in order, once it has answered: they wait while
// the consumer asks, instead of being dropped as not the pipeline's (make
// test saw 47 of 49 frames when they were).
func TestSlowPingAnswerLosesNothing(t *testing.T) {
	const window, msgs = 4, 30
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	r := newRouteRig(t, window)
	if err := r.svcs["prod"].Stop(); err != nil {
		t.Fatal(err)
	}
	r.slowPing("g", "prod", 700*time.Millisecond)
	r.consumer(ctx, "a", 2*msgs)
	r.publisher(1)
	got := make(chan int, msgs)
	go func() {
		for {
			e, err := r.queues["a"].Pop(ctx)
			if err != nil {
				return
			}
			if e.Kind == envelope.KindData {
				got <- int(e.Seq)
			}
			e.Ack()
		}
	}()
	for i := range msgs {
		if err := r.publish(ctx, i); err != nil {
			t.Fatal(err)
		}
	}
	for want := range msgs {
		select {
		case seq := <-got:
			if seq != want {
				t.Fatalf("message %d came as number %d: lost or out of order", want, seq)
			}
		case <-ctx.Done():
			t.Fatalf("%d of %d messages arrived (dropped: %d)", want, msgs, r.dropped("a"))
		}
	}
	if n := r.dropped("a"); n != 0 {
		t.Errorf("%d messages dropped, want none", n)
	}
}

// TestForgedInstanceFloodIsBounded: a client floods an input's subject
// with frames of an instance no service answers for. They wait at most
// parkLimit at a time, are all dropped and counted, none reaches the
// stage, and the producer's real messages keep going through meanwhile.
func TestForgedInstanceFloodIsBounded(t *testing.T) {
	const window, msgs, forged = 4, 40, 500
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	r := newRouteRig(t, window)
	r.consumer(ctx, "a", 2*msgs)
	r.publisher(1)
	forger := r.conn()
	data, err := stage.AppendMarshal(nil, &stage.Msg{Envelope: envelope.Envelope{V: envelope.Version, Kind: envelope.KindData, Seq: 9999, Payload: []byte("9999")}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range forged {
		m := &nats.Msg{Subject: Subject("rt", "g", "out"), Data: data, Header: nats.Header{HeaderInstance: []string{fmt.Sprint("forger-", i%7)}}}
		if err := forger.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	if err := forger.Flush(); err != nil {
		t.Fatal(err)
	}
	rc := newReceived()
	go rc.take(ctx, "a", r.queues["a"])
	for i := range msgs {
		if err := r.publish(ctx, i); err != nil {
			t.Fatal(err)
		}
		s := r.ins["a"].(*natsSubscriber)
		s.recvMu.Lock()
		held := len(s.parking.held)
		s.recvMu.Unlock()
		if held > parkLimit {
			t.Fatalf("%d forged messages held, want at most %d", held, parkLimit)
		}
	}
	rc.waitAll(t, msgs)
	e2e.WaitFor(t, 15*time.Second, func() string { return fmt.Sprintf("%d forged messages dropped (%d so far)", forged, r.dropped("a")) },
		func() bool { return r.dropped("a") == forged })
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if n := rc.seen[9999]; n > 0 {
		t.Errorf("a forged message reached the stage %d times", n)
	}
}

// TestGapOfAGoneProducerIsGivenUp: two instances of the producer g feed
// an input that puts their messages back in order. One sends message 0
// and is then killed (its connection closes: its service stops
// answering) with messages 1, 4 and 7 taken and never sent; the other
// sends the rest. The input gives up each of the three gaps as soon as it
// finds the instance gone (long before the reorder's wait, here 30 s):
// the other instance sends in order, so a gap below what it has passed
// will never fill. They are counted in lost_messages. An instance that
// is only slow (it sends 1, 4 and 7 two seconds late, answering its
// service's PING all along) loses nothing: the gaps wait for it.
func TestGapOfAGoneProducerIsGivenUp(t *testing.T) {
	others := []uint64{2, 3, 5, 6, 8, 9}
	for _, tt := range []struct {
		name string
		dies bool
		want []uint64
		lost int64
	}{
		{"killed", true, []uint64{2, 3, 5, 6, 8, 9}, 3},
		{"slow", false, []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9}, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			r := newRouteRig(t, 16)
			if err := r.svcs["prod"].Stop(); err != nil {
				t.Fatal(err)
			}
			r.consumer(ctx, "a", 64)
			s := r.ins["a"].(*natsSubscriber)
			s.orderMu.Lock()
			s.reorder.wait = 30 * time.Second
			s.orderMu.Unlock()
			p1, p2 := r.conn(), r.conn()
			r.service(p1, "g", "p1")
			r.service(p2, "g", "p2")
			send := func(nc *nats.Conn, inst string, seqs ...uint64) {
				for _, seq := range seqs {
					data, err := stage.AppendMarshal(nil, &stage.Msg{Envelope: envelope.Envelope{V: envelope.Version, Kind: envelope.KindData, Seq: seq,
						Src: &envelope.Origin{Stream: "g.out", Seq: seq}}})
					if err != nil {
						t.Error(err)
						return
					}
					if err := nc.PublishMsg(&nats.Msg{Subject: Subject("rt", "g", "out"), Data: data, Header: nats.Header{HeaderInstance: []string{inst}}}); err != nil {
						t.Error(err)
						return
					}
				}
				if err := nc.Flush(); err != nil {
					t.Error(err)
				}
			}
			got := make(chan uint64, 16)
			go func() {
				for {
					e, err := r.queues["a"].Pop(ctx)
					if err != nil {
						return
					}
					got <- e.Src.Seq
					e.Ack()
				}
			}()
			next := func() uint64 {
				select {
				case seq := <-got:
					return seq
				case <-ctx.Done():
					t.Fatalf("the input passed nothing more (lost_messages %d)", s.Counts()["lost_messages"])
					return 0
				}
			}
			send(p1, "p1", 0)
			if seq := next(); seq != 0 {
				t.Fatalf("first message %d, want 0", seq)
			}
			if tt.dies {
				p1.Close()
			} else {
				// Its connection closes when the test ends: the late send
				// must be over by then (its flush failed once in make test).
				sent := make(chan struct{})
				time.AfterFunc(2*time.Second, func() { defer close(sent); send(p1, "p1", 1, 4, 7) })
				defer func() { <-sent }()
			}
			send(p2, "p2", others...)
			for _, want := range tt.want {
				if seq := next(); seq != want {
					t.Fatalf("message %d where %d was due", seq, want)
				}
			}
			if n := s.Counts()["lost_messages"]; n != tt.lost {
				t.Errorf("lost_messages %d, want %d", n, tt.lost)
			}
		})
	}
}

// TestReorderFollowsAfter: a message that says which one came before it
// in its stream (Origin.After, set by a stage that saw the whole stream)
// goes on once that one has, without waiting for the seqs in between
// (dropped upstream, not lost on the way); one that says nothing, or
// names one still missing, waits.
func TestReorderFollowsAfter(t *testing.T) {
	msg := srcMsg
	tests := []struct {
		name string
		in   []*stage.Msg
		want []uint64 // what goes on, in order
		lost uint64
	}{
		{"in order", []*stage.Msg{msg(0, 0), msg(1, 1), msg(2, 2)}, []uint64{0, 1, 2}, 0},
		{"a gap said", []*stage.Msg{msg(0, 0), msg(3, 1), msg(4, 4)}, []uint64{0, 3, 4}, 0},
		{"a gap not said waits", []*stage.Msg{msg(0, 0), msg(3, 0), msg(4, 4)}, []uint64{0}, 0},
		{"the one before is missing", []*stage.Msg{msg(0, 0), msg(3, 3), msg(1, 1)}, []uint64{0, 1}, 0},
		{"the one before came late", []*stage.Msg{msg(0, 0), msg(3, 2), msg(1, 1)}, []uint64{0, 1, 3}, 0},
		{"out of order, then said", []*stage.Msg{msg(0, 0), msg(5, 2), msg(1, 1)}, []uint64{0, 1, 5}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, lost := passReorder(tt.in, false)
			if fmt.Sprint(got) != fmt.Sprint(tt.want) || lost != tt.lost {
				t.Errorf("passed %v (lost %d), want %v (lost %d)", got, lost, tt.want, tt.lost)
			}
		})
	}
}

// TestReorderFlushCountsGaps: at the end of an input the messages still
// held for a gap go on, and every gap they leave is counted lost (it was
// not: a frame lost a moment before the end went uncounted, and a live
// run's output and lost messages did not add up to what was sent).
func TestReorderFlushCountsGaps(t *testing.T) {
	msg := srcMsg
	tests := []struct {
		name string
		in   []*stage.Msg
		want []uint64 // what goes on, in order, flush included
		lost uint64
	}{
		{"nothing held", []*stage.Msg{msg(0, 0), msg(1, 1)}, []uint64{0, 1}, 0},
		{"one gap", []*stage.Msg{msg(0, 0), msg(2, 0), msg(3, 0)}, []uint64{0, 2, 3}, 1},
		{"two gaps", []*stage.Msg{msg(0, 0), msg(2, 0), msg(5, 0)}, []uint64{0, 2, 5}, 3},
		{"a gap said is not lost", []*stage.Msg{msg(0, 0), msg(2, 0), msg(4, 3)}, []uint64{0, 2, 4}, 1},
		{"from the first", []*stage.Msg{msg(3, 0)}, []uint64{3}, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, lost := passReorder(tt.in, true)
			if fmt.Sprint(got) != fmt.Sprint(tt.want) || lost != tt.lost {
				t.Errorf("passed %v (lost %d), want %v (lost %d)", got, lost, tt.want, tt.lost)
			}
		})
	}
}

// srcMsg is a data message of stream "s" with its origin's seq and after.
func srcMsg(seq, after uint64) *stage.Msg {
	return &stage.Msg{Envelope: envelope.Envelope{Kind: envelope.KindData, Src: &envelope.Origin{Stream: "s", Seq: seq, After: after}}}
}

// passReorder adds in to an active reorder (one producer instance, no
// limit, no wait), then flushes it when flush is set, and returns the seqs
// that went on, in order, and the count it gave up on.
func passReorder(in []*stage.Msg, flush bool) ([]uint64, uint64) {
	r := newReorder(0, time.Hour)
	r.active = true
	var got []uint64
	now := time.Now()
	for _, e := range in {
		for _, out := range r.add(e, "p", now) {
			got = append(got, out.Src.Seq)
		}
	}
	if flush {
		for _, out := range r.flush() {
			got = append(got, out.Src.Seq)
		}
	}
	return got, r.lost
}
