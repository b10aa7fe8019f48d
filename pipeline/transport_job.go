package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Job delivery (delivery: job): the data of every edge between processes
// goes through a JetStream work-queue stream that the driver (avflow run)
// makes for the run and removes at its end:
//
//   - each edge has a subject of its own, <port subject>.job.<consumer
//     stage>.<input>, and a durable pull consumer, <consumer stage>-<input>,
//     which every instance of the consumer stage shares;
//   - a message is acknowledged only once the stage that took it has
//     published its outputs (stage.Msg's done hook); until then an
//     in-progress ack every jobAckWait/3 keeps it, and one a dead process
//     held goes to another instance after jobAckWait;
//   - a producer publishes with Nats-Msg-Id = <edge subject>/<src stream>:<src
//     seq>, so the output of a message done twice (its instance died
//     after publishing, before its ack) is kept once by the stream;
//   - the consumer before a stage puts its messages back in order by
//     src (replicas finish out of order) and drops one it has passed
//     already (redelivered_duplicates);
//   - ends of stream stay on core NATS (<subject>.eos): an input ends once
//     every producer instance that is there has sent its end and the
//     consumer has nothing pending or unacknowledged.
//
// A message above the server's max payload is refused (job delivery does
// not split messages: raise max_payload, or use delivery live).

// ErrJob wraps the failures of job delivery: no JetStream on the server, a
// stream that cannot be made, a message too large for it.
var ErrJob = errors.New("job delivery")

var (
	// jobAckWait is how long a message taken by an instance that gives no
	// sign of life waits before it goes to another instance.
	jobAckWait = 6 * time.Second
	// jobReorderWait is how long a gap in the order holds the messages
	// after it: longer than a redelivery takes.
	jobReorderWait = 4 * jobAckWait
	// jobMaxBytes and jobMaxAge bound what a run that never ends (its
	// driver killed) leaves on the server.
	jobMaxBytes int64 = 1 << 30
	jobMaxAge         = time.Hour
)

// jobAckPending is the most messages of an edge its consumer's instances
// hold unacknowledged; the stream holds twice that per edge (the
// producer waits then).
func jobAckPending(window int) int { return 8 * window }

const (
	jobInfix  = ".job."
	headerMsg = "Nats-Msg-Id"
)

// jobSubject is the subject of one edge's messages in the job stream.
func jobSubject(subject string, ref consumerRef) string {
	return subject + jobInfix + ref.stage + "." + strconv.Itoa(ref.input)
}

// jobDurable is the name of the edge's consumer.
func jobDurable(ref consumerRef) string { return ref.stage + "-" + strconv.Itoa(ref.input) }

// jobStreamSubjects are the subjects of a pipeline's job stream.
func jobStreamSubjects(pipeline string) string { return "avflow." + pipeline + ".*.*.job.>" }

var notStreamName = regexp.MustCompile(`[^A-Za-z0-9_-]`)

// jobStreamName is the stream of a pipeline's run (one at a time: a
// second driver is refused), named without the run so that a user's
// permissions can name it (avflow permissions).
func jobStreamName(pipeline string) string {
	return "AVFLOW_" + notStreamName.ReplaceAllString(pipeline, "_")
}

// jobEdge is an edge whose messages go through the stream.
type jobEdge struct {
	subject string // the producer port's
	ref     consumerRef
}

// jobEdges are the edges of the run that touch a stage of another
// process: their producer or their consumer is remote.
func (r *Runner) jobEdges() []jobEdge {
	var out []jobEdge
	for _, s := range r.cfg.order {
		for i, in := range s.Inputs {
			if !r.remote[s.Name] && !r.remote[in.Stage] {
				continue
			}
			port, _ := findPort(r.cfg.Stage(in.Stage).outputs, in.Port)
			out = append(out, jobEdge{subject: Subject(r.cfg.Name, in.Stage, port.Name), ref: consumerRef{stage: s.Name, input: i}})
		}
	}
	return out
}

