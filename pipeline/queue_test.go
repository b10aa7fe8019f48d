package pipeline

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
)

// countedLocal is an in-process object that counts its Free calls.
type countedLocal struct{ freed *int }

func (c countedLocal) PayloadSize() (int, error)   { return 0, nil }
func (c countedLocal) WritePayload([]byte) error   { return nil }
func (c countedLocal) Clone() (stage.Local, error) { return c, nil }
func (c countedLocal) Free()                       { *c.freed++ }

// pushStalled pushes e into q from another goroutine and returns once the
// push waits (its stall is reported), with the channel of its result.
func pushStalled(t *testing.T, q *queue, e *stage.Msg) <-chan error {
	t.Helper()
	stalled := make(chan time.Duration, 1)
	done := make(chan error, 1)
	go func() {
		done <- q.Push(context.Background(), e, func(d time.Duration) {
			select {
			case stalled <- d:
			default:
			}
		})
	}()
	select {
	case d := <-stalled:
		if d < slowConsumerAfter {
			t.Fatalf("stalled after %s, before the %s threshold", d, slowConsumerAfter)
		}
	case err := <-done:
		t.Fatalf("a push into a full queue did not wait: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("a push waiting for room never reported its stall")
	}
	return done
}

// TestQueuePushWaitsAndWarns: a push into a full queue waits, reports
// its stall, and goes on once the consumer takes a message.
func TestQueuePushWaitsAndWarns(t *testing.T) {
	defer SetSlowConsumerAfter(20 * time.Millisecond)()
	q := newQueue(1, FlowBlock)
	if err := q.Push(context.Background(), &stage.Msg{Envelope: envelope.Envelope{Kind: envelope.KindData}}, nil); err != nil {
		t.Fatal(err)
	}
	done := pushStalled(t, q, &stage.Msg{Envelope: envelope.Envelope{Kind: envelope.KindData}})
	if q.TryPop() == nil {
		t.Fatal("queue empty")
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if q.Len() != 1 {
		t.Fatalf("queue holds %d, want the pushed message", q.Len())
	}
}

// TestQueueCloseReleasesPush: a producer waiting for room in a full queue
// is released when the consumer ends; what it pushed, and what is pushed
// after, is dropped (freed), not left for nobody.
func TestQueueCloseReleasesPush(t *testing.T) {
	defer SetSlowConsumerAfter(20 * time.Millisecond)()
	q := newQueue(1, FlowBlock)
	if err := q.Push(context.Background(), &stage.Msg{Envelope: envelope.Envelope{Kind: envelope.KindData}}, nil); err != nil {
		t.Fatal(err)
	}
	freed := 0
	done := pushStalled(t, q, &stage.Msg{Envelope: envelope.Envelope{Kind: envelope.KindData}, Local: countedLocal{&freed}})
	q.close()
	select {
	case err := <-done:
		if !errors.Is(err, errConsumerEnded) {
			t.Fatalf("push into an ended consumer's queue: %v, want errConsumerEnded", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("closing the queue did not release the waiting push")
	}
	if err := q.Push(context.Background(), &stage.Msg{Envelope: envelope.Envelope{Kind: envelope.KindData}, Local: countedLocal{&freed}}, nil); !errors.Is(err, errConsumerEnded) {
		t.Fatalf("push after close: %v, want errConsumerEnded", err)
	}
	if freed != 2 {
		t.Fatalf("%d of the 2 dropped messages were freed", freed)
	}
}

// An aborted run's consumer gets the cancellation, not the messages still
// queued: a slow stage would otherwise work through all of them first.
func TestPopAfterCancelStops(t *testing.T) {
	q := newQueue(4, FlowBlock)
	for range 3 {
		if err := q.Push(context.Background(), &stage.Msg{Envelope: envelope.Envelope{Kind: envelope.KindData}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if e, err := q.Pop(ctx); !errors.Is(err, context.Canceled) || e != nil {
		t.Fatalf("Pop after cancel = %v, %v; want context.Canceled", e, err)
	}
	if q.Len() != 3 {
		t.Fatalf("%d queued, want the 3 left for drain", q.Len())
	}
}

// TestQueueKeepsTheTail: a full drop-oldest queue drops its oldest
// message for a new one, but waits for room for a stage's last messages
// (withTail: what its Flush emits), which no newer message follows.
func TestQueueKeepsTheTail(t *testing.T) {
	defer SetSlowConsumerAfter(20 * time.Millisecond)()
	q := newQueue(1, FlowDropOldest)
	freed := 0
	msg := func(seq uint64) *stage.Msg {
		return &stage.Msg{Envelope: envelope.Envelope{Kind: envelope.KindData, Seq: seq}, Local: countedLocal{&freed}}
	}
	for seq := range uint64(2) {
		if err := q.Push(context.Background(), msg(seq), nil); err != nil {
			t.Fatal(err)
		}
	}
	if freed != 1 || q.Len() != 1 {
		t.Fatalf("a push into a full drop-oldest queue freed %d and left %d, want the oldest dropped", freed, q.Len())
	}
	stalled := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		done <- q.Push(withTail(context.Background()), msg(2), func(time.Duration) {
			select {
			case stalled <- struct{}{}:
			default:
			}
		})
	}()
	select {
	case <-stalled:
	case err := <-done:
		t.Fatalf("a stage's last message did not wait for room (%v): %d messages dropped", err, freed)
	case <-time.After(10 * time.Second):
		t.Fatal("a stage's last message neither waited nor went in")
	}
	for seq := uint64(1); seq <= 2; seq++ {
		if m := q.TryPop(); m == nil || m.Seq != seq {
			t.Fatalf("took %+v, want message %d", m, seq)
		}
		if seq == 1 {
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		}
	}
	if freed != 1 {
		t.Fatalf("%d messages dropped, want 1 (the one before the last)", freed)
	}
}
