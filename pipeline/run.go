package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/avflow/avflow/accelerators"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// Sentinel errors of a run.
var (
	// ErrStage matches every error of a stage (a StageError): binding it
	// to a device, building it, or running it.
	ErrStage    = errors.New("stage failed")
	ErrCanceled = errors.New("run cancelled")
)

// StageError is a stage's failure, naming it: "stage "x" (kind): cause".
// errors.Is(err, ErrStage) matches it; errors.Is and errors.As see the cause.
type StageError struct {
	Stage, Kind string
	Replica     int // the failing replica beyond the first, 0 for the stage (or its first instance)
	Err         error
}

func (e *StageError) Error() string {
	if e.Replica > 0 {
		return fmt.Sprintf("stage %q (%s) replica %d: %v", e.Stage, e.Kind, e.Replica, e.Err)
	}
	return fmt.Sprintf("stage %q (%s): %v", e.Stage, e.Kind, e.Err)
}

func (e *StageError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrStage) true.
func (e *StageError) Is(target error) bool { return target == ErrStage }

func stageError(n *node, replica int, err error) error {
	return &StageError{Stage: n.cfg.Name, Kind: n.cfg.Kind, Replica: replica, Err: err}
}

// TotalFramer is implemented by sources that know how many video frames they
// will produce (files); the CLI shows progress and an ETA from it.
type TotalFramer interface {
	TotalFrames() int64
}

// Options tune a run.
type Options struct {
	// NATSURL selects an external NATS server; empty starts an embedded one.
	NATSURL string
	// NATSOptions are added to every connection to an external server
	// (credentials, TLS: see package natsauth). Never logged.
	NATSOptions []nats.Option
	// Transport overrides the pipeline's transport ("nats" or "local").
	Transport string
	// Log receives structured logs; nil uses slog.Default().
	Log *slog.Logger
	// Devices is the machine's inventory for binding stages; nil discovers it.
	Devices *accelerators.Inventory
}

// Runner runs one validated pipeline once.
type Runner struct {
	env  *Environment
	cfg  *Config
	opts Options
	log  *slog.Logger

	metrics *Metrics
	drainMu sync.Mutex
	drained bool
	drain   chan struct{}
	// stopStart cancels the context stages are built with, while they are
	// being built: a Drain then stops the start (a source opening a URL
	// that never answers has nothing to finish).
	stopStart context.CancelFunc

	failMu   sync.Mutex
	firstErr error
	cancel   context.CancelFunc
	failed   chan struct{} // closed with the first error

	// subOwners maps the run's NATS subscriptions to the stages they
	// belong to, for the connections' error handler.
	subOwners sync.Map
	embedded  *server.Server
	ready     chan struct{}
}

// NewRunner validates cfg (if needed) and prepares a run.
func NewRunner(env *Environment, cfg *Config, opts Options) (*Runner, error) {
	if env == nil {
		env = Default
	}
	if !cfg.validated {
		if err := env.Validate(cfg); err != nil {
			return nil, err
		}
	}
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	if opts.Transport == "" {
		opts.Transport = cfg.Transport
	}
	if opts.Transport != TransportNATS && opts.Transport != TransportLocal {
		return nil, fmt.Errorf("pipeline: transport %q: want nats or local", opts.Transport)
	}
	return &Runner{env: env, cfg: cfg, opts: opts, log: log.With("pipeline", cfg.Name),
		metrics: &Metrics{start: time.Now()}, drain: make(chan struct{}), ready: make(chan struct{}), failed: make(chan struct{})}, nil
}

// Run validates and runs a pipeline in the Default environment until its
// sources end, ctx is cancelled, or a stage fails.
func Run(ctx context.Context, cfg *Config, opts Options) error {
	r, err := NewRunner(Default, cfg, opts)
	if err != nil {
		return err
	}
	return r.Run(ctx)
}

// Metrics returns the run's live counters.
func (r *Runner) Metrics() *Metrics { return r.metrics }

// Failed is closed as soon as a stage has failed, before Run returns (the
// other stages may still be closing): a progress display stops there.
func (r *Runner) Failed() <-chan struct{} { return r.failed }

// Ready is closed once every stage is started and subscribed.
func (r *Runner) Ready() <-chan struct{} { return r.ready }

// NATSURL returns the client URL of the embedded server, once Ready ("" otherwise).
func (r *Runner) NATSURL() string {
	if r.embedded != nil {
		return r.embedded.ClientURL()
	}
	return r.opts.NATSURL
}

