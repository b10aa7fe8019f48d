package pipeline

// Hostile tests of credit routing (natsPublisher.route, credits.pick, the
// direct subject <subject>.to.<stage>.<input>.<instance>): a replica that
// leaves while messages are sent to it alone, an instance that answers its
// service's PING but takes nothing, forged direct messages. In block flow
// no message may be lost or doubled and the producer must not stall.

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// routeRig is a producer stage g (one instance) whose port out is read by
// the served stage c, with instances of c in transports of their own.
type routeRig struct {
	t      *testing.T
	srv    *server.Server
	log    *slog.Logger
	window int
	pub    *natsPublisher
	prod   *natsTransport
	svcs   map[string]micro.Service // c's instances' services
	pools  map[string]*connPool     // each instance's connections
	ins    map[string]inlet
	queues map[string]*queue
	port   Port
}

func newRouteRig(t *testing.T, window int) *routeRig {
	srv := e2e.NATSServer(t, &server.Options{})
	r := &routeRig{t: t, srv: srv, log: slog.New(slog.DiscardHandler), window: window, svcs: map[string]micro.Service{},
		pools: map[string]*connPool{},
		ins:   map[string]inlet{}, queues: map[string]*queue{}, port: Port{Name: "out", Type: PortType{Kind: envelope.KindData}}}
	r.prod = r.transport("prod", "g")
	r.prod.remote = func(s string) bool { return s == "c" }
	r.prod.remoteReaders = func(s, p string) []consumerRef {
		if s == "g" {
			return []consumerRef{{stage: "c", input: 0}}
		}
		return nil
	}
	return r
}

// conn is a connection of its own to the rig's server.
func (r *routeRig) conn() *nats.Conn {
	nc, err := nats.Connect(r.srv.ClientURL())
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(nc.Close)
	return nc
}

// transport is the NATS transport of one process running inst of stage,
// which answers for the stage's service as a host's micro service does.
func (r *routeRig) transport(inst, stageName string) *natsTransport {
	fail := func(err error) { r.t.Errorf("the transport of %s failed: %v", inst, err) }
	pool, err := connectPool(nil, r.srv.ClientURL(), nil, inst, 1, func(_ *nats.Subscription, err error) { fail(err) }, r.log)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(pool.Close)
	r.pools[inst] = pool
	tr := newNATSTransport("rt", inst, pool, func(PortType) FlowMode { return FlowBlock }, r.window, fail, &sync.Map{}, r.log)
	tr.serving = stageName == "c"
	r.svcs[inst] = r.service(pool.conns[0], stageName, inst)
	return tr
}

// service registers inst as an instance of stage's micro service.
func (r *routeRig) service(nc *nats.Conn, stageName, inst string) micro.Service {
	svc, err := micro.AddService(nc, micro.Config{Name: ServiceName("rt", stageName), Version: "1.0.0", Metadata: map[string]string{"instance": inst}})
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { _ = svc.Stop() })
	return svc
}

// consumer attaches an instance of c with a queue of its own.
func (r *routeRig) consumer(ctx context.Context, inst string, capacity int) {
	tr := r.transport(inst, "c")
	r.queues[inst] = newQueue(capacity, FlowBlock)
	in, err := tr.attach(ctx, consumerRef{stage: "c", input: 0, q: r.queues[inst]}, "g", r.port)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(in.detach)
	// As the runner does once every input is attached: a message sent
	// from another connection before the server has the subscriptions
	// would go nowhere (TestGapOfAGoneProducerIsGivenUp lost its first
	// message that way under load).
	if err := tr.sync(); err != nil {
		r.t.Fatal(err)
	}
	r.ins[inst] = in
}

// publisher makes g's publisher and waits until it knows n instances of c.
func (r *routeRig) publisher(n int) {
	pub, err := r.prod.publisher("g", r.port, r.log)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(pub.Close)
	r.pub = pub.(*natsPublisher)
	r.waitRoutable(n)
}

// routable is how many instances of c said hello lately.
func (r *routeRig) routable() int {
	r.pub.mu.Lock()
	defer r.pub.mu.Unlock()
	return r.pub.cons["c/0"].routable(time.Now())
}

func (r *routeRig) waitRoutable(n int) {
	e2e.WaitFor(r.t, 10*time.Second, func() string { return fmt.Sprintf("%d instances of c to say hello (%d did)", n, r.routable()) },
		func() bool { return r.routable() == n })
}