// jobStream is the stream the driver made for the run.
type jobStream struct {
	js   jetstream.JetStream
	name string
	log  *slog.Logger
}

// openJobStream makes the run's stream and its edges' consumers; a stream
// an earlier run of the pipeline left (its driver was killed) is removed
// first: a second driver is refused before this (refuseSecondRun).
func openJobStream(ctx context.Context, nc *nats.Conn, pipeline, run string, edges []jobEdge, window int, log *slog.Logger) (*jobStream, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrJob, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := js.AccountInfo(ctx); err != nil {
		if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
			return nil, fmt.Errorf("%w: the NATS server at %s has no JetStream (start nats-server with -js, or use --delivery live): %w", ErrJob, nc.ConnectedUrlRedacted(), err)
		}
		return nil, fmt.Errorf("%w: asking the NATS server for JetStream failed: %w", ErrJob, err)
	}
	if old, err := js.StreamNameBySubject(ctx, jobSubject(Subject(pipeline, "x", "x"), consumerRef{stage: "x"})); err == nil {
		log.Warn("removing the job stream an earlier run of the pipeline left", "stream", old)
		if err := js.DeleteStream(ctx, old); err != nil {
			return nil, fmt.Errorf("%w: removing the stream %s an earlier run left failed: %w", ErrJob, old, err)
		}
	}
	replicas := 1
	if nc.ConnectedClusterName() != "" {
		replicas = min(3, len(nc.Servers()))
	}
	name := jobStreamName(pipeline)
	cfg := jetstream.StreamConfig{
		Name: name, Description: "avflow job delivery: pipeline " + pipeline + ", run " + run, Metadata: map[string]string{"avflow_run": run},
		Subjects: []string{jobStreamSubjects(pipeline)}, Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage,
		Replicas: replicas, MaxBytes: jobMaxBytes, MaxAge: jobMaxAge, Duplicates: 2 * time.Minute,
		Discard: jetstream.DiscardNew, MaxMsgsPerSubject: int64(2 * jobAckPending(window)), DiscardNewPerSubject: true,
	}
	if err := createJobStream(ctx, js, cfg); err != nil {
		return nil, fmt.Errorf("%w: making the stream %s (%d replicas, at most %d bytes) failed: %w", ErrJob, name, replicas, jobMaxBytes, denied(nc, err))
	}
	s := &jobStream{js: js, name: name, log: log}
	for _, e := range edges {
		_, err := js.CreateOrUpdateConsumer(ctx, name, jetstream.ConsumerConfig{
			Durable: jobDurable(e.ref), FilterSubject: jobSubject(e.subject, e.ref), AckPolicy: jetstream.AckExplicitPolicy,
			AckWait: jobAckWait, MaxAckPending: jobAckPending(window), MaxDeliver: -1, DeliverPolicy: jetstream.DeliverAllPolicy,
		})
		if err != nil {
			s.remove()
			return nil, fmt.Errorf("%w: making the consumer %s of stream %s failed: %w", ErrJob, jobDurable(e.ref), name, denied(nc, err))
		}
	}
	log.Info("job stream made", "stream", name, "replicas", replicas, "edges", len(edges))
	return s, nil
}

// denied is err, or the permission violation behind it: a request the
// server refuses to pass on gets no answer, only a timeout, while the
// connection hears why.
func denied(nc *nats.Conn, err error) error {
	if last := nc.LastError(); errors.Is(last, nats.ErrPermissionViolation) {
		return fmt.Errorf("%w (avflow permissions --delivery job prints what the user needs)", last)
	}
	return err
}

// remove deletes the stream (and its consumers) at the run's end.
func (s *jobStream) remove() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.js.DeleteStream(ctx, s.name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		s.log.Warn("removing the job stream failed", "stream", s.name, "err", err)
	}
}

