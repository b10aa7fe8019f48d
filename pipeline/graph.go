package pipeline

import (
	"context"
	"fmt"

	"github.com/avflow/avflow/accelerators"
	"github.com/avflow/avflow/pipeline/envelope"
)

// newHosts makes a host, with its input queue and metrics, for every stage
// in topological order, so every consumer exists before anything is published.
func (r *Runner) newHosts() ([]*host, map[string]*host) {
	hosts := make([]*host, 0, len(r.cfg.order))
	byName := make(map[string]*host, len(r.cfg.order))
	for _, sc := range r.cfg.order {
		n := &host{cfg: sc, pubs: map[string]publisher{}, ports: sc.outputs, seq: map[string]uint64{}, nInputs: len(sc.Inputs),
			log: r.log.With("stage", sc.Name, "kind", sc.Kind)}
		n.m = &stageMetrics{name: sc.Name, kind: sc.Kind, terminal: len(sc.outputs) == 0}
		if n.nInputs > 0 {
			n.q = newQueue(r.cfg.Queue*n.nInputs, r.hostFlow(sc))
			n.m.q = n.q
		}
		hosts = append(hosts, n)
		byName[sc.Name] = n
	}
	return hosts, byName
}

func stageMetricsOf(hosts []*host) []*stageMetrics {
	out := make([]*stageMetrics, len(hosts))
	for i, n := range hosts {
		out[i] = n.m
	}
	return out
}

// wire attaches every stage to its inputs and makes the publishers of
// its output ports on the run's transport.
func (r *Runner) wire(ctx context.Context, hosts []*host, byName map[string]*host) error {
	for _, n := range hosts {
		for i, in := range n.cfg.Inputs {
			port, _ := findPort(byName[in.Stage].ports, in.Port)
			n.inSubjects = append(n.inSubjects, Subject(r.cfg.Name, in.Stage, port.Name))
			l, err := r.tr.attach(ctx, consumerRef{stage: n.cfg.Name, input: i, q: n.q}, in.Stage, port)
			if err != nil {
				return err
			}
			n.ins = append(n.ins, l)
		}
	}
	for _, n := range hosts {
		for _, p := range n.ports {
			pub, err := r.tr.publisher(n.cfg.Name, p, n.log)
			if err != nil {
				return err
			}
			n.pubs[p.Name] = pub
		}
	}
	return r.tr.sync()
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

// hostFlow is the flow control of a stage's input queue: block if any input carries packets.
func (r *Runner) hostFlow(sc *StageConfig) FlowMode {
	for _, t := range sc.inTypes {
		if r.edgeFlow(t) == FlowBlock {
			return FlowBlock
		}
	}
	return r.cfg.Flow
}