// publish sends message i, failing when the producer waits more than 5 s
// for room (a stall).
func (r *routeRig) publish(ctx context.Context, i int) error {
	c, stop := context.WithTimeout(ctx, 5*time.Second)
	defer stop()
	err := r.pub.Publish(c, &stage.Msg{Envelope: envelope.Envelope{V: envelope.Version, Kind: envelope.KindData, Seq: uint64(i), Payload: []byte(strconv.Itoa(i))}})
	if err != nil {
		r.pub.mu.Lock()
		c := r.pub.cons["c/0"]
		state := fmt.Sprintf("sent %d, taken %v, base %d, sent to %v, live %v, gone %v, hello %v", r.pub.sent, c.taken, c.base, c.sentTo, c.live, c.gone, c.hello)
		r.pub.mu.Unlock()
		return fmt.Errorf("message %d: %w (the producer stalls: %s)", i, err, state)
	}
	return nil
}

// received counts what every consumer instance takes, by message.
type received struct {
	mu   sync.Mutex
	seen map[int]int    // message -> times taken
	by   map[string]int // instance -> messages taken
}

func newReceived() *received { return &received{seen: map[int]int{}, by: map[string]int{}} }

// take pops and acks what inst's queue gets until ctx is done.
func (rc *received) take(ctx context.Context, inst string, q *queue) {
	for {
		e, err := q.Pop(ctx)
		if err != nil {
			return
		}
		if e.Kind == envelope.KindData {
			i, _ := strconv.Atoi(string(e.Payload))
			rc.mu.Lock()
			rc.seen[i]++
			rc.by[inst]++
			rc.mu.Unlock()
		}
		e.Ack()
	}
}

func (rc *received) count(inst string) int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.by[inst]
}

// check says which of msgs messages were lost or taken twice.
func (rc *received) check(msgs int) (lost, twice []int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for i := range msgs {
		switch rc.seen[i] {
		case 0:
			lost = append(lost, i)
		case 1:
		default:
			twice = append(twice, i)
		}
	}
	return lost, twice
}

// waitAll waits until msgs messages have been taken, then reports the
// lost and doubled ones.
func (rc *received) waitAll(t *testing.T, msgs int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if lost, _ := rc.check(msgs); len(lost) == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	lost, twice := rc.check(msgs)
	if len(lost) > 0 {
		t.Errorf("%d of %d messages lost in block flow: %v (taken by instance: %v)", len(lost), msgs, lost, rc.by)
	}
	if len(twice) > 0 {
		t.Errorf("messages taken twice: %v", twice)
	}
}

// TestRouteReplicaLeavesMidRun: one of two instances of c leaves as a
// served stage does on SIGTERM (Runner.stopTaking: its input drains, then
// tells the producers it has ended) while the producer sends it messages
// alone. Every message reaches one instance exactly once and the producer
// never stalls.
func TestRouteReplicaLeavesMidRun(t *testing.T) {
	const window, msgs = 4, 400
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	r := newRouteRig(t, window)
	for _, inst := range []string{"stay", "leave"} {
		r.consumer(ctx, inst, 2*msgs)
	}
	r.publisher(2)
	rc := newReceived()
	for _, inst := range []string{"stay", "leave"} {
		go rc.take(ctx, inst, r.queues[inst])
	}
	left := make(chan error, 1)
	go func() {
		for rc.count("leave") < 50 && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		// What stopTaking does, then the stage finishes its queue (take
		// goes on) and the process goes.
		err := r.ins["leave"].drain(ctx)
		r.ins["leave"].ended()
		left <- err
	}()
	sent := 0
	for ; sent < msgs; sent++ {
		if err := r.publish(ctx, sent); err != nil {
			t.Error(err)
			break
		}
	}
	if err := <-left; err != nil {
		t.Fatalf("draining the instance that leaves: %v", err)
	}
	rc.waitAll(t, sent)
	t.Logf("taken by instance: %v", rc.by)
}