// jobConsumer finds an edge's consumer in the run's stream, waiting for
// the driver to make it (avflow serve may start first).
func jobConsumer(ctx context.Context, nc *nats.Conn, edge string, durable string, log *slog.Logger) (jetstream.Consumer, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrJob, err)
	}
	warned := false
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		name, err := js.StreamNameBySubject(actx, edge)
		var cons jetstream.Consumer
		if err == nil {
			cons, err = js.Consumer(actx, name, durable)
		}
		cancel()
		switch {
		case err == nil:
			return cons, nil
		case errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
			return nil, fmt.Errorf("%w: the NATS server at %s has no JetStream (start nats-server with -js): %w", ErrJob, nc.ConnectedUrlRedacted(), err)
		case !warned:
			warned = true
			log.Info("waiting for the run's job stream", "subject", edge, "consumer", durable, "why", err.Error())
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: waiting for the job stream of %s: %w", ErrJob, edge, context.Cause(ctx))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// jobPublisher publishes a port's data on the job subjects of the edges
// to other processes, and its end of stream on core NATS.
type jobPublisher struct {
	js       jetstream.JetStream
	nc       *nats.Conn
	subject  string
	edges    []string
	instance string
	sole     bool
	max      int
	log      *slog.Logger
	sent     uint64
	buf      []byte
	dups     atomic.Int64 // outputs the stream had already (done twice)
	ended    atomic.Bool  // its end of stream is sent
	askSub   *nats.Subscription
}

func newJobPublisher(nc *nats.Conn, subject, instance string, readers []consumerRef, log *slog.Logger) (*jobPublisher, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrJob, err)
	}
	p := &jobPublisher{js: js, nc: nc, subject: subject, instance: instance, max: int(nc.MaxPayload()) - 1024, log: log}
	for _, ref := range readers {
		p.edges = append(p.edges, jobSubject(subject, ref))
	}
	// Inputs that start after the end of stream (a restarted instance)
	// ask whether this instance has ended.
	if p.askSub, err = nc.Subscribe(subject+ackSuffix, p.answer); err != nil {
		return nil, fmt.Errorf("%w: subscribing to %s%s failed: %w", ErrTransport, subject, ackSuffix, err)
	}
	return p, nil
}

// answer tells an input whether this instance has ended its port.
func (p *jobPublisher) answer(m *nats.Msg) {
	a, err := parseAck(m.Data)
	if err != nil || !a.ask || a.producer != p.instance || m.Reply == "" {
		return
	}
	state := ackRunning
	if p.ended.Load() {
		state = ackEnded
	}
	_ = m.Respond([]byte(p.instance + " " + state))
}

// Counts reports the outputs the stream already had, once there are some.
func (p *jobPublisher) Counts() map[string]int64 {
	return nonZero(map[string]int64{"duplicate_outputs": p.dups.Load()})
}

func (p *jobPublisher) Publish(ctx context.Context, e *stage.Msg) error {
	data, err := stage.AppendMarshal(p.buf[:0], e)
	if err != nil {
		return err
	}
	p.buf = data
	if e.Kind == envelope.KindEOS {
		m := &nats.Msg{Subject: p.subject + eosSuffix, Data: data, Header: nats.Header{
			HeaderInstance: []string{p.instance}, HeaderSent: []string{strconv.FormatUint(p.sent, 10)}}}
		p.ended.Store(true)
		if err := p.nc.PublishMsg(m); err != nil {
			return fmt.Errorf("%w: publishing the end of %s failed: %w", ErrTransport, p.subject, err)
		}
		return nil
	}
	if len(data) > p.max {
		return fmt.Errorf("%w: a message of %d bytes on %s is above the NATS server's max payload (%d): job delivery does not split messages (raise max_payload in the server's config, or use delivery live)",
			ErrJob, len(data), p.subject, p.nc.MaxPayload())
	}
	src := e.Stream + ":" + strconv.FormatUint(e.Seq, 10)
	if e.Src != nil {
		src = e.Src.Stream + ":" + strconv.FormatUint(e.Src.Seq, 10)
	}
	for _, edge := range p.edges {
		h := nats.Header{HeaderInstance: []string{p.instance}, headerMsg: []string{edge + "/" + src}}
		if p.sole {
			h[HeaderSole] = []string{"1"}
		}
		if err := p.publish(ctx, &nats.Msg{Subject: edge, Data: data, Header: h}); err != nil {
			return err
		}
	}
	p.sent++
	return nil
}