// Drain stops the sources; every stage then finishes the frames in flight,
// flushes and finalises its output (an MP4 stays playable). Safe to call twice.
func (r *Runner) Drain() {
	r.drainMu.Lock()
	defer r.drainMu.Unlock()
	if !r.drained {
		r.drained = true
		close(r.drain)
		if r.stopStart != nil {
			r.stopStart()
		}
	}
}

// fail records the first error and stops the run. NATS callbacks may call
// it from their own goroutines, also while the run is ending.
func (r *Runner) fail(err error) {
	r.failMu.Lock()
	defer r.failMu.Unlock()
	if r.firstErr != nil {
		return
	}
	r.firstErr = err
	close(r.failed)
	if r.cancel != nil {
		r.cancel()
	}
}

func (r *Runner) err() error {
	r.failMu.Lock()
	defer r.failMu.Unlock()
	return r.firstErr
}

type node struct {
	cfg   *StageConfig
	stage Stage
	q     *queue
	pubs  map[string]publisher
	ports []Port
	subs  []*natsSubscriber
	nc    *nats.Conn // shared with other nodes (connPool); nil over the local transport
	// inSubjects are the NATS subjects of the stage's inputs, in order.
	inSubjects []string
	m          *stageMetrics
	seq        map[string]uint64
	log        *slog.Logger
	nInputs    int
	extra      []Stage // replicas beyond the first (StageConfig.Replicas)
}

// instances is the stage and its replicas (none before they are built).
func (n *node) instances() []Stage {
	if n.stage == nil {
		return nil
	}
	return append([]Stage{n.stage}, n.extra...)
}

// Run executes the pipeline. It returns nil when every source ended (or Drain
// was called) and every stage flushed; otherwise the first stage error,
// naming the stage, or ErrCanceled.
func (r *Runner) Run(ctx context.Context) (err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.failMu.Lock()
	r.cancel = cancel
	r.failMu.Unlock()
	r.metrics.begin(time.Now())

	useNATS := r.opts.Transport == TransportNATS
	if useNATS && r.opts.NATSURL == "" {
		srv, err := StartEmbeddedNATS()
		if err != nil {
			return err
		}
		r.embedded = srv
		defer srv.Shutdown()
		r.log.Info("embedded NATS server started", "url", srv.ClientURL())
	}

	nodes, byName := r.newNodes()
	// The end table shows every stage, also of a run that failed to start.
	defer r.metrics.show(stageMetricsOf(nodes))
	var pool *connPool
	defer func() {
		for _, n := range nodes {
			n.closeTransport()
		}
		pool.Close()
	}()
	if useNATS {
		var err error
		if pool, err = connectPool(r.embedded, r.opts.NATSURL, r.opts.NATSOptions, "avflow "+r.cfg.Name, len(nodes), r.natsError); err != nil {
			return err
		}
		for i, n := range nodes {
			n.nc = pool.conn(i)
		}
	}
	if err := r.wire(ctx, nodes, byName); err != nil {
		return err
	}
	if pool != nil {
		if err := pool.Flush(); err != nil {
			return fmt.Errorf("%w: flushing the subscriptions failed: %w", ErrTransport, err)
		}
	}

	// Bind every stage to a device, then build the stages.
	inv := r.opts.Devices
	if inv == nil {
		m := accelerators.Machine("")
		inv = &m
	}
	binds := map[*node]accelerators.Binding{}
	for _, n := range nodes {
		req := accelerators.Request{Stage: n.cfg.Name, Accelerator: n.cfg.Accelerator,
			Device: n.cfg.Device, Fallback: n.cfg.Fallback, Strict: n.cfg.Strict, Supported: n.cfg.spec.supported(n.cfg.inTypes)}
		if check := n.cfg.spec.DeviceCheck; check != nil {
			p, in := n.cfg.Params, n.cfg.inTypes
			req.Check = func(d accelerators.Device) error { return check(p, in, d) }
		}
		b, err := accelerators.Bind(*inv, req)
		if err != nil {
			return stageError(n, 0, err)
		}
		binds[n] = b
		n.m.device = b.Device.ID
		if b.Fallback {
			n.log.Warn("accelerator fallback", "wanted", b.Wanted, "device", b.Device.ID, "why", b.Why)
		}
	}
	downstream := map[string][]string{}         // stage -> devices of its in-process consumers
	readers := map[string]map[string][]string{} // stage -> port -> stages reading it
	for _, n := range nodes {
		for _, in := range n.cfg.Inputs {
			if !useNATS {
				downstream[in.Stage] = append(downstream[in.Stage], binds[n].Device.ID)
			}
			port, _ := findPort(byName[in.Stage].ports, in.Port)
			if readers[in.Stage] == nil {
				readers[in.Stage] = map[string][]string{}
			}
			readers[in.Stage][port.Name] = append(readers[in.Stage][port.Name], n.cfg.Name)
		}
	}
	// Stages keep the context they are built with; a Drain cancels it only
	// while they are being built.
	startCtx, stopStart := context.WithCancel(ctx)
	defer stopStart()
	if err := r.build(startCtx, stopStart, nodes, binds, downstream, readers); err != nil {
		return err
	}
	var services []micro.Service
	defer func() {
		for _, svc := range services {
			_ = svc.Stop()
		}
	}()
	if useNATS {
		for _, n := range nodes {
			svc, err := r.addService(n)
			if err != nil {
				return err
			}
			services = append(services, svc)
		}
		// Discovery must answer as soon as Ready says the stages exist.
		if err := pool.Flush(); err != nil {
			return fmt.Errorf("%w: registering the stages' services failed: %w", ErrTransport, err)
		}
	}
	r.metrics.show(stageMetricsOf(nodes))
	close(r.ready)

	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Add(1)
		go func(n *node) {
			defer wg.Done()
			err := r.runNode(ctx, n)
			// A stage's own "canceled" while the run goes on is a failure too.
			if err != nil && (ctx.Err() == nil || !errors.Is(err, context.Canceled)) {
				r.fail(stageError(n, 0, err))
			}
			n.ended()
		}(n)
	}
	wg.Wait()
	if err := r.err(); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%w: %w", ErrCanceled, context.Cause(ctx))
	}
	return nil
}

