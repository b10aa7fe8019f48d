package pipeline

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/avflow/avflow/accelerators"
	"github.com/avflow/avflow/pipeline/envelope"
)

// The graph supervisor: the hosts of a run and their edges, built from the
// config at the start, and stages added and removed while it runs
// (AddStages, RemoveStages). A host's inputs end when each has sent its
// end of stream or has been detached, so a removed branch ends like one
// whose inputs ended: it flushes and finalises its output.

// Sentinel errors of graph edits.
var (
	ErrGraph = errors.New("pipeline: graph edit refused")
)

// newHosts makes a host, with its input queue and metrics, for every stage
// of order (topological), so every consumer exists before anything is published.
func (r *Runner) newHosts(order []*StageConfig) []*host {
	hosts := make([]*host, 0, len(order))
	for _, sc := range order {
		n := &host{cfg: sc, pubs: map[string]publisher{}, ports: sc.outputs, seq: map[string]uint64{}, nInputs: len(sc.Inputs),
			log: r.log.With("stage", sc.Name, "kind", sc.Kind), done: make(chan struct{}), inputEnded: make([]atomic.Bool, len(sc.Inputs))}
		n.m = &stageMetrics{name: sc.Name, kind: sc.Kind, terminal: len(sc.outputs) == 0}
		if n.nInputs > 0 {
			n.q = newQueue(r.cfg.Queue*n.nInputs, r.hostFlow(sc))
			n.m.q = n.q
		}
		hosts = append(hosts, n)
	}
	return hosts
}

func stageMetricsOf(hosts []*host) []*stageMetrics {
	out := make([]*stageMetrics, len(hosts))
	for i, n := range hosts {
		out[i] = n.m
	}
	return out
}

// allHosts is every host the run started, removed ones included.
func (r *Runner) allHosts() []*host {
	r.graphMu.Lock()
	defer r.graphMu.Unlock()
	return slices.Clone(r.hosts)
}

// host is the host of a stage in the graph now (nil: none).
func (r *Runner) host(name string) *host {
	r.graphMu.Lock()
	defer r.graphMu.Unlock()
	return r.byName[name]
}

// openTransport connects to NATS (or makes the local transport).
func (r *Runner) openTransport(useNATS bool) error {
	if !useNATS {
		r.tr = newLocalTransport()
		return nil
	}
	pool, err := connectPool(r.embedded, r.opts.NATSURL, r.opts.NATSOptions, "avflow "+r.cfg.Name, len(r.cfg.order), r.natsError, r.log)
	if err != nil {
		return err
	}
	r.pool = pool
	nt := newNATSTransport(r.cfg.Name, r.instance, pool, r.edgeFlow, r.cfg.Queue, r.fail, &r.subOwners, r.log)
	nt.remoteReaders = r.remoteReaders
	nt.remote = func(stage string) bool { return r.remote[stage] }
	nt.serving = len(r.opts.Serve) > 0
	nt.job = r.opts.Delivery == DeliveryJob
	if r.opts.Transport == TransportNATS {
		r.tr = nt
	} else {
		r.tr = &autoTransport{local: newLocalTransport(), nats: nt, remote: func(stage string) bool { return r.remote[stage] }}
	}
	return nil
}

// remoteReaders are the inputs of remote stages that read stage's port.
func (r *Runner) remoteReaders(stage, port string) []consumerRef {
	return r.readers(stage, port, true)
}

// readers are the inputs of the remote stages (remote) or of this
// process's stages that read stage's port.
func (r *Runner) readers(stage, port string, remote bool) []consumerRef {
	var out []consumerRef
	for _, s := range r.cfg.Stages {
		if r.remote[s.Name] != remote {
			continue
		}
		for i, in := range s.Inputs {
			if p, ok := findPort(r.stageConfig(in.Stage).outputs, in.Port); in.Stage == stage && ok && p.Name == port {
				out = append(out, consumerRef{stage: s.Name, input: i})
			}
		}
	}
	return out
}