// publish stores m in the stream: while the edge holds as many messages
// as the stream allows (its consumer is behind) it waits, warning now and
// then; other failures (a node restarting, a leader moving) are tried
// again for 30 s.
func (p *jobPublisher) publish(ctx context.Context, m *nats.Msg) error {
	var w slowWait
	defer w.stop()
	failingSince := time.Time{}
	for backoff := 5 * time.Millisecond; ; backoff = min(2*backoff, 200*time.Millisecond) {
		ack, err := p.js.PublishMsg(ctx, m)
		if err == nil {
			if ack.Duplicate {
				p.dups.Add(1)
			}
			return nil
		}
		full := strings.Contains(err.Error(), "maximum messages per subject exceeded")
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case full:
			failingSince = time.Time{}
		case failingSince.IsZero():
			failingSince = time.Now()
		case time.Since(failingSince) > 30*time.Second:
			return fmt.Errorf("%w: storing a message of %s in the job stream failed for 30 s: %w", ErrJob, m.Subject, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-w.tick():
			if waited, due := w.due(); due {
				p.log.Warn("slow consumer: the job stream holds as many messages of this edge as it may", "subject", m.Subject, "waited", waited.Round(time.Second), "last_error", err.Error())
			}
		case <-time.After(backoff):
		}
	}
}

func (p *jobPublisher) Close() { _ = p.askSub.Unsubscribe() }

// jobInput is what an input in job delivery holds: its consumer, and the
// messages taken from it and not yet done.
type jobInput struct {
	cons  jetstream.Consumer
	cc    jetstream.ConsumeContext
	dups  atomic.Int64 // messages dropped as passed already
	early bool         // acknowledge each message as it arrives (the driver's inputs)
	log   *slog.Logger
	// redone counts the messages done that the server had sent before
	// (to an instance that died, or was slower than the ack wait).
	redone atomic.Int64

	mu         sync.Mutex
	held       map[uint64]jetstream.Msg // stream seq -> taken, not yet done
	lastRedone time.Time                // when a redelivered message was last done
	stop       chan struct{}
	stopOnce   sync.Once
	keepAlive  chan struct{} // closed when keepAlive's loop returns
}

func newJobInput(cons jetstream.Consumer, log *slog.Logger) *jobInput {
	return &jobInput{cons: cons, log: log, held: map[uint64]jetstream.Msg{}, stop: make(chan struct{}), keepAlive: make(chan struct{})}
}

// start consumes the edge's messages into on, and keeps the ones taken
// from being sent to another instance while they are worked on.
func (j *jobInput) start(window int, on func(jetstream.Msg), onErr func(error)) error {
	if err := j.consume(j.cons, window, on, onErr); err != nil {
		return err
	}
	go j.inProgress()
	return nil
}

// consume takes the messages of cons into on.
func (j *jobInput) consume(cons jetstream.Consumer, window int, on func(jetstream.Msg), onErr func(error)) error {
	cc, err := cons.Consume(on, jetstream.PullMaxMessages(window),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) { onErr(err) }))
	if err != nil {
		return fmt.Errorf("%w: consuming %s failed: %w", ErrJob, cons.CachedInfo().Name, err)
	}
	j.mu.Lock()
	j.cons, j.cc = cons, cc
	j.mu.Unlock()
	return nil
}

// rebind consumes cons, the edge's consumer made again (a new run of the
// pipeline replaced the stream this input had found): what was taken from
// the old one went with it.
func (j *jobInput) rebind(cons jetstream.Consumer, window int, on func(jetstream.Msg), onErr func(error)) error {
	j.mu.Lock()
	old := j.cc
	clear(j.held)
	j.mu.Unlock()
	select {
	case <-j.stop:
		return nil
	default:
	}
	if old != nil {
		old.Stop()
	}
	return j.consume(cons, window, on, onErr)
}