// newNodes makes a node, with its input queue and metrics, for every stage
// in topological order, so every consumer exists before anything is published.
func (r *Runner) newNodes() ([]*node, map[string]*node) {
	nodes := make([]*node, 0, len(r.cfg.order))
	byName := make(map[string]*node, len(r.cfg.order))
	for _, sc := range r.cfg.order {
		n := &node{cfg: sc, pubs: map[string]publisher{}, ports: sc.outputs, seq: map[string]uint64{}, nInputs: len(sc.Inputs),
			log: r.log.With("stage", sc.Name, "kind", sc.Kind)}
		n.m = &stageMetrics{name: sc.Name, kind: sc.Kind, terminal: len(sc.outputs) == 0}
		if n.nInputs > 0 {
			n.q = newQueue(r.cfg.Queue*n.nInputs, r.nodeFlow(sc))
			n.m.q = n.q
		}
		nodes = append(nodes, n)
		byName[sc.Name] = n
	}
	return nodes, byName
}

func stageMetricsOf(nodes []*node) []*stageMetrics {
	out := make([]*stageMetrics, len(nodes))
	for i, n := range nodes {
		out[i] = n.m
	}
	return out
}

// wire subscribes every stage to its inputs and makes the publishers of
// its output ports, over NATS when the nodes have a connection.
func (r *Runner) wire(ctx context.Context, nodes []*node, byName map[string]*node) error {
	consumers := map[string][]consumerRef{} // "stage.port" -> consumers
	for _, n := range nodes {
		for i, in := range n.cfg.Inputs {
			port, _ := findPort(byName[in.Stage].ports, in.Port)
			ref := consumerRef{stage: n.cfg.Name, input: i, q: n.q}
			consumers[in.Stage+"."+port.Name] = append(consumers[in.Stage+"."+port.Name], ref)
			subject := Subject(r.cfg.Name, in.Stage, port.Name)
			n.inSubjects = append(n.inSubjects, subject)
			if n.nc == nil {
				continue
			}
			s, err := newNATSSubscriber(ctx, n.nc, subject, ref, r.edgeFlow(port.Type), r.cfg.Queue, r.fail)
			if err != nil {
				return err
			}
			r.subOwners.Store(s.sub, n.cfg.Name)
			n.subs = append(n.subs, s)
		}
	}
	for _, n := range nodes {
		for _, p := range n.ports {
			cs := consumers[n.cfg.Name+"."+p.Name]
			if n.nc == nil {
				n.pubs[p.Name] = &localPublisher{port: n.cfg.Name + "." + p.Name, consumers: cs, log: n.log, gone: map[string]bool{}}
				continue
			}
			pub, err := newNATSPublisher(n.nc, Subject(r.cfg.Name, n.cfg.Name, p.Name), cs, r.edgeFlow(p.Type), r.cfg.Queue, n.log)
			if err != nil {
				return err
			}
			if pub.ackSub != nil {
				r.subOwners.Store(pub.ackSub, n.cfg.Name)
			}
			n.pubs[p.Name] = pub
		}
	}
	return nil
}