// TestRouteSurvivorEndsAtOnce: one of two instances of c dies (its
// connection goes, as on SIGKILL) holding a window of messages. At the
// end of stream the other is the only one there, yet it took only part
// of the stream: its input ends at once, not after eosWait waiting for
// what the dead one held. (It waited: TestLiveSurvivesSIGKILL's sink
// stood still for 3 s at the end, one run in eight.)
func TestRouteSurvivorEndsAtOnce(t *testing.T) {
	const window, msgs = 4, 40
	defer func(w time.Duration) { eosWait = w }(eosWait)
	eosWait = time.Minute
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := newRouteRig(t, window)
	for _, inst := range []string{"survivor", "victim"} { // the victim takes nothing
		r.consumer(ctx, inst, 2*msgs)
	}
	r.publisher(2)
	took, ended := 0, make(chan int, 1)
	go func() {
		for {
			e, err := r.queues["survivor"].Pop(ctx)
			if err != nil || e.Kind == envelope.KindEOS {
				ended <- took
				return
			}
			took++
			e.Ack()
		}
	}()
	for i := range msgs {
		if err := r.publish(ctx, i); err != nil {
			t.Fatal(err)
		}
	}
	r.pools["victim"].Close()
	e2e.WaitFor(t, 10*time.Second, func() string { return "the victim's service to be gone" },
		func() bool { return len(r.prod.instancesOf("c").live()) == 1 })
	if err := r.pub.Publish(ctx, &stage.Msg{Envelope: envelope.Envelope{V: envelope.Version, Kind: envelope.KindEOS}}); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-ended:
		if ctx.Err() != nil || n < msgs-window {
			t.Errorf("the survivor took %d messages (want at least %d), its input ended: %v", n, msgs-window, ctx.Err() == nil)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("the survivor's input has not ended 15 s after the end of stream (eosWait is %s)", eosWait)
	}
}

// TestRouteInstanceThatTakesNothing: beside two real instances of c, a
// third answers the stage's service PING (a phantom: an instance whose
// input is not attached yet, an older avflow without subjects of its own)
// but never subscribes. Nothing is sent to it alone, so nothing is lost
// and the producer never stalls. (When routing picked among the instances
// the service answered for, its messages were lost and the producer
// stalled on them.)
func TestRouteInstanceThatTakesNothing(t *testing.T) {
	const window, msgs = 4, 40
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	r := newRouteRig(t, window)
	for _, inst := range []string{"a", "b"} {
		r.consumer(ctx, inst, 2*msgs)
	}
	r.service(r.conn(), "c", "phantom")
	r.publisher(2)
	rc := newReceived()
	for _, inst := range []string{"a", "b"} {
		go rc.take(ctx, inst, r.queues[inst])
	}
	for i := range msgs {
		if err := r.publish(ctx, i); err != nil {
			t.Fatal(err)
		}
	}
	rc.waitAll(t, msgs)
	if rc.count("a") == 0 || rc.count("b") == 0 {
		t.Errorf("taken by instance: %v, want both real ones to take some", rc.by)
	}
}

// TestRouteForgedDirectMessages: messages published on an instance's
// direct subject by someone who is not a producer of the edge (no
// instance header, an unknown instance, a chunk with nothing before it)
// never reach the stage, and the real messages all do.
func TestRouteForgedDirectMessages(t *testing.T) {
	const window, msgs = 4, 40
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	r := newRouteRig(t, window)
	for _, inst := range []string{"a", "b"} {
		r.consumer(ctx, inst, 4*msgs)
	}
	r.publisher(2)
	forger := r.conn()
	good := &stage.Msg{Envelope: envelope.Envelope{V: envelope.Version, Kind: envelope.KindData, Payload: []byte("9999")}}
	data, err := stage.AppendMarshal(nil, good)
	if err != nil {
		t.Fatal(err)
	}
	subject := Subject("rt", "g", "out")
	forged := []*nats.Msg{
		{Data: data},
		{Data: data, Header: nats.Header{HeaderInstance: []string{"forger"}}},
		{Data: []byte("\x00garbage"), Header: nats.Header{HeaderInstance: []string{"prod"}}},
		{Data: data[:10], Header: nats.Header{HeaderInstance: []string{"forger"}, envelope.HeaderChunk: []string{"1 2 2"}}},
	}
	for _, inst := range []string{"a", "b", "nobody"} {
		for _, m := range forged {
			m.Subject = directSubject(subject, consumerRef{stage: "c", input: 0}, inst)
			if err := forger.PublishMsg(m); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := forger.Flush(); err != nil {
		t.Fatal(err)
	}
	rc := newReceived()
	for _, inst := range []string{"a", "b"} {
		go rc.take(ctx, inst, r.queues[inst])
	}
	for i := range msgs {
		if err := r.publish(ctx, i); err != nil {
			t.Fatal(err)
		}
	}
	rc.waitAll(t, msgs)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if n := rc.seen[9999]; n > 0 {
		t.Errorf("a forged message reached the stage %d times", n)
	}
}