// stageConfig is a stage of the graph now, or of the file (a remote one).
func (r *Runner) stageConfig(name string) *StageConfig {
	if n := r.host(name); n != nil {
		return n.cfg
	}
	return r.cfg.Stage(name)
}

// closeTransports stops the services, ends every host's subscriptions and
// publishers, and closes the NATS connections.
func (r *Runner) closeTransports() {
	r.graphMu.Lock()
	services, hosts, stops := r.services, r.hosts, r.stopStarts
	r.graphMu.Unlock()
	defer func() {
		for _, stop := range stops {
			stop()
		}
	}()
	for _, svc := range services {
		_ = svc.Stop()
	}
	for _, n := range hosts {
		n.closeTransport()
	}
	r.pool.Close()
}

// startHosts binds and builds hosts, wires them to their inputs and
// outputs and registers their services; launch then runs them. On an
// error the stages built are closed.
func (r *Runner) startHosts(ctx context.Context, hosts []*host) error {
	binds := map[*host]accelerators.Binding{}
	for _, n := range hosts {
		b, err := r.bind(n)
		if err != nil {
			return err
		}
		binds[n] = b
	}
	_, nats := r.tr.(*natsTransport)
	local := !nats
	downstream := map[string][]string{}         // stage -> devices of its in-process consumers
	readers := map[string]map[string][]string{} // stage -> port -> stages reading it
	for _, n := range hosts {
		for _, in := range n.cfg.Inputs {
			src := r.stageConfig(in.Stage)
			if src == nil {
				return fmt.Errorf("%w: stage %q: input %q: no such stage in the graph", ErrGraph, n.cfg.Name, in)
			}
			if local && !r.remote[in.Stage] {
				downstream[in.Stage] = append(downstream[in.Stage], binds[n].Device.ID)
			}
			port, _ := findPort(src.outputs, in.Port)
			if readers[in.Stage] == nil {
				readers[in.Stage] = map[string][]string{}
			}
			readers[in.Stage][port.Name] = append(readers[in.Stage][port.Name], n.cfg.Name)
		}
	}
	for _, n := range hosts { // stages in other processes read this one's ports too
		for _, p := range n.ports {
			for _, c := range r.remoteReaders(n.cfg.Name, p.Name) {
				if readers[n.cfg.Name] == nil {
					readers[n.cfg.Name] = map[string][]string{}
				}
				readers[n.cfg.Name][p.Name] = append(readers[n.cfg.Name][p.Name], c.stage)
			}
		}
	}
	// Stages keep the context they are built with until the run ends; a
	// Drain cancels it only while they are being built.
	startCtx, stopStart := context.WithCancel(ctx)
	r.graphMu.Lock()
	r.stopStarts = append(r.stopStarts, stopStart)
	r.graphMu.Unlock()
	if err := r.build(startCtx, stopStart, hosts, binds, downstream, readers); err != nil {
		return err
	}
	err := r.wire(ctx, hosts)
	if err == nil {
		err = r.addServices(hosts)
	}
	if err != nil {
		for _, n := range hosts {
			for _, st := range n.instances() {
				_ = st.Close()
			}
		}
	}
	return err
}

// addServices registers each host as a NATS micro service (none over the
// local transport, and none for the stages of a branch (AddBranch): they
// come and go with what their owner does, which its own service reports,
// and need no permissions of their own).
func (r *Runner) addServices(hosts []*host) error {
	if r.pool == nil {
		return nil
	}
	for _, n := range hosts {
		if n.onFail != nil {
			continue
		}
		svc, err := r.addService(n)
		if err != nil {
			return err
		}
		r.graphMu.Lock()
		r.services = append(r.services, svc)
		r.graphMu.Unlock()
	}
	// Discovery must answer as soon as the stages run.
	if err := r.pool.Flush(); err != nil {
		return fmt.Errorf("%w: registering the stages' services failed: %w", ErrTransport, err)
	}
	return nil
}