// natsError handles an asynchronous error of a NATS connection: it fails
// the run, naming the stage whose subscription it concerns. A slow
// consumer in drop-oldest flow is what that flow allows.
func (r *Runner) natsError(sub *nats.Subscription, err error) {
	if r.cfg.Flow != FlowBlock && errors.Is(err, nats.ErrSlowConsumer) {
		return
	}
	if sub != nil {
		if name, ok := r.subOwners.Load(sub); ok {
			err = fmt.Errorf("stage %q: %w", name, err)
		}
	}
	r.fail(err)
}

// ended tells the node's producers that it takes nothing more (after its
// error, if it failed, is recorded): they stop waiting for its room or its
// credits, and what they still send it is dropped.
func (n *node) ended() {
	if n.q != nil {
		n.q.close()
	}
	for _, s := range n.subs {
		s.ended()
	}
}

// closeTransport ends the node's subscriptions and publishers and releases
// what is left in its queue; the connection is the pool's.
func (n *node) closeTransport() {
	for _, s := range n.subs {
		s.Close()
	}
	for _, p := range n.pubs {
		p.Close()
	}
	if n.q != nil {
		n.q.drain()
	}
}

// build constructs every stage (and its replicas) on its bound device,
// with startCtx, which a Drain cancels (stop) while they are being built.
func (r *Runner) build(startCtx context.Context, stop context.CancelFunc, nodes []*node, binds map[*node]accelerators.Binding, downstream map[string][]string, readers map[string]map[string][]string) error {
	r.drainMu.Lock()
	if r.drained {
		stop()
	}
	r.stopStart = stop
	r.drainMu.Unlock()
	defer func() {
		r.drainMu.Lock()
		r.stopStart = nil
		r.drainMu.Unlock()
	}()
	for _, n := range nodes {
		b := binds[n]
		in := Init{
			Name: n.cfg.Name, Pipeline: r.cfg.Name, Params: n.cfg.Params, Inputs: n.cfg.inTypes,
			Outputs: n.ports, Dir: r.cfg.Dir, Device: b.Device, Strict: n.cfg.Strict, Log: n.log,
			Live: r.cfg.Flow == FlowDropOldest, Downstream: downstream[n.cfg.Name], Consumers: readers[n.cfg.Name],
		}
		for i := range max(1, n.cfg.Replicas) {
			if i > 0 {
				in.Log = n.log.With("replica", i)
			}
			st, err := n.cfg.spec.New(startCtx, in)
			if err != nil {
				for _, m := range nodes {
					for _, st := range m.instances() {
						_ = st.Close()
					}
				}
				if r.drainedWhileStarting() {
					return fmt.Errorf("%w: stopped while stage %q was starting: %w", ErrCanceled, n.cfg.Name, err)
				}
				return stageError(n, i, err)
			}
			if i == 0 {
				n.stage = st
			} else {
				n.extra = append(n.extra, st)
			}
		}
		for _, inst := range n.instances() {
			if c, ok := inst.(EventCounter); ok {
				n.m.counters = append(n.m.counters, c)
			}
		}
		st := n.stage
		if dr, ok := st.(DeviceReporter); ok {
			n.m.reporter = dr
			if d := dr.Device(); d != "" && d != b.Device.ID {
				b.Device.ID = d
				binds[n] = b
				n.m.device = b.Device.ID
			}
		}
		if tf, ok := st.(TotalFramer); ok {
			r.metrics.total.Add(tf.TotalFrames())
		}
		n.log.Info("stage ready", "device", binds[n].Device.ID, "transport", r.opts.Transport)
	}
	return nil
}

// drainedWhileStarting reports whether Drain was called before the stages were all built.
func (r *Runner) drainedWhileStarting() bool {
	r.drainMu.Lock()
	defer r.drainMu.Unlock()
	return r.drained && r.stopStart != nil
}

// edgeFlow is the flow control of an edge. drop-oldest applies to raw
// frames only: a dropped frame is a skipped picture, but a dropped
// compressed packet breaks every frame that refers to it, so packet edges
// always block and the drops happen on the raw frames in front of them.
func (r *Runner) edgeFlow(t PortType) FlowMode {
	if r.cfg.Flow == FlowDropOldest && t.Kind != envelope.KindPacket {
		return FlowDropOldest
	}
	return FlowBlock
}

