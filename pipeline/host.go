package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
	"github.com/nats-io/nats.go"
)

// host runs one stage of the pipeline, and its in-process replicas,
// between its inputs and its output ports.
type host struct {
	cfg   *StageConfig
	stage stage.Stage
	q     *queue
	pubs  map[string]publisher
	ports []Port
	ins   []inlet       // the stage's inputs, in order
	done  chan struct{} // closed when the host has ended
	// inputEnded says which inputs have ended (read by watchRemote).
	inputEnded []atomic.Bool
	nc         *nats.Conn // for its micro service, shared with other hosts (connPool); nil over the local transport
	// inSubjects are the NATS subjects of the stage's inputs, in order.
	inSubjects []string
	m          *stageMetrics
	seq        map[string]uint64
	// wholeSrc is set when the stage sees its whole input stream in order
	// (one instance, in the driving process): its outputs then say which
	// message came before them in their stream (Origin.After), with srcNext
	// (port and stream -> the last Src seq it emitted there, plus one).
	wholeSrc bool
	srcNext  map[string]uint64
	log      *slog.Logger
	nInputs  int
	extra    []stage.Stage // replicas beyond the first (StageConfig.Replicas)
	// onFail, set for the stages of a branch (Runner.AddBranch), hears
	// the stage's failure, which then ends the branch, not the run.
	onFail func(stage string, err error)
}

// instances is the stage and its replicas (none before they are built).
func (n *host) instances() []stage.Stage {
	if n.stage == nil {
		return nil
	}
	return append([]stage.Stage{n.stage}, n.extra...)
}

// ended tells the host's producers that it takes nothing more (after its
// error, if it failed, is recorded): they stop waiting for its room or its
// credits, and what they still send it is dropped.
func (n *host) ended() {
	if n.q != nil {
		n.q.close()
	}
	for _, in := range n.ins {
		in.ended()
	}
}

// endInput ends input i as its end of stream would, once it takes
// nothing more: its producers stop waiting for it, and the stage sees the
// end after what is already queued.
func (n *host) endInput(ctx context.Context, i int) {
	n.ins[i].ended()
	_ = n.q.Push(ctx, stage.EOS(i), nil)
}

// closeTransport ends the host's subscriptions and publishers and releases
// what is left in its queue; the connection is the pool's.
func (n *host) closeTransport() {
	for _, in := range n.ins {
		in.detach()
	}
	for _, p := range n.pubs {
		p.Close()
	}
	if n.q != nil {
		n.q.drain()
	}
}

// runHost runs a host's stage until its inputs end (a source: until it
// ends), flushes it and sends the end of stream on every port.
func (r *Runner) runHost(ctx context.Context, n *host) (err error) {
	defer func() {
		for _, st := range n.instances() {
			if cerr := st.Close(); cerr != nil && err == nil {
				err = fmt.Errorf("closing failed: %w", cerr)
			}
		}
	}()
	if n.nInputs == 0 {
		if err := r.runSource(ctx, n); err != nil {
			return err
		}
	} else {
		if err := r.consume(ctx, n); err != nil {
			return err
		}
	}
	for _, st := range n.instances() {
		out, err := st.Flush(ctx)
		if err != nil {
			releaseAll(out)
			return fmt.Errorf("flushing failed: %w", err)
		}
		if err := r.publish(withTail(ctx), n, out); err != nil {
			return err
		}
	}
	return n.sendEnds(ctx)
}

// sendEnds sends the end of stream on every port.
func (n *host) sendEnds(ctx context.Context) error {
	for _, p := range n.ports {
		eos := stage.EOS(0)
		eos.Stream = n.cfg.Name + "." + p.Name
		if err := n.pubs[p.Name].Publish(ctx, eos); err != nil {
			return err
		}
	}
	return nil
}

func (r *Runner) runSource(ctx context.Context, n *host) error {
	srcCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-r.drain:
			cancel()
		case <-srcCtx.Done():
		}
	}()
	for {
		select {
		case <-r.drain:
			n.log.Info("draining: source stopped")
			return nil
		case <-ctx.Done():
			// A failed or aborted run: a source whose reads ignore the
			// interrupt (lavfi) and whose consumers no longer block it
			// (drop-oldest, or an ended consumer) must still stop.
			return ctx.Err()
		default:
		}
		t0 := time.Now()
		out, err := n.stage.Process(srcCtx, nil)
		n.m.observeBusy(time.Since(t0))
		if err != nil {
			releaseAll(out)
			if errors.Is(err, io.EOF) {
				return nil
			}
			if srcCtx.Err() != nil && ctx.Err() == nil {
				return nil // drained while reading
			}
			return err
		}
		n.m.in.Add(int64(len(out)))
		if err := r.publish(ctx, n, out); err != nil {
			return err
		}
	}
}

func releaseAll(b stage.Batch) {
	for _, e := range b {
		e.Release()
	}
}