// bind binds a host's stage to a device.
func (r *Runner) bind(n *host) (accelerators.Binding, error) {
	req := accelerators.Request{Stage: n.cfg.Name, Accelerator: n.cfg.Accelerator,
		Device: n.cfg.Device, Fallback: n.cfg.Fallback, Strict: n.cfg.Strict, Supported: n.cfg.spec.supported(n.cfg.inTypes)}
	if check := n.cfg.spec.DeviceCheck; check != nil {
		p, in := n.cfg.Params, n.cfg.inTypes
		req.Check = func(d accelerators.Device) error { return check(p, in, d) }
	}
	b, err := accelerators.Bind(*r.inv, req)
	if err != nil {
		return b, stageError(n, 0, err)
	}
	n.m.device = b.Device.ID
	if b.Fallback {
		n.log.Warn("accelerator fallback", "wanted", b.Wanted, "device", b.Device.ID, "why", b.Why)
	}
	return b, nil
}

// launch runs hosts until they end; the run is over when every host it
// launched has ended.
func (r *Runner) launch(ctx context.Context, hosts []*host) error {
	r.graphMu.Lock()
	if r.over {
		r.graphMu.Unlock()
		return fmt.Errorf("%w: the pipeline has ended", ErrGraph)
	}
	r.active += len(hosts)
	if r.active == 0 {
		r.over = true
		close(r.allDone)
	}
	r.graphMu.Unlock()
	for _, n := range hosts {
		go func() {
			err := r.runHost(ctx, n)
			// A stage's own "canceled" while the run goes on is a failure too.
			if err != nil && (ctx.Err() == nil || !errors.Is(err, context.Canceled)) {
				r.stageFailed(ctx, n, stageError(n, 0, err))
			}
			n.ended()
			close(n.done)
			r.graphMu.Lock()
			defer r.graphMu.Unlock()
			if r.active--; r.active == 0 {
				r.over = true
				close(r.allDone)
			}
		}()
	}
	return nil
}

// stageFailed handles a stage's failure: the run's, unless the stage is in a
// branch (AddBranch): then its owner hears of it, the stages after it get
// their end of stream (they finish what they have: a muxer closes its
// file), and what waits in its queue is released.
func (r *Runner) stageFailed(ctx context.Context, n *host, err error) {
	if n.onFail == nil || ctx.Err() != nil {
		r.fail(err)
		return
	}
	n.log.Error("stage of a branch failed: the branch ends, the pipeline goes on", "error", err)
	n.onFail(n.cfg.Name, err)
	ends, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if eerr := n.sendEnds(ends); eerr != nil {
		n.log.Warn("the stages after a failed branch stage did not get their end of stream", "error", eerr)
	}
	n.ended()
	n.closeTransport()
}

// wire attaches every host to its inputs and makes the publishers of its
// output ports on the run's transport.
func (r *Runner) wire(ctx context.Context, hosts []*host) error {
	for _, n := range hosts {
		for i, in := range n.cfg.Inputs {
			src := r.stageConfig(in.Stage)
			if src == nil {
				return fmt.Errorf("%w: stage %q: input %q: no such stage in the graph", ErrGraph, n.cfg.Name, in)
			}
			port, _ := findPort(src.outputs, in.Port)
			n.inSubjects = append(n.inSubjects, Subject(r.cfg.Name, in.Stage, port.Name))
			l, err := r.tr.attach(ctx, consumerRef{stage: n.cfg.Name, input: i, q: n.q}, in.Stage, port)
			if err != nil {
				return fmt.Errorf("stage %q: input %q: %w", n.cfg.Name, in, err)
			}
			n.ins = append(n.ins, l)
			if c, ok := l.(eventCounter); ok {
				n.m.counters = append(n.m.counters, c)
			}
		}
	}
	for _, n := range hosts {
		for _, p := range n.ports {
			pub, err := r.tr.publisher(n.cfg.Name, p, n.log)
			if err != nil {
				return err
			}
			n.pubs[p.Name] = pub
			if c, ok := pub.(eventCounter); ok {
				n.m.counters = append(n.m.counters, c)
			}
		}
	}
	return r.tr.sync()
}