// nodeFlow is the flow control of a stage's input queue: block if any input carries packets.
func (r *Runner) nodeFlow(sc *StageConfig) FlowMode {
	for _, t := range sc.inTypes {
		if r.edgeFlow(t) == FlowBlock {
			return FlowBlock
		}
	}
	return r.cfg.Flow
}

func (r *Runner) runNode(ctx context.Context, n *node) (err error) {
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
		f, ok := st.(Flusher)
		if !ok {
			continue
		}
		out, err := f.Flush(ctx)
		if err != nil {
			releaseAll(out)
			return fmt.Errorf("flushing failed: %w", err)
		}
		if err := r.publish(ctx, n, out); err != nil {
			return err
		}
	}
	for _, p := range n.ports {
		if err := n.pubs[p.Name].Publish(ctx, &envelope.Envelope{V: envelope.Version, Kind: envelope.KindEOS, Stream: n.cfg.Name + "." + p.Name}); err != nil {
			return err
		}
	}
	return nil
}

func (r *Runner) runSource(ctx context.Context, n *node) error {
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

func releaseAll(b Batch) {
	for _, e := range b {
		e.Release()
	}
}

func (r *Runner) publish(ctx context.Context, n *node, out Batch) error {
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
func inheritStamps(out Batch, in *envelope.Envelope) {
	for _, o := range out {
		if len(o.Stamps) == 0 && len(in.Stamps) > 0 {
			o.Stamps = append(make([]envelope.Stamp, 0, len(in.Stamps)+1), in.Stamps...)
		}
	}
}

// consume feeds the stage from its queue until every input has ended.
func (r *Runner) consume(ctx context.Context, n *node) error {
	subByInput := map[int]*natsSubscriber{}
	for _, s := range n.subs {
		subByInput[s.ref.input] = s
	}
	// credit tells the producer of a taken message's edge it may send one more.
	credit := func(e *envelope.Envelope) {
		if s := subByInput[e.Input]; s != nil && e.Kind != envelope.KindEOS {
			s.took()
		}
	}
	maxBatch, wait := 1, time.Duration(0)
	if b, ok := n.stage.(Batcher); ok {
		maxBatch, wait = b.BatchLimits()
		maxBatch = max(1, maxBatch)
	}
	var reps *replicaPool
	if len(n.extra) > 0 {
		reps = newReplicaPool(ctx, r, n)
		defer reps.abandon() // on an early return: no instance may still be working
	}
	eos := 0
	var held *envelope.Envelope // an EOS that arrived while a batch was filling
	for eos < n.nInputs {
		var e *envelope.Envelope
		if held != nil {
			e, held = held, nil
		} else {
			var err error
			if e, err = n.q.Pop(ctx); err != nil {
				return err
			}
			credit(e)
		}
		if e.Kind == envelope.KindEOS {
			eos++
			if reps != nil {
				if err := reps.finish(true); err != nil {
					return err
				}
			}
			if ie, ok := n.stage.(InputEnder); ok {
				out, err := ie.EndInput(ctx, e.Input)
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
		batch := Batch{e}
		if maxBatch > 1 {
			var timeout <-chan time.Time
			var timer *time.Timer
			if wait > 0 {
				timer = time.NewTimer(wait)
				timeout = timer.C
			}
			for len(batch) < maxBatch {
				var next *envelope.Envelope
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
				credit(next)
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
		if reps != nil {
			if err := reps.start(ctx, batch); err != nil {
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
	}
	if reps != nil {
		return reps.finish(true)
	}
	return nil
}

// processBatch runs one batch through a stage instance, timing it, and
// releases the batch.
func processBatch(ctx context.Context, n *node, st Stage, batch Batch) (Batch, error) {
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
	n       *node
	free    chan Stage
	pending []*replicaJob
}

type replicaJob struct {
	out  Batch
	err  error
	done chan struct{}
}

func newReplicaPool(ctx context.Context, r *Runner, n *node) *replicaPool {
	all := n.instances()
	p := &replicaPool{ctx: ctx, r: r, n: n, free: make(chan Stage, len(all))}
	for _, st := range all {
		p.free <- st
	}
	return p
}

// start hands a batch to a free instance, publishing finished batches
// (in order) while it waits for one.
func (p *replicaPool) start(ctx context.Context, batch Batch) error {
	var st Stage
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
	j := &replicaJob{done: make(chan struct{})}
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
			err = p.r.publish(p.ctx, p.n, j.out)
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
