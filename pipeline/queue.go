package pipeline

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
)

// queue is a stage's bounded input queue. In block mode Push waits for room;
// in drop-oldest mode Push drops (and releases) the oldest message.
// One consumer pops; any number of producers push. Once the consumer has
// ended (close), Push releases what it is given and never waits.
type queue struct {
	mu      sync.Mutex
	items   []*stage.Msg
	head    int
	cap     int
	drop    bool
	drops   atomic.Int64
	hasData chan struct{}
	hasRoom chan struct{}
	ended   chan struct{} // closed by close
	once    sync.Once
}

func newQueue(capacity int, mode FlowMode) *queue {
	return &queue{
		cap:     capacity,
		drop:    mode == FlowDropOldest,
		hasData: make(chan struct{}, 1),
		hasRoom: make(chan struct{}, 1),
		ended:   make(chan struct{}),
	}
}

// close says the consumer has ended: it takes nothing more, so producers
// waiting for room are released and what they push is dropped.
func (q *queue) close() { q.once.Do(func() { close(q.ended) }) }

// closed reports whether the consumer has ended.
func (q *queue) closed() bool {
	select {
	case <-q.ended:
		return true
	default:
		return false
	}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func (q *queue) lenLocked() int { return len(q.items) - q.head }

// Len returns the number of queued messages.
func (q *queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.lenLocked()
}

// tailKey marks the context of a stage's last messages, those its Flush
// emits: a drop-oldest queue waits for room for them instead of dropping
// (in-process edges; over NATS in drop-oldest flow no credits come back
// to wait for, and a burst beyond the consumer's queue is still dropped).
// Dropping keeps a live stream's latency bounded, but after the last
// messages no newer one comes to make way for: a stage that emits
// several at its end (render's look-ahead, a filter's delay) lost all
// but the queue's room of them.
type tailKey struct{}

// withTail is ctx for pushing a stage's last messages.
func withTail(ctx context.Context) context.Context { return context.WithValue(ctx, tailKey{}, true) }

func isTail(ctx context.Context) bool { return ctx.Value(tailKey{}) != nil }

// Push adds e. EOS messages are never dropped and never wait. A full
// queue in block mode (or, in drop-oldest mode, for a stage's last
// messages: withTail) makes Push wait for room; stalled, when set, is
// called while the wait lasts (see slowWait). Pushing to a queue whose
// consumer has ended releases e and returns errConsumerEnded.
func (q *queue) Push(ctx context.Context, e *stage.Msg, stalled func(waited time.Duration)) error {
	var w slowWait
	defer w.stop()
	for {
		if q.closed() {
			e.Release()
			return errConsumerEnded
		}
		q.mu.Lock()
		n := q.lenLocked()
		if n < q.cap || e.Kind == envelope.KindEOS {
			q.items = append(q.items, e)
			room := n+1 < q.cap
			q.mu.Unlock()
			signal(q.hasData)
			if room {
				signal(q.hasRoom)
			}
			return nil
		}
		if q.drop && !isTail(ctx) {
			// Drop the oldest media message (keep EOS markers).
			for i := q.head; i < len(q.items); i++ {
				if q.items[i].Kind != envelope.KindEOS {
					old := q.items[i]
					copy(q.items[q.head+1:i+1], q.items[q.head:i])
					q.items[q.head] = nil
					q.head++
					old.Release()
					q.drops.Add(1)
					break
				}
			}
			q.items = append(q.items, e)
			q.mu.Unlock()
			signal(q.hasData)
			return nil
		}
		q.mu.Unlock()
		select {
		case <-q.hasRoom:
		case <-q.ended:
		case <-w.tick():
			if waited, due := w.due(); due && stalled != nil {
				stalled(waited)
			}
		case <-ctx.Done():
			e.Release()
			return ctx.Err()
		}
	}
}

// errConsumerEnded is what a push to an ended consumer returns: the message
// was dropped, as nobody will read it.
var errConsumerEnded = errors.New("the consumer has ended")

// slowConsumerAfter is how long a producer waits for a consumer before it
// warns that the consumer is slow; it warns again each time the wait doubles.
var slowConsumerAfter = 5 * time.Second

// slowWait times one wait of a producer for its consumers: tick fires
// while it lasts, due says when to warn. The zero value is ready to use.
type slowWait struct {
	start  time.Time
	next   time.Duration
	ticker *time.Ticker
}

// tick starts the wait's clock on first use and returns its ticks (at
// least once a second, for callers that poll something else too).
func (w *slowWait) tick() <-chan time.Time {
	if w.ticker == nil {
		w.start, w.next = time.Now(), slowConsumerAfter
		w.ticker = time.NewTicker(min(time.Second, slowConsumerAfter))
	}
	return w.ticker.C
}

// due reports how long the wait has lasted and whether to warn now.
func (w *slowWait) due() (time.Duration, bool) {
	waited := time.Since(w.start)
	if waited < w.next {
		return waited, false
	}
	w.next *= 2
	return waited, true
}

// stop ends the wait's clock.
func (w *slowWait) stop() {
	if w.ticker != nil {
		w.ticker.Stop()
	}
}

// Pop takes the oldest message, waiting for one.
func (q *queue) Pop(ctx context.Context) (*stage.Msg, error) {
	return q.PopUntil(ctx, nil)
}

// PopUntil is Pop that gives up (nil, nil) when timeout fires; a nil
// timeout waits for ever.
func (q *queue) PopUntil(ctx context.Context, timeout <-chan time.Time) (*stage.Msg, error) {
	for {
		// An aborted run stops at once, not after the messages still queued.
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if e := q.TryPop(); e != nil {
			return e, nil
		}
		select {
		case <-q.hasData:
		case <-timeout:
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// TryPop takes the oldest message if there is one, without waiting.
func (q *queue) TryPop() *stage.Msg {
	q.mu.Lock()
	if q.lenLocked() == 0 {
		q.mu.Unlock()
		return nil
	}
	e := q.items[q.head]
	q.items[q.head] = nil
	q.head++
	if q.head > 64 && q.head*2 > len(q.items) {
		q.items = append(q.items[:0], q.items[q.head:]...)
		q.head = 0
	}
	more := q.lenLocked() > 0
	q.mu.Unlock()
	signal(q.hasRoom)
	if more {
		signal(q.hasData)
	}
	return e
}

// drain releases whatever is left.
func (q *queue) drain() {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i := q.head; i < len(q.items); i++ {
		q.items[i].Release()
		q.items[i] = nil
	}
	q.items, q.head = nil, 0
}