// AddStages adds stages to the running pipeline, written as a YAML list
// like a pipeline file's stages (for example "- {name: preview, kind:
// encode, inputs: [dec]}"). They may read any stage in the graph and each
// other; the graph with them is validated as a whole. They start at once
// and take the messages their inputs send from then on. A port that has
// already sent its end of stream cannot be read (ErrGraph).
//
// Stages built before know nothing of the added ones: a source that left
// out a stream nobody read does not start it for them.
func (r *Runner) AddStages(ctx context.Context, stagesYAML []byte) error {
	return r.addStages(ctx, stagesYAML, nil)
}

// AddBranch is AddStages for stages whose failure ends only them: a stage
// of the branch that fails is reported to onFail (with its name), the
// stages after it get their end of stream, and the pipeline goes on. The
// owner removes what is left of the branch (RemoveStages). onFail runs on
// the failed stage's goroutine: it must not block for long.
func (r *Runner) AddBranch(ctx context.Context, stagesYAML []byte, onFail func(stage string, err error)) error {
	return r.addStages(ctx, stagesYAML, onFail)
}

func (r *Runner) addStages(ctx context.Context, stagesYAML []byte, onFail func(stage string, err error)) error {
	r.editMu.Lock()
	defer r.editMu.Unlock()
	select {
	case <-r.ready:
	default:
		return fmt.Errorf("%w: the pipeline has not started", ErrGraph)
	}
	added, err := r.validateAdded(stagesYAML)
	if err != nil {
		return err
	}
	hosts := r.newHosts(added)
	r.graphMu.Lock()
	for _, n := range hosts {
		n.onFail = onFail
		r.byName[n.cfg.Name] = n
	}
	r.graphMu.Unlock()
	if err := r.startHosts(r.runCtx, hosts); err != nil {
		r.graphMu.Lock()
		for _, n := range hosts {
			delete(r.byName, n.cfg.Name)
		}
		r.graphMu.Unlock()
		for _, n := range hosts {
			n.closeTransport()
		}
		return err
	}
	r.graphMu.Lock()
	r.hosts = append(r.hosts, hosts...)
	r.graphMu.Unlock()
	if err := r.launch(r.runCtx, hosts); err != nil {
		return err
	}
	r.metrics.show(stageMetricsOf(r.allHosts()))
	for _, n := range hosts {
		n.log.Info("stage added")
	}
	return nil
}

// validateAdded parses stages to add and validates the graph with them; it
// returns their configs, in topological order.
func (r *Runner) validateAdded(stagesYAML []byte) ([]*StageConfig, error) {
	doc := append([]byte("name: "+r.cfg.Name+"\nstages:\n"), stagesYAML...)
	add, err := Parse(doc, "added stages")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrGraph, err)
	}
	c := &Config{Name: r.cfg.Name, Flow: r.cfg.Flow, Queue: r.cfg.Queue, Transport: r.cfg.Transport, File: "added stages", Dir: r.cfg.Dir}
	r.graphMu.Lock()
	for _, n := range r.byName {
		cp := *n.cfg // validation rewrites what it derives: never the running stages' own
		cp.inTypes, cp.outputs = nil, nil
		c.Stages = append(c.Stages, &cp)
	}
	r.graphMu.Unlock()
	c.Stages = append(c.Stages, add.Stages...)
	if err := r.env.Validate(c); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrGraph, err)
	}
	var out []*StageConfig
	for _, s := range c.order {
		if slices.Contains(add.Stages, s) {
			out = append(out, s)
		}
	}
	return out, nil
}