func (r *Runner) publish(ctx context.Context, n *host, out stage.Batch) error {
	now := time.Now().UnixNano()
	for i, e := range out {
		port := e.Port
		if port == "" && len(n.ports) > 0 {
			port = n.ports[0].Name
		}
		pub, ok := n.pubs[port]
		if !ok {
			releaseAll(out[i:])
			return fmt.Errorf("emitted a message on unknown port %q", e.Port)
		}
		e.V = envelope.Version
		if e.Stream == "" {
			e.Stream = n.cfg.Name + "." + port
		}
		e.Seq = n.seq[port]
		n.seq[port]++
		if e.Src == nil && e.Kind != envelope.KindEOS {
			e.Src = &envelope.Origin{Stream: e.Stream, Seq: e.Seq}
		}
		if n.wholeSrc && e.Src != nil {
			n.sayAfter(port, e)
		}
		e.Stamps = addStamp(e.Stamps, envelope.Stamp{Stage: n.cfg.Name, At: now})
		if !n.m.terminal {
			n.m.observeLatency(e, now)
		}
		if err := pub.Publish(ctx, e); err != nil {
			releaseAll(out[i+1:])
			return err
		}
		n.m.out.Add(1)
	}
	return nil
}

// sayAfter sets e's Origin.After to the Src seq the host last emitted on
// port in the same stream, plus one (a copy: the Origin may be shared).
// A message behind that one (a stage that reorders) is left as it is.
func (n *host) sayAfter(port string, e *stage.Msg) {
	if n.srcNext == nil {
		n.srcNext = map[string]uint64{}
	}
	key := port + " " + e.Src.Stream
	after, seen := n.srcNext[key]
	if seen && e.Src.Seq < after {
		return
	}
	if e.Src.After != after {
		e.Src = &envelope.Origin{Stream: e.Src.Stream, Seq: e.Src.Seq, After: after}
	}
	n.srcNext[key] = e.Src.Seq + 1
}

// MaxStamps bounds the stamps a message carries: the first (its source's,
// from which latency is measured) and the MaxStamps-1 latest. In a longer
// chain the stamps in between are dropped, so a message does not grow with
// every stage it passes (it did: a chain of 10,000 stages carried 10,000
// stamps per message, each marshalled again at every hop).
const MaxStamps = 16

// addStamp appends s to stamps, dropping the oldest stamp after the first
// beyond MaxStamps. It never writes into a full slice's array, which other
// copies of the message may share.
func addStamp(stamps []envelope.Stamp, s envelope.Stamp) []envelope.Stamp {
	if len(stamps) < MaxStamps {
		return append(stamps, s)
	}
	out := make([]envelope.Stamp, 0, MaxStamps)
	out = append(out, stamps[0])
	out = append(out, stamps[len(stamps)-MaxStamps+2:]...)
	return append(out, s)
}

// inheritStamps gives outputs that a stage built from scratch (a decoder's
// frames, an encoder's packets) the stamps of the input they came from, so
// latency is measured from the source.
func inheritStamps(out stage.Batch, in *stage.Msg) {
	for _, o := range out {
		if len(o.Stamps) == 0 && len(in.Stamps) > 0 {
			o.Stamps = append(make([]envelope.Stamp, 0, len(in.Stamps)+1), in.Stamps...)
		}
	}
}

// consume feeds the stage from its queue until every input has ended.
func (r *Runner) consume(ctx context.Context, n *host) error {
	maxBatch, wait := n.stage.BatchLimits()
	maxBatch = max(1, maxBatch)
	var reps *replicaPool
	if len(n.extra) > 0 {
		reps = newReplicaPool(ctx, r, n)
		defer reps.abandon() // on an early return: no instance may still be working
	}
	eos := 0
	inputEnded := n.inputEnded // an input ends once: its end of stream, or its removal
	var held *stage.Msg        // an EOS that arrived while a batch was filling
	for eos < n.nInputs {
		var e *stage.Msg
		if held != nil {
			e, held = held, nil
		} else {
			var err error
			if e, err = n.q.Pop(ctx); err != nil {
				return err
			}
			e.Ack() // the transport's: its producer may send one more
		}
		if e.Kind == envelope.KindEOS {
			if e.Input < 0 || e.Input >= n.nInputs || inputEnded[e.Input].Load() {
				continue
			}
			inputEnded[e.Input].Store(true)
			eos++
			if reps != nil {
				if err := reps.finish(true); err != nil {
					return err
				}
			}
			// Every replica hears of it, not only the first.
			for _, st := range n.instances() {
				out, err := st.EndInput(ctx, e.Input)
				if err != nil {
					releaseAll(out)
					return err
				}
				if err := r.publish(ctx, n, out); err != nil {
					return err
				}
			}
			continue
		}
		batch := stage.Batch{e}
		if maxBatch > 1 {
			var timeout <-chan time.Time
			var timer *time.Timer
			if wait > 0 {
				timer = time.NewTimer(wait)
				timeout = timer.C
			}
			for len(batch) < maxBatch {
				var next *stage.Msg
				if timeout == nil {
					next = n.q.TryPop()
				} else {
					var err error
					if next, err = n.q.PopUntil(ctx, timeout); err != nil {
						releaseAll(batch)
						if timer != nil {
							timer.Stop()
						}
						return err
					}
				}
				if next == nil {
					break
				}
				next.Ack()
				if next.Kind == envelope.KindEOS {
					held = next
					break
				}
				batch = append(batch, next)
			}
			if timer != nil {
				timer.Stop()
			}
		}
		now := time.Now().UnixNano()
		for _, m := range batch {
			n.m.in.Add(1)
			if m.Media == envelope.MediaVideo {
				n.m.videoIn.Add(1)
			}
			if n.m.terminal {
				n.m.observeLatency(m, now)
			}
		}
		dones := takeDones(batch)
		if reps != nil {
			if err := reps.start(ctx, batch, dones); err != nil {
				return err
			}
			continue
		}
		out, err := processBatch(ctx, n, n.stage, batch)
		if err != nil {
			return err
		}
		if err := r.publish(ctx, n, out); err != nil {
			return err
		}
		runAll(dones)
	}
	if reps != nil {
		return reps.finish(true)
	}
	return nil
}

