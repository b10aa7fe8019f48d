package pipeline

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/avflow/avflow/accelerators"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nuid"
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

func stageError(n *host, replica int, err error) error {
	return &StageError{Stage: n.cfg.Name, Kind: n.cfg.Kind, Replica: replica, Err: err}
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
	// Delivery overrides the pipeline's delivery ("live" or "job"); job
	// needs JetStream on the server. The driver (avflow run) makes the
	// run's stream and removes it at the end; avflow serve waits for it.
	Delivery string
	// Log receives structured logs; nil uses slog.Default().
	Log *slog.Logger
	// Devices is the machine's inventory for binding stages; nil discovers it.
	Devices *accelerators.Inventory
	// Remote names stages that other processes serve (avflow serve): this
	// run does not build them, reaches them over NATS and waits for their
	// services before it starts (RemoteTimeout, 30 s by default). Stages
	// with remote: true in the file are remote too.
	Remote        []string
	RemoteTimeout time.Duration
	// Serve, when set, runs only these stages, as services (avflow serve):
	// every other stage is another process's, and the run does not wait
	// for them. A Drain stops taking new messages.
	Serve []string
	// Listen opens the embedded server to TCP clients on a loopback port
	// (NATSURL), with a user and password made for the run
	// (ListenCredentials). Without it the embedded server takes the run's
	// own in-process connections only.
	Listen bool
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
	tr        transport
	instance  string          // this process's instance id on the bus
	remote    map[string]bool // stages other processes serve
	pool      *connPool       // the NATS connections; nil over the local transport
	inv       *accelerators.Inventory

	// The live graph (see graph.go). editMu serialises edits; graphMu
	// guards the fields below it.
	editMu   sync.Mutex
	graphMu  sync.Mutex
	runCtx   context.Context
	hosts    []*host          // every host the run started, removed ones included
	byName   map[string]*host // the hosts in the graph now
	services []micro.Service
	// stopStarts cancel the contexts stages were built with, at the end.
	stopStarts []context.CancelFunc
	active     int           // hosts still running
	over       bool          // every host has ended: the graph takes no more
	allDone    chan struct{} // closed when over
	embedded   *embeddedNATS
	ready      chan struct{}
	finished   chan struct{} // closed when Run returns
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
	if !validTransport(opts.Transport) {
		return nil, fmt.Errorf("pipeline: transport %q: want auto, nats or local", opts.Transport)
	}
	remote, err := remoteStages(cfg, opts)
	if err != nil {
		return nil, err
	}
	if len(remote) > 0 && opts.Transport == TransportLocal {
		return nil, fmt.Errorf("%w: transport local cannot reach stages served by other processes (%s)", ErrRemote, strings.Join(slices.Sorted(maps.Keys(remote)), ", "))
	}
	opts.Delivery = cmp.Or(opts.Delivery, cfg.Delivery, DeliveryLive)
	switch {
	case !validDelivery(opts.Delivery):
		return nil, fmt.Errorf("%w: delivery %q: want live or job", ErrJob, opts.Delivery)
	case opts.Delivery == DeliveryJob && opts.Transport != TransportAuto:
		return nil, fmt.Errorf("%w: delivery job runs over transport auto (the edges between processes go through the stream), not %s", ErrJob, opts.Transport)
	}
	return &Runner{env: env, cfg: cfg, opts: opts, log: log.With("pipeline", cfg.Name), remote: remote, instance: nuid.Next(),
		metrics: &Metrics{start: time.Now()}, byName: map[string]*host{}, drain: make(chan struct{}), ready: make(chan struct{}), finished: make(chan struct{}), failed: make(chan struct{})}, nil
}

// ErrRemote wraps the failures of stages served by other processes: one
// named that the pipeline does not have, one that never appears.
var ErrRemote = errors.New("remote stage")