// RemoveStages ends the named stages as if their inputs had ended: each
// takes nothing more, finishes what it holds, flushes and finalises its
// output. Nothing outside them may read them, and sources cannot be
// removed (Drain stops them). It returns when they have ended, or when
// ctx is done.
func (r *Runner) RemoveStages(ctx context.Context, names ...string) error {
	r.editMu.Lock()
	defer r.editMu.Unlock()
	hosts, err := r.removable(names)
	if err != nil {
		return err
	}
	// Only the edges into the set are cut: the edges inside it end with
	// the end of stream of their producers, after those have flushed.
	for _, n := range hosts {
		for i, in := range n.ins {
			if slices.Contains(names, n.cfg.Inputs[i].Stage) {
				continue
			}
			if err := in.drain(ctx); err != nil {
				return fmt.Errorf("stage %q: %w", n.cfg.Name, err)
			}
			n.endInput(ctx, i)
		}
	}
	for _, n := range hosts {
		select {
		case <-n.done:
			n.log.Info("stage removed")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// removable takes the named stages out of the graph if that is allowed.
func (r *Runner) removable(names []string) ([]*host, error) {
	r.graphMu.Lock()
	defer r.graphMu.Unlock()
	var hosts []*host
	for _, name := range names {
		n := r.byName[name]
		switch {
		case n == nil:
			return nil, fmt.Errorf("%w: no stage %q in the graph", ErrGraph, name)
		case n.nInputs == 0:
			return nil, fmt.Errorf("%w: stage %q is a source: drain the pipeline to stop it", ErrGraph, name)
		}
		hosts = append(hosts, n)
	}
	for _, n := range r.byName {
		if slices.Contains(names, n.cfg.Name) {
			continue
		}
		for _, in := range n.cfg.Inputs {
			if slices.Contains(names, in.Stage) {
				return nil, fmt.Errorf("%w: stage %q reads %q: remove it too", ErrGraph, n.cfg.Name, in.Stage)
			}
		}
	}
	for _, n := range hosts {
		delete(r.byName, n.cfg.Name)
	}
	return hosts, nil
}

// build constructs every stage (and its replicas) on its bound device,
// with startCtx, which a Drain cancels (stop) while they are being built.
func (r *Runner) build(startCtx context.Context, stop context.CancelFunc, hosts []*host, binds map[*host]accelerators.Binding, downstream map[string][]string, readers map[string]map[string][]string) error {
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
	for _, n := range hosts {
		b := binds[n]
		in := Init{
			Name: n.cfg.Name, Pipeline: r.cfg.Name, Params: n.cfg.Params, Inputs: n.cfg.inTypes,
			Outputs: n.ports, Dir: r.cfg.Dir, Device: b.Device, Strict: n.cfg.Strict, Log: n.log,
			Live: r.cfg.Flow == FlowDropOldest, Downstream: downstream[n.cfg.Name], Consumers: readers[n.cfg.Name],
			Graph: r,
		}
		if r.pool != nil {
			in.Bus = r.pool.connFor(n.cfg.Name)
		}
		for i := range max(1, n.cfg.Replicas) {
			if i > 0 {
				in.Log = n.log.With("replica", i)
			}
			st, err := n.cfg.spec.New(startCtx, in)
			if err != nil {
				for _, m := range hosts {
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
			n.m.counters = append(n.m.counters, stageCounts{inst})
		}
		n.wholeSrc = len(r.opts.Serve) == 0 && len(n.extra) == 0
		n.m.reporter = n.stage
		status := n.stage.Status()
		if d := status.Device; d != "" && d != b.Device.ID {
			b.Device.ID = d
			binds[n] = b
			n.m.device = b.Device.ID
		}
		r.metrics.total.Add(status.Total)
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

// hostFlow is the flow control of a stage's input queue: block if any input carries packets.
func (r *Runner) hostFlow(sc *StageConfig) FlowMode {
	for _, t := range sc.inTypes {
		if r.edgeFlow(t) == FlowBlock {
			return FlowBlock
		}
	}
	return r.cfg.Flow
}

// waitRemote waits until every remote stage's service answers (only when
// this run drives the pipeline, not when it serves stages of it).
func (r *Runner) waitRemote(ctx context.Context) error {
	if len(r.opts.Serve) > 0 {
		// Other processes may already serve these stages: they must agree.
		for _, name := range r.opts.Serve {
			if err := r.checkPeers(name, pingService(r.pool.connFor(name), ServiceName(r.cfg.Name, name), 200*time.Millisecond)); err != nil {
				return err
			}
		}
		return nil
	}
	if len(r.remote) == 0 {
		return nil
	}
	timeout := r.opts.RemoteTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	deadline := time.Now().Add(timeout)
	for _, name := range slices.Sorted(maps.Keys(r.remote)) {
		svc := ServiceName(r.cfg.Name, name)
		r.log.Info("waiting for a remote stage", "stage", name, "service", svc)
		for {
			if peers := pingService(r.pool.connFor(name), svc, 200*time.Millisecond); len(peers) > 0 {
				if err := r.checkPeers(name, peers); err != nil {
					return err
				}
				r.log.Info("remote stage found", "stage", name, "service", svc, "instances", len(peers))
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%w: stage %q: no instance of service %s answered within %s (start one with: avflow serve %s --stage %s; it reads %s)",
					ErrRemote, name, svc, timeout, r.cfg.File, name, strings.Join(r.inputSubjects(name), ", "))
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%w: %w", ErrCanceled, context.Cause(ctx))
			case <-r.drain:
				return fmt.Errorf("%w: stopped while waiting for remote stage %q", ErrCanceled, name)
			case <-time.After(250 * time.Millisecond):
			}
		}
	}
	return nil
}

// inputSubjects are the NATS subjects a stage of the file reads.
func (r *Runner) inputSubjects(name string) []string {
	s := r.cfg.Stage(name)
	var out []string
	for _, in := range s.Inputs {
		p, _ := findPort(r.stageConfig(in.Stage).outputs, in.Port)
		out = append(out, Subject(r.cfg.Name, in.Stage, p.Name))
	}
	return out
}

// stopTaking ends the inputs that come from other processes, after what
// the server has already sent this instance: a served stage drained by a
// signal finishes the messages it has and leaves the rest to the other
// instances.
func (r *Runner) stopTaking() {
	select {
	case <-r.ready:
	case <-r.finished:
		return
	}
	for _, n := range r.allHosts() {
		for i, in := range n.ins {
			if !r.remote[n.cfg.Inputs[i].Stage] {
				continue
			}
			ctx, cancel := context.WithTimeout(r.runCtx, 10*time.Second)
			if err := in.drain(ctx); err != nil {
				n.log.Warn("draining an input failed", "input", n.cfg.Inputs[i].String(), "err", err)
			}
			cancel()
			n.endInput(r.runCtx, i)
		}
	}
}

// remoteEnded reports whether every input of this process that a remote
// stage feeds has had its end of stream: the stage is done, not lost.
func (r *Runner) remoteEnded(name string) bool {
	fed := false
	for _, n := range r.allHosts() {
		for i, in := range n.cfg.Inputs {
			if in.Stage == name {
				fed = true
				if !n.inputEnded[i].Load() {
					return false
				}
			}
		}
	}
	return fed
}

// remoteLost is how long a remote stage's instance may stop answering
// before the run reports it (and, in block flow with none left, fails).
var remoteLost = 5 * time.Second

// watchRemote asks the remote stages' services every second who is there;
// it reports an instance that stopped answering (service, instance, host,
// last seen). In live flow the run goes on with the instances left; in
// block flow, where a missing stage would stall the run, it fails once a
// remote stage has had no instance for remoteLost.
func (r *Runner) watchRemote(ctx context.Context) {
	if len(r.opts.Serve) > 0 || len(r.remote) == 0 {
		return
	}
	type seen struct {
		host string
		at   time.Time
		gone bool
	}
	last := map[string]map[string]*seen{} // stage -> instance -> last answer
	empty := map[string]time.Time{}       // stage -> since when no instance answers
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.allDone:
			return
		case <-tick.C:
		}
		now := time.Now()
		for name := range r.remote {
			if r.remoteEnded(name) {
				continue
			}
			svc := ServiceName(r.cfg.Name, name)
			if last[name] == nil {
				last[name] = map[string]*seen{}
			}
			for _, p := range pingService(r.pool.connFor(name), svc, 200*time.Millisecond) {
				inst := p.Metadata["instance"]
				if inst == "" {
					continue
				}
				if s := last[name][inst]; s != nil && s.gone {
					r.log.Info("remote stage instance answers again", "stage", name, "service", svc, "instance", inst)
				}
				last[name][inst] = &seen{host: p.Metadata["host"], at: now}
			}
			alive := 0
			for inst, s := range last[name] {
				switch {
				case now.Sub(s.at) < remoteLost:
					alive++
				case !s.gone:
					s.gone = true
					r.log.Warn("a remote stage instance stopped answering", "stage", name, "service", svc, "instance", inst, "host", s.host, "last_seen", s.at.Format(time.RFC3339))
				}
			}
			if alive > 0 {
				delete(empty, name)
				continue
			}
			if _, ok := empty[name]; !ok {
				empty[name] = now
			}
			if r.opts.Delivery == DeliveryJob {
				// The stage's messages wait in the run's stream for an
				// instance to come (back).
				if d := now.Sub(empty[name]); d >= remoteLost && int(d/time.Second)%10 == int(remoteLost/time.Second)%10 {
					r.log.Warn("no instance of a remote stage answers: its messages wait in the job stream for one", "stage", name, "service", svc, "for", d.Round(time.Second),
						"start_one_with", "avflow serve "+r.cfg.File+" --stage "+name+" --delivery job")
				}
				continue
			}
			if r.cfg.Flow == FlowBlock && now.Sub(empty[name]) >= remoteLost {
				r.fail(fmt.Errorf("%w: stage %q: no instance of service %s has answered for %s (block flow cannot go on without it)", ErrRemote, name, svc, remoteLost))
				return
			}
		}
	}
}

// crossingWarnings name the edges between this process and another that
// carry raw video frames (a 1080p frame is 3 MB on the wire, 4K 12 MB),
// with the nearest edge upstream that carries packets: cutting there is
// far cheaper.
func (r *Runner) crossingWarnings() []string {
	var out []string
	for _, s := range r.cfg.order {
		for i, in := range s.Inputs {
			if r.remote[s.Name] == r.remote[in.Stage] || i >= len(s.inTypes) {
				continue
			}
			t := s.inTypes[i]
			if t.Kind != envelope.KindFrame || t.Media != envelope.MediaVideo {
				continue
			}
			w := fmt.Sprintf("edge %s -> %s crosses processes with raw video frames (a 1080p frame is 3 MB on the wire)", in, s.Name)
			if cut := r.packetEdgeAbove(in.Stage); cut != "" {
				w += "; the edge " + cut + " carries packets: cutting there is far cheaper"
			}
			out = append(out, w)
		}
	}
	return out
}

// packetEdgeAbove is the nearest input edge upstream of stage (following
// first inputs) that carries packets, "" if none.
func (r *Runner) packetEdgeAbove(stage string) string {
	for seen := 0; seen < len(r.cfg.Stages); seen++ {
		s := r.cfg.Stage(stage)
		if s == nil || len(s.Inputs) == 0 || len(s.inTypes) == 0 {
			return ""
		}
		if s.inTypes[0].Kind == envelope.KindPacket {
			return s.Inputs[0].String() + " -> " + s.Name
		}
		stage = s.Inputs[0].Stage
	}
	return ""
}