// processBatch runs one batch through a stage instance, timing it, and
// releases the batch.
func processBatch(ctx context.Context, n *host, st stage.Stage, batch stage.Batch) (stage.Batch, error) {
	t0 := time.Now()
	out, err := st.Process(ctx, batch)
	per := time.Since(t0) / time.Duration(len(batch))
	for range batch {
		n.m.observeBusy(per)
	}
	inheritStamps(out, batch[len(batch)-1])
	releaseAll(batch)
	if err != nil {
		releaseAll(out)
		return nil, err
	}
	return out, nil
}

// replicaPool runs batches on whichever instance of a replicated stage is
// free and publishes the results in the order the batches came.
type replicaPool struct {
	ctx     context.Context
	r       *Runner
	n       *host
	free    chan stage.Stage
	pending []*replicaJob
}

type replicaJob struct {
	out   stage.Batch
	err   error
	done  chan struct{}
	dones []func() // the batch's done hooks, run once out is published
}

func newReplicaPool(ctx context.Context, r *Runner, n *host) *replicaPool {
	all := n.instances()
	p := &replicaPool{ctx: ctx, r: r, n: n, free: make(chan stage.Stage, len(all))}
	for _, st := range all {
		p.free <- st
	}
	return p
}

// takeDones takes the done hooks of a batch's messages (see
// stage.Msg.TakeDone) before the stage gets them: they run once the
// stage's outputs for the batch are published (runAll).
func takeDones(batch stage.Batch) []func() {
	var out []func()
	for _, m := range batch {
		if f := m.TakeDone(); f != nil {
			out = append(out, f)
		}
	}
	return out
}

func runAll(fs []func()) {
	for _, f := range fs {
		f()
	}
}

// start hands a batch to a free instance, publishing finished batches
// (in order) while it waits for one.
func (p *replicaPool) start(ctx context.Context, batch stage.Batch, dones []func()) error {
	var st stage.Stage
	for st == nil {
		if err := p.finish(false); err != nil {
			releaseAll(batch)
			return err
		}
		var head <-chan struct{} // nil (never ready) when nothing is in flight
		if len(p.pending) > 0 {
			head = p.pending[0].done
		}
		select {
		case st = <-p.free:
		case <-head:
		case <-ctx.Done():
			releaseAll(batch)
			return ctx.Err()
		}
	}
	j := &replicaJob{done: make(chan struct{}), dones: dones}
	p.pending = append(p.pending, j)
	go func() {
		defer close(j.done)
		j.out, j.err = processBatch(ctx, p.n, st, batch)
		p.free <- st
	}()
	return nil
}

// finish publishes the finished batches at the head of the line; with wait
// it waits for all of them. After an error it still waits for every batch
// in flight, so no instance is working when the stage is closed.
func (p *replicaPool) finish(wait bool) error {
	for len(p.pending) > 0 {
		j := p.pending[0]
		if !wait {
			select {
			case <-j.done:
			default:
				return nil
			}
		}
		<-j.done
		p.pending = p.pending[1:]
		err := j.err
		if err == nil {
			if err = p.r.publish(p.ctx, p.n, j.out); err == nil {
				runAll(j.dones)
			}
		} else {
			releaseAll(j.out)
		}
		if err != nil {
			p.abandon()
			return err
		}
	}
	return nil
}

// abandon waits for the batches in flight and drops their results.
func (p *replicaPool) abandon() {
	for _, j := range p.pending {
		<-j.done
		releaseAll(j.out)
	}
	p.pending = nil
}