// inProgress tells the server every jobAckWait/3 that the messages taken
// are still being worked on.
func (j *jobInput) inProgress() {
	defer close(j.keepAlive)
	tick := time.NewTicker(jobAckWait / 3)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
		case <-j.stop:
			return
		}
		j.mu.Lock()
		held := slices.Collect(maps.Values(j.held))
		j.mu.Unlock()
		for _, m := range held {
			_ = m.InProgress()
		}
	}
}

// jobUnknownTries is how many times a message from a producer instance
// its service does not answer for (yet: a restarted instance's first
// messages may come before its service is asked again) is tried before it
// is dropped for good.
const jobUnknownTries = 5

// take records a message taken from the consumer; the functions it
// returns acknowledge it (done: its outputs are published), drop it for
// good (a forged or broken message: term), or have it sent again in a
// moment, reporting false once it has been tried jobUnknownTries times
// (later).
func (j *jobInput) take(m jetstream.Msg) (done, term func(), later func() bool) {
	md, err := m.Metadata()
	if err != nil {
		_ = m.Term()
		return nil, nil, nil
	}
	seq := md.Sequence.Stream
	j.mu.Lock()
	j.held[seq] = m
	j.mu.Unlock()
	end := func(f func() error) func() {
		return func() {
			j.mu.Lock()
			delete(j.held, seq)
			j.mu.Unlock()
			_ = f()
		}
	}
	later = func() bool {
		if md.NumDelivered >= jobUnknownTries {
			return false
		}
		end(func() error { return m.NakWithDelay(500 * time.Millisecond) })()
		return true
	}
	done = end(func() error {
		if md.NumDelivered > 1 {
			j.redelivered(md.NumDelivered)
		}
		return m.Ack()
	})
	return done, end(m.Term), later
}

// redelivered counts a redelivered message done, and says so at the
// first of each burst (after none for an ack wait): mostly, this instance
// takes over what another one did not finish.
func (j *jobInput) redelivered(times uint64) {
	j.redone.Add(1)
	j.mu.Lock()
	now := time.Now()
	quiet := now.Sub(j.lastRedone) > jobAckWait
	j.lastRedone = now
	j.mu.Unlock()
	if quiet {
		j.log.Warn("took a message the server had sent before: an instance died, took longer than the ack wait, or did not know its producer yet (the others of this burst are only counted as redelivered)",
			"delivered", times, "ack_wait", jobAckWait)
	}
}

// stopTaking stops consuming (what was taken and not done goes to another
// instance after jobAckWait) and the in-progress acks.
func (j *jobInput) stopTaking() {
	j.stopOnce.Do(func() {
		j.mu.Lock()
		cc := j.cc
		j.mu.Unlock()
		if cc != nil {
			cc.Stop()
			<-cc.Closed()
		}
		close(j.stop)
		if cc != nil {
			<-j.keepAlive
		}
	})
}

// idle reports whether the edge's consumer has nothing pending and nothing
// unacknowledged (a stream already removed: nothing is left either).
func (j *jobInput) idle(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	j.mu.Lock()
	cons := j.cons
	j.mu.Unlock()
	info, err := cons.Info(ctx)
	if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
		return true
	}
	return err == nil && info.NumPending == 0 && info.NumAckPending == 0
}

// errStreamStoreFailed is JetStream's "error creating store for stream":
// what a stream made again right after its namesake was deleted gets
// while the server still removes the old one's files.
const errStreamStoreFailed jetstream.ErrorCode = 10049

// createJobStream makes the stream, asking again while the server is
// still removing the files of a stream of the same name.
func createJobStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) error {
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		_, err := js.CreateStream(ctx, cfg)
		var apiErr *jetstream.APIError
		if err == nil || !errors.As(err, &apiErr) || apiErr.ErrorCode != errStreamStoreFailed {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
	}
}
