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