// remoteStages is the set of stages this run leaves to other processes.
func remoteStages(cfg *Config, opts Options) (map[string]bool, error) {
	known := func(names []string, what string) error {
		for _, n := range names {
			if cfg.Stage(n) == nil {
				var all []string
				for _, s := range cfg.Stages {
					all = append(all, s.Name)
				}
				return fmt.Errorf("%w: %s %q: the pipeline has no such stage (stages: %s)", ErrInvalid, what, n, strings.Join(all, ", "))
			}
		}
		return nil
	}
	if err := known(opts.Remote, "remote stage"); err != nil {
		return nil, err
	}
	if err := known(opts.Serve, "stage to serve"); err != nil {
		return nil, err
	}
	remote := map[string]bool{}
	for _, s := range cfg.Stages {
		switch {
		case len(opts.Serve) > 0:
			remote[s.Name] = !slices.Contains(opts.Serve, s.Name)
		default:
			remote[s.Name] = s.Remote || slices.Contains(opts.Remote, s.Name)
		}
		if !remote[s.Name] {
			delete(remote, s.Name)
		}
	}
	if len(remote) == len(cfg.Stages) {
		return nil, fmt.Errorf("%w: every stage is remote: nothing to run here", ErrInvalid)
	}
	return remote, nil
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

// NATSURL returns the URL of the run's NATS server for other clients: the
// external one's (Options.NATSURL), or, once Ready, the embedded server's
// listener (Options.Listen), without its credentials; "" when the
// embedded server has no listener.
func (r *Runner) NATSURL() string {
	if r.embedded != nil {
		return r.embedded.url
	}
	return r.opts.NATSURL
}

// controlStages names the stages that take commands from outside clients
// (Spec.Control).
func (r *Runner) controlStages() []string {
	var names []string
	for _, s := range r.cfg.order {
		if spec, err := r.env.Lookup(s.Kind); err == nil && spec.Control && !r.remote[s.Name] {
			names = append(names, s.Name)
		}
	}
	return names
}

// Listening reports whether the run's embedded server takes TCP clients
// (Options.Listen, or a stage that takes commands): NATSURL and
// ListenCredentials say where and how, once Ready.
func (r *Runner) Listening() bool {
	embedded := r.opts.NATSURL == "" && r.opts.Transport != TransportLocal
	return embedded && (r.opts.Listen || len(r.controlStages()) > 0)
}

// ListenCredentials returns the user and password of the embedded
// server's listener once Ready (empty without one).
func (r *Runner) ListenCredentials() (user, password string) {
	if r.embedded == nil {
		return "", ""
	}
	return r.embedded.user, r.embedded.password
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
		if len(r.opts.Serve) > 0 {
			go r.stopTaking()
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

// Run executes the pipeline. It returns nil when every source ended (or Drain
// was called) and every stage flushed; otherwise the first stage error,
// naming the stage, or ErrCanceled.
func (r *Runner) Run(ctx context.Context) (err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer close(r.finished)
	r.failMu.Lock()
	r.cancel = cancel
	r.failMu.Unlock()
	r.metrics.begin(time.Now())

	useNATS := r.opts.Transport != TransportLocal
	if useNATS && r.opts.NATSURL == "" {
		control := r.controlStages()
		if len(control) > 0 && !r.opts.Listen {
			r.log.Info("opening the embedded NATS server on a loopback port, with JetStream: stages take commands from other processes", "stages", control)
		}
		srv, err := startEmbeddedNATS(r.opts.Listen || len(control) > 0, len(control) > 0)
		if err != nil {
			return err
		}
		r.embedded = srv
		defer srv.Shutdown()
		if srv.url != "" {
			r.log.Info("embedded NATS server started", "url", srv.url, "user", srv.user)
		} else {
			r.log.Info("embedded NATS server started", "url", "in-process only")
		}
	}

	var here []*StageConfig
	for _, s := range r.cfg.order {
		if !r.remote[s.Name] {
			here = append(here, s)
		}
	}
	hosts := r.newHosts(here)
	r.graphMu.Lock()
	r.runCtx, r.allDone = ctx, make(chan struct{})
	for _, n := range hosts {
		r.hosts, r.byName[n.cfg.Name] = append(r.hosts, n), n
	}
	r.graphMu.Unlock()
	// The end table shows every stage, also of a run that failed to start.
	defer func() { r.metrics.show(stageMetricsOf(r.allHosts())) }()
	defer r.closeTransports()
	if err := r.openTransport(useNATS); err != nil {
		return err
	}
	if useNATS {
		if err := r.refuseSecondRun(); err != nil {
			return err
		}
	}
	if r.opts.Delivery == DeliveryJob {
		stream, err := r.openJob(ctx, useNATS)
		if err != nil {
			return err
		}
		if stream != nil {
			defer stream.remove()
		}
	}
	r.inv = r.opts.Devices
	if r.inv == nil {
		m := accelerators.Machine("")
		r.inv = &m
	}
	if err := r.startHosts(ctx, hosts); err != nil {
		return err
	}
	for _, w := range r.crossingWarnings() {
		r.log.Warn(w)
	}
	if err := r.waitRemote(ctx); err != nil {
		for _, n := range hosts {
			for _, st := range n.instances() {
				_ = st.Close()
			}
		}
		return cmp.Or(r.err(), err) // a NATS error while waiting is the cause
	}
	r.metrics.show(stageMetricsOf(hosts))
	close(r.ready)
	if err := r.launch(ctx, hosts); err != nil {
		return err
	}
	go r.watchRemote(ctx)
	<-r.allDone
	r.syncErrors()
	if err := r.err(); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%w: %w", ErrCanceled, context.Cause(ctx))
	}
	return nil
}

// openJob makes the run's job stream when this process drives the
// pipeline and some of its edges cross to other processes (nil: none do,
// or avflow serve, which waits for the driver's).
func (r *Runner) openJob(ctx context.Context, useNATS bool) (*jobStream, error) {
	if !useNATS {
		return nil, fmt.Errorf("%w: delivery job needs a NATS server with JetStream (--nats URL)", ErrJob)
	}
	if len(r.opts.Serve) > 0 {
		return nil, nil
	}
	edges := r.jobEdges()
	if len(edges) == 0 {
		r.log.Warn("delivery job: no edge crosses to another process, so nothing goes through a stream (name the served stages with --remote)")
		return nil, nil
	}
	return openJobStream(ctx, r.pool.conns[0], r.cfg.Name, r.instance, edges, r.cfg.Queue, r.log)
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

// syncErrors waits until the server has answered what every connection
// sent, so that a refusal of the last messages (a permission the user
// lacks for an end of stream) fails the run.
func (r *Runner) syncErrors() {
	if r.pool == nil {
		return
	}
	for _, nc := range r.pool.conns {
		if nc.IsConnected() { // a server that is away is another error, with its own bound
			_ = nc.FlushTimeout(2 * time.Second)
		}
		if err := nc.LastError(); errors.Is(err, nats.ErrPermissionViolation) {
			r.fail(fmt.Errorf("%w: NATS error: %w", ErrTransport, err))
		}
	}
}
