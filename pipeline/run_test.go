package pipeline_test

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"go.uber.org/goleak"
)

// Test stages, registered in a private environment: "gen" emits numbered
// data messages, "relay" passes them on (optionally slowly or failing),
// "collect" records what arrives.

var dataPort = pipeline.PortType{Kind: envelope.KindData}

type gen struct {
	stage.Base
	n, size, sent int
	forever       bool
	deaf          bool // ignores its context, as FFmpeg's lavfi reads do
}

func (g *gen) Process(ctx context.Context, _ stage.Batch) (stage.Batch, error) {
	if !g.forever && g.sent >= g.n {
		return nil, io.EOF
	}
	if g.forever && !g.deaf {
		select {
		case <-time.After(time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	p := make([]byte, g.size)
	binary.BigEndian.PutUint64(p, uint64(g.sent))
	for i := 8; i < len(p); i++ {
		p[i] = byte(g.sent + i)
	}
	flowProbe.add(true, g.sent)
	g.sent++
	return stage.Batch{{Envelope: envelope.Envelope{Kind: envelope.KindData, Payload: p, Meta: map[string]string{"sum": fmt.Sprintf("%x", sha256.Sum256(p))}}}}, nil
}

// flowProbe, when set, records the order in which gen makes messages and
// relay takes them (TestBlockWaitsForSlowStage).
var flowProbe *eventLog

// eventLog is an ordered record of events from several goroutines.
type eventLog struct {
	mu     sync.Mutex
	events []flowEvent
}

type flowEvent struct {
	made bool // gen made message n; else relay took message n
	n    int
}

func (l *eventLog) add(made bool, n int) {
	if l == nil {
		return
	}
	l.mu.Lock()
	l.events = append(l.events, flowEvent{made, n})
	l.mu.Unlock()
}

type relay struct {
	stage.Base
	delay  time.Duration
	jitter time.Duration // extra random delay per call, so replicas finish out of order
	failAt int
	quitAt int // return an error wrapping context.Canceled (its own, not the run's)
	seen   int
	hold   <-chan struct{} // when set, the first call waits until it is closed
}

var errBoom = errors.New("boom")

func (r *relay) Process(ctx context.Context, in stage.Batch) (stage.Batch, error) {
	for _, e := range in {
		flowProbe.add(false, int(binary.BigEndian.Uint64(e.Payload)))
	}
	r.seen++
	if r.failAt > 0 && r.seen == r.failAt {
		return nil, errBoom
	}
	if r.quitAt > 0 && r.seen == r.quitAt {
		return nil, fmt.Errorf("gave up: %w", context.Canceled)
	}
	if r.hold != nil && r.seen == 1 {
		select {
		case <-r.hold:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	d := r.delay
	if r.jitter > 0 {
		d += time.Duration(rand.Int64N(int64(r.jitter)))
	}
	if d > 0 { // simulated work
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
	}
	out := make(stage.Batch, len(in))
	for i, e := range in {
		cp := *e
		cp.Port = ""
		out[i] = &cp
	}
	return out, nil
}

type collector struct {
	stage.Base
	mu      sync.Mutex
	got     []*stage.Msg
	flushed bool
	closed  bool
	arrived chan struct{} // closed at the first message (see first)
}

// first is closed once a message has arrived.
func (c *collector) first() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.arrived == nil {
		c.arrived = make(chan struct{})
	}
	return c.arrived
}

// waitFirst waits up to 10s for the first message.
func (c *collector) waitFirst(t *testing.T) {
	t.Helper()
	select {
	case <-c.first():
	case <-time.After(10 * time.Second):
		t.Error("no message reached the collector within 10s")
	}
}

func (c *collector) Process(_ context.Context, in stage.Batch) (stage.Batch, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(in) > 0 && len(c.got) == 0 {
		if c.arrived == nil {
			c.arrived = make(chan struct{})
		}
		close(c.arrived)
	}
	for _, e := range in {
		if e.Local != nil {
			return nil, errors.New("unexpected in-process object")
		}
		cp := *e
		c.got = append(c.got, &cp)
	}
	return nil, nil
}
func (c *collector) Flush(context.Context) (stage.Batch, error) { c.flushed = true; return nil, nil }
func (c *collector) Close() error                               { c.closed = true; return nil }

// relays are the relay instances made (the replica tests count them).
var (
	relaysMu sync.Mutex
	relays   []*relay
)

// holdRelays holds the relays made with hold: true in their first call
// until a test closes it (set before the run).
var holdRelays <-chan struct{}

func testEnv(t testing.TB, col *collector) *pipeline.Environment {
	env := pipeline.NewEnvironment()
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(env.Register(pipeline.Spec{
		Kind: "gen", MaxInputs: 0,
		Params: []pipeline.Param{
			{Name: "n", Type: pipeline.TypeInt, Default: 100},
			{Name: "size", Type: pipeline.TypeInt, Default: 64},
			{Name: "forever", Type: pipeline.TypeBool, Default: false},
			{Name: "deaf", Type: pipeline.TypeBool, Default: false},
		},
		Ports: func(pipeline.Params, []pipeline.PortType) ([]pipeline.Port, error) {
			return []pipeline.Port{{Name: "out", Type: dataPort}}, nil
		},
		New: func(_ context.Context, in pipeline.Init) (stage.Stage, error) {
			return &gen{n: in.Params.Int("n"), size: in.Params.Int("size"), forever: in.Params.Bool("forever"), deaf: in.Params.Bool("deaf")}, nil
		},
	}))
	must(env.Register(pipeline.Spec{
		Kind: "relay", MinInputs: 1, MaxInputs: 1,
		Params: []pipeline.Param{
			{Name: "delay", Type: pipeline.TypeDuration, Default: "0s"},
			{Name: "fail_at", Type: pipeline.TypeInt, Default: 0},
			{Name: "quit_at", Type: pipeline.TypeInt, Default: 0},
			{Name: "jitter", Type: pipeline.TypeDuration, Default: "0s"},
			{Name: "hold", Type: pipeline.TypeBool, Default: false},
		},
		Ports: func(_ pipeline.Params, in []pipeline.PortType) ([]pipeline.Port, error) {
			return []pipeline.Port{{Name: "out", Type: in[0]}}, nil
		},
		New: func(_ context.Context, in pipeline.Init) (stage.Stage, error) {
			r := &relay{delay: in.Params.Duration("delay"), jitter: in.Params.Duration("jitter"), failAt: in.Params.Int("fail_at"), quitAt: in.Params.Int("quit_at")}
			if in.Params.Bool("hold") {
				r.hold = holdRelays
			}
			relaysMu.Lock()
			relays = append(relays, r)
			relaysMu.Unlock()
			return r, nil
		},
		Replicable: func(pipeline.Params) error { return nil },
	}))
	must(env.Register(pipeline.Spec{
		Kind: "collect", MinInputs: 1, MaxInputs: -1,
		Ports: func(pipeline.Params, []pipeline.PortType) ([]pipeline.Port, error) { return nil, nil },
		New:   func(context.Context, pipeline.Init) (stage.Stage, error) { return col, nil },
	}))
	return env
}

func runYAML(t *testing.T, env *pipeline.Environment, yaml string, opts pipeline.Options, during func(*pipeline.Runner)) (*pipeline.Runner, error) {
	t.Helper()
	return runWithin(t, time.Minute, env, yaml, opts, during)
}

// runWithin is runYAML that fails the test when the run has not ended
// within limit (a hang); it then cancels the run and waits for it.
func runWithin(t *testing.T, limit time.Duration, env *pipeline.Environment, yaml string, opts pipeline.Options, during func(*pipeline.Runner)) (*pipeline.Runner, error) {
	t.Helper()
	cfg, err := pipeline.Parse([]byte(yaml), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Validate(cfg); err != nil {
		t.Fatal(err)
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	r, err := pipeline.NewRunner(env, cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	hung := time.NewTimer(limit)
	defer hung.Stop()
	if during != nil {
		select {
		case <-r.Ready():
			during(r)
		case err := <-done:
			return r, err
		}
	}
	select {
	case err := <-done:
		return r, err
	case <-hung.C:
	}
	t.Errorf("the run did not end within %s: it hangs", limit)
	cancel()
	select {
	case err := <-done:
		return r, err
	case <-time.After(10 * time.Second):
		t.Fatal("the run did not end within 10s of its cancellation either")
		return r, nil
	}
}

// logRecorder collects a run's text logs and lets a test wait for a line.
type logRecorder struct {
	mu      sync.Mutex
	lines   []string
	changed chan struct{} // closed and replaced at every write
}

func newLogRecorder() *logRecorder { return &logRecorder{changed: make(chan struct{})} }

func (l *logRecorder) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, strings.TrimSpace(string(p)))
	close(l.changed)
	l.changed = make(chan struct{})
	return len(p), nil
}

func (l *logRecorder) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// find returns the first line holding every one of parts, and a channel
// that is closed when more is written.
func (l *logRecorder) find(parts ...string) (string, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
next:
	for _, line := range l.lines {
		for _, p := range parts {
			if !strings.Contains(line, p) {
				continue next
			}
		}
		return line, nil
	}
	return "", l.changed
}

// wait waits up to limit for a line holding every one of parts; the test
// fails (and goes on) when none comes.
func (l *logRecorder) wait(t *testing.T, limit time.Duration, parts ...string) string {
	t.Helper()
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	for {
		line, changed := l.find(parts...)
		if changed == nil {
			return line
		}
		select {
		case <-changed:
		case <-deadline.C:
			l.mu.Lock()
			defer l.mu.Unlock()
			t.Errorf("no log line with %q within %s; the logs:\n%s", parts, limit, strings.Join(l.lines, "\n"))
			return ""
		}
	}
}

// smallPayloadServer starts a NATS server with a 64 KiB max payload, so
// that every test message larger than that is chunked.
func smallPayloadServer(t *testing.T) string {
	return e2e.NATSServer(t, &server.Options{MaxPayload: 64 << 10}).ClientURL()
}

func TestRunDeliversEverythingInOrder(t *testing.T) {
	tests := []struct {
		name      string
		transport string
		external  bool
		size      int
	}{
		{"embedded nats small", "nats", false, 1 << 10},
		{"embedded nats 3MB (1080p frame size)", "nats", false, 3 << 20},
		{"external nats chunked", "nats", true, 300 << 10},
		{"local", "local", false, 300 << 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			noLeaks(t)
			opts := pipeline.Options{Transport: tt.transport}
			if tt.external {
				opts.NATSURL = smallPayloadServer(t)
			}
			col := &collector{}
			const n = 60
			yaml := fmt.Sprintf(`name: order
queue: 4
stages:
  - {name: g, kind: gen, params: {n: %d, size: %d}}
  - {name: r, kind: relay, inputs: [g]}
  - {name: c, kind: collect, inputs: [r]}
`, n, tt.size)
			r, err := runYAML(t, testEnv(t, col), yaml, opts, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(col.got) != n || !col.flushed || !col.closed {
				t.Fatalf("got %d messages (flushed %v, closed %v), want %d", len(col.got), col.flushed, col.closed, n)
			}
			for i, e := range col.got {
				if got := binary.BigEndian.Uint64(e.Payload); got != uint64(i) {
					t.Fatalf("message %d carries number %d: out of order", i, got)
				}
				if sum := fmt.Sprintf("%x", sha256.Sum256(e.Payload)); sum != e.Meta["sum"] {
					t.Fatalf("message %d: payload damaged in transit", i)
				}
				if len(e.Stamps) != 2 || e.Stamps[0].Stage != "g" || e.Stamps[1].Stage != "r" {
					t.Fatalf("message %d stamps %+v, want g then r", i, e.Stamps)
				}
			}
			for _, s := range r.Metrics().Snapshot() {
				if s.Drops != 0 {
					t.Errorf("stage %s dropped %d in block mode", s.Name, s.Drops)
				}
			}
		})
	}
}

func TestDropOldestCountsDrops(t *testing.T) {
	for _, transport := range []string{"nats", "local"} {
		t.Run(transport, func(t *testing.T) {
			col := &collector{}
			const n = 300
			r, err := runYAML(t, testEnv(t, col), fmt.Sprintf(`name: drop
flow: drop-oldest
queue: 2
stages:
  - {name: g, kind: gen, params: {n: %d}}
  - {name: r, kind: relay, inputs: [g], params: {delay: 2ms}}
  - {name: c, kind: collect, inputs: [r]}
`, n), pipeline.Options{Transport: transport}, nil)
			if err != nil {
				t.Fatal(err)
			}
			var drops int64
			for _, s := range r.Metrics().Snapshot() {
				drops += s.Drops
			}
			if drops == 0 {
				t.Fatalf("a slow stage behind a fast source dropped nothing")
			}
			if int64(len(col.got))+drops != n {
				t.Fatalf("delivered %d + dropped %d != sent %d", len(col.got), drops, n)
			}
			last := -1
			for _, e := range col.got {
				v := int(binary.BigEndian.Uint64(e.Payload))
				if v <= last {
					t.Fatalf("order broken: %d after %d", v, last)
				}
				last = v
			}
			if last != n-1 {
				t.Fatalf("newest message %d was not delivered (last %d): drop-oldest must keep the newest", n-1, last)
			}
		})
	}
}

// TestBlockWaitsForSlowStage: in block flow a fast producer runs at most
// a window (queue: 3) ahead of a slow consumer: gen makes message m only
// after relay took message m-4 (one more for the credit, sent as relay
// takes a message, that can come before relay notes it), and it did run
// that far ahead, so it waited; nothing is lost. Over both transports.
func TestBlockWaitsForSlowStage(t *testing.T) {
	const window, n = 3, 80
	for _, transport := range []string{"nats", "local"} {
		t.Run(transport, func(t *testing.T) {
			probe := &eventLog{}
			flowProbe = probe
			defer func() { flowProbe = nil }()
			col := &collector{}
			_, err := runYAML(t, testEnv(t, col), fmt.Sprintf(`name: block
queue: %d
stages:
  - {name: g, kind: gen, params: {n: %d}}
  - {name: r, kind: relay, inputs: [g], params: {delay: 2ms}}
  - {name: c, kind: collect, inputs: [r]}
`, window, n), pipeline.Options{Transport: transport}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(col.got) != n {
				t.Fatalf("got %d of %d", len(col.got), n)
			}
			took, maxLead := 0, 0
			for _, ev := range probe.events {
				if !ev.made {
					took = ev.n + 1
					continue
				}
				lead := ev.n - took
				if lead > window+1 {
					t.Fatalf("gen made message %d when relay had taken %d: %d ahead, more than the window of %d allows", ev.n, took, lead, window)
				}
				maxLead = max(maxLead, lead)
			}
			if maxLead < window-1 {
				t.Fatalf("gen was never more than %d messages ahead of the slow relay: nothing had to wait", maxLead)
			}
		})
	}
}

func TestStageErrorStopsRun(t *testing.T) {
	noLeaks(t)
	for _, transport := range []string{"nats", "local"} {
		col := &collector{}
		r, err := runYAML(t, testEnv(t, col), `name: fail
stages:
  - {name: g, kind: gen, params: {n: 1000}}
  - {name: bad, kind: relay, inputs: [g], params: {fail_at: 10}}
  - {name: c, kind: collect, inputs: [bad]}
`, pipeline.Options{Transport: transport}, nil)
		if !errors.Is(err, errBoom) {
			t.Fatalf("%s: got %v, want the stage's error", transport, err)
		}
		select {
		case <-r.Failed():
		default:
			t.Errorf("%s: Failed() is not closed after a failed run", transport)
		}
		if !strings.Contains(err.Error(), `stage "bad" (relay)`) {
			t.Errorf("%s: error does not name the stage: %v", transport, err)
		}
		var se *pipeline.StageError
		if !errors.Is(err, pipeline.ErrStage) || !errors.As(err, &se) || se.Stage != "bad" || se.Kind != "relay" {
			t.Errorf("%s: error %v is not a StageError of stage bad matching ErrStage", transport, err)
		}
		if col.flushed {
			t.Errorf("%s: the sink was flushed (finalised) after a failure", transport)
		}
		if !col.closed {
			t.Errorf("%s: the sink was not closed", transport)
		}
	}
}

func TestDrainFinishesCleanly(t *testing.T) {
	noLeaks(t)
	col := &collector{}
	_, err := runYAML(t, testEnv(t, col), `name: live
flow: drop-oldest
stages:
  - {name: g, kind: gen, params: {forever: true}}
  - {name: c, kind: collect, inputs: [g]}
`, pipeline.Options{}, func(r *pipeline.Runner) {
		col.waitFirst(t)
		r.Drain()
		r.Drain() // twice is fine
		select {
		case <-r.Failed():
			t.Error("Failed() is closed on a run that is draining cleanly")
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if !col.flushed || len(col.got) == 0 {
		t.Fatalf("drain: flushed %v with %d messages", col.flushed, len(col.got))
	}
}

func TestCancelAborts(t *testing.T) {
	noLeaks(t)
	col := &collector{}
	env := testEnv(t, col)
	cfg, _ := pipeline.Parse([]byte(`name: cancel
stages:
  - {name: g, kind: gen, params: {forever: true}}
  - {name: c, kind: collect, inputs: [g]}
`), "t.yaml")
	r, err := pipeline.NewRunner(env, cfg, pipeline.Options{Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	errStop := errors.New("stopped by the test")
	go func() {
		<-r.Ready()
		select {
		case <-col.first(): // the run is under way
		case <-time.After(10 * time.Second):
		}
		cancel(errStop)
	}()
	if err := r.Run(ctx); !errors.Is(err, pipeline.ErrCanceled) || !errors.Is(err, errStop) {
		t.Fatalf("got %v, want ErrCanceled wrapping the cancellation's cause", err)
	}
	if col.flushed {
		t.Fatal("a cancelled run finalised its sink")
	}
}

func TestUnreachableNATS(t *testing.T) {
	// A port nothing listens on: taken from the system, then let go.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "nats://" + ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	col := &collector{}
	_, err = runYAML(t, testEnv(t, col), `name: dead
stages:
  - {name: g, kind: gen}
  - {name: c, kind: collect, inputs: [g]}
`, pipeline.Options{NATSURL: url}, nil)
	if !errors.Is(err, pipeline.ErrTransport) || !errors.Is(err, nats.ErrNoServers) || !strings.Contains(err.Error(), url) {
		t.Fatalf("got %v, want a transport error naming the URL, wrapping nats.ErrNoServers", err)
	}
}

// TestNATSErrorsStayInTheChain: an asynchronous NATS error (the server
// refuses the stages' subscriptions) fails the run with the NATS error
// itself in the chain, not only its text.
func TestNATSErrorsStayInTheChain(t *testing.T) {
	noLeaks(t)
	s := e2e.NATSServer(t, &server.Options{Users: []*server.User{{Username: "u", Password: "p", Permissions: &server.Permissions{
		Subscribe: &server.SubjectPermission{Deny: []string{"avflow.>"}},
	}}}})
	url := strings.Replace(s.ClientURL(), "nats://", "nats://u:p@", 1)
	col := &collector{}
	_, err := runWithin(t, 20*time.Second, testEnv(t, col), `name: denied
stages:
  - {name: g, kind: gen}
  - {name: c, kind: collect, inputs: [g]}
`, pipeline.Options{NATSURL: url}, nil)
	if !errors.Is(err, pipeline.ErrTransport) || !errors.Is(err, nats.ErrPermissionViolation) {
		t.Fatalf("got %v, want a transport error wrapping nats.ErrPermissionViolation", err)
	}
}

// noLeaks checks, after the test and its cleanups, that no goroutine it
// started is left running (runner, NATS server and connections included).
func noLeaks(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

// TestStagesAreMicroServices: every stage answers NATS micro discovery
// with its subjects, and its metrics endpoint returns its counters.
func TestStagesAreMicroServices(t *testing.T) {
	noLeaks(t)
	col := &collector{}
	_, err := runYAML(t, testEnv(t, col), `name: svc
flow: drop-oldest
stages:
  - {name: g, kind: gen, params: {forever: true}}
  - {name: c, kind: collect, inputs: [g]}
`, pipeline.Options{Listen: true}, func(r *pipeline.Runner) {
		defer r.Drain()
		nc, err := nats.Connect(r.NATSURL(), nats.UserInfo(r.ListenCredentials()))
		if err != nil {
			t.Error(err)
			return
		}
		defer nc.Close()
		msg, err := nc.Request("$SRV.INFO."+pipeline.ServiceName("svc", "c"), nil, 2*time.Second)
		if err != nil {
			t.Errorf("micro INFO: %v", err)
			return
		}
		var info micro.Info
		if err := json.Unmarshal(msg.Data, &info); err != nil {
			t.Error(err)
			return
		}
		if info.Name != "svc-c" || info.Metadata["inputs"] != "avflow.svc.g.out" || info.Metadata["device"] != "cpu:0" {
			t.Errorf("info: %+v", info)
		}
		// The stage counts a message before the collector gets it.
		col.waitFirst(t)
		var st pipeline.StageStats
		msg, err = nc.Request("avflow.svc.c.$metrics", nil, 2*time.Second)
		if err != nil {
			t.Errorf("metrics endpoint: %v", err)
			return
		}
		if err := json.Unmarshal(msg.Data, &st); err != nil || st.Name != "c" {
			t.Errorf("metrics: %s (%v)", msg.Data, err)
			return
		}
		if st.In == 0 {
			t.Errorf("metrics endpoint never counted a message: %+v", st)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestReplicasKeepOrder: three instances of a stage with jittered work
// share its input; every message arrives once, in order, all three worked,
// over NATS and in-process.
func TestReplicasKeepOrder(t *testing.T) {
	for _, transport := range []string{"nats", "local"} {
		t.Run(transport, func(t *testing.T) {
			noLeaks(t)
			relaysMu.Lock()
			relays = nil
			relaysMu.Unlock()
			col := &collector{}
			const n = 90
			_, err := runYAML(t, testEnv(t, col), fmt.Sprintf(`name: reps
stages:
  - {name: g, kind: gen, params: {n: %d}}
  - {name: r, kind: relay, inputs: [g], replicas: 3, params: {jitter: 3ms}}
  - {name: c, kind: collect, inputs: [r]}
`, n), pipeline.Options{Transport: transport}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(col.got) != n {
				t.Fatalf("got %d messages, want %d", len(col.got), n)
			}
			for i, e := range col.got {
				if got := binary.BigEndian.Uint64(e.Payload); got != uint64(i) {
					t.Fatalf("message %d carries number %d: out of order", i, got)
				}
			}
			relaysMu.Lock()
			defer relaysMu.Unlock()
			worked := 0
			for _, r := range relays {
				if r.seen > 0 {
					worked++
				}
			}
			if len(relays) != 3 || worked < 2 {
				t.Fatalf("%d instances made, %d did work; want 3 sharing the input", len(relays), worked)
			}
		})
	}
}

// TestReplicaErrorStopsRun: one failing instance fails the run, naming the
// stage, and leaves no goroutine behind.
func TestReplicaErrorStopsRun(t *testing.T) {
	noLeaks(t)
	col := &collector{}
	_, err := runYAML(t, testEnv(t, col), `name: repfail
stages:
  - {name: g, kind: gen, params: {n: 200}}
  - {name: r, kind: relay, inputs: [g], replicas: 2, params: {fail_at: 20, jitter: 1ms}}
  - {name: c, kind: collect, inputs: [r]}
`, pipeline.Options{Transport: "local"}, nil)
	if !errors.Is(err, errBoom) || !strings.Contains(err.Error(), `"r"`) {
		t.Fatalf("want boom from stage r, got %v", err)
	}
}

// TestDownstreamDevices: a stage learns the devices of the stages that
// take its frames by reference (the local transport), and nothing when its
// outputs cross NATS; Consumers names the stages reading each port.
func TestDownstreamDevices(t *testing.T) {
	for _, tt := range []struct {
		transport string
		want      []string
	}{
		{"local", []string{"cpu:0", "cpu:0"}},
		{"nats", nil},
	} {
		t.Run(tt.transport, func(t *testing.T) {
			col := &collector{}
			env := testEnv(t, col)
			var got []string
			var readers map[string][]string
			if err := env.Register(pipeline.Spec{
				Kind: "probe",
				Ports: func(pipeline.Params, []pipeline.PortType) ([]pipeline.Port, error) {
					return []pipeline.Port{{Name: "out", Type: dataPort}}, nil
				},
				New: func(_ context.Context, in pipeline.Init) (stage.Stage, error) {
					got, readers = in.Downstream, in.Consumers
					return &gen{n: 3, size: 8}, nil
				},
			}); err != nil {
				t.Fatal(err)
			}
			_, err := runYAML(t, env, `name: downstream
stages:
  - {name: p, kind: probe}
  - {name: a, kind: relay, inputs: [p]}
  - {name: b, kind: relay, inputs: [p]}
  - {name: c, kind: collect, inputs: [a, b]}
`, pipeline.Options{Transport: tt.transport}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("Downstream = %v, want %v", got, tt.want)
			}
			// Consumers names the readers of each port over both transports.
			if want := []string{"a", "b"}; !slices.Equal(readers["out"], want) || len(readers) != 1 {
				t.Fatalf("Consumers = %v, want out: %v", readers, want)
			}
		})
	}
}

// chainOf is a pipeline of n stages in a line: gen, relays, collect.
func chainOf(name string, n, messages int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "name: %s\nstages:\n  - {name: s0, kind: gen, params: {n: %d}}\n", name, messages)
	for i := 1; i < n-1; i++ {
		fmt.Fprintf(&b, "  - {name: s%d, kind: relay, inputs: [s%d]}\n", i, i-1)
	}
	fmt.Fprintf(&b, "  - {name: s%d, kind: collect, inputs: [s%d]}\n", n-1, n-2)
	return b.String()
}

// TestThousandStages: a chain of 1,000 stages starts, carries every
// message in order and finishes, over both transports, well within a
// minute, and leaves no goroutine behind.
func TestThousandStages(t *testing.T) {
	for _, transport := range []string{"nats", "local"} {
		t.Run(transport, func(t *testing.T) {
			noLeaks(t)
			col := &collector{}
			const n = 20
			cfg, err := pipeline.Parse([]byte(chainOf("thousand", 1000, n)), "thousand.yaml")
			if err != nil {
				t.Fatal(err)
			}
			env := testEnv(t, col)
			if err := env.Validate(cfg); err != nil {
				t.Fatal(err)
			}
			r, err := pipeline.NewRunner(env, cfg, pipeline.Options{Transport: transport, Log: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := r.Run(ctx); err != nil {
				t.Fatal(err)
			}
			if len(col.got) != n {
				t.Fatalf("got %d of %d messages", len(col.got), n)
			}
			for i, e := range col.got {
				if got := binary.BigEndian.Uint64(e.Payload); got != uint64(i) {
					t.Fatalf("message %d carries number %d: out of order", i, got)
				}
			}
		})
	}
}

// TestStampsAreBounded: a message through a chain longer than MaxStamps
// keeps its source's stamp (latency is measured from it) and the latest
// ones, not one stamp per stage it passed.
func TestStampsAreBounded(t *testing.T) {
	for _, transport := range []string{"nats", "local"} {
		t.Run(transport, func(t *testing.T) {
			col := &collector{}
			const stages = 3 * pipeline.MaxStamps
			if _, err := runYAML(t, testEnv(t, col), chainOf("stamps", stages, 3), pipeline.Options{Transport: transport}, nil); err != nil {
				t.Fatal(err)
			}
			if len(col.got) != 3 {
				t.Fatalf("got %d of 3 messages", len(col.got))
			}
			for _, e := range col.got {
				if len(e.Stamps) != pipeline.MaxStamps {
					t.Fatalf("a message through %d stages carries %d stamps, want %d", stages, len(e.Stamps), pipeline.MaxStamps)
				}
				want := []string{"s0"}
				for i := stages - pipeline.MaxStamps; i < stages-1; i++ {
					want = append(want, fmt.Sprintf("s%d", i))
				}
				var got []string
				for _, s := range e.Stamps {
					got = append(got, s.Stage)
				}
				if !slices.Equal(got, want) {
					t.Fatalf("stamps of %v, want %v", got, want)
				}
			}
		})
	}
}

// TestStagesShareConnections: the stages of a run share a few NATS
// connections (one per CPU at most), not one each.
func TestStagesShareConnections(t *testing.T) {
	noLeaks(t)
	s := e2e.NATSServer(t, &server.Options{})
	col := &collector{}
	clients := 0
	_, err := runYAML(t, testEnv(t, col), chainOf("share", 50, 5), pipeline.Options{NATSURL: s.ClientURL()}, func(*pipeline.Runner) {
		clients = s.NumClients()
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := runtime.GOMAXPROCS(0); clients == 0 || clients > want {
		t.Fatalf("50 stages held %d NATS connections, want 1 to %d", clients, want)
	}
}

// TestEndedConsumerReleasesProducer: a stage that stops with its own
// "canceled" error while the run goes on fails the run, naming it, and
// its producer, which was waiting for its room (local) or credits (NATS),
// is released: the run ends instead of hanging.
func TestEndedConsumerReleasesProducer(t *testing.T) {
	for _, transport := range []string{"nats", "local"} {
		t.Run(transport, func(t *testing.T) {
			noLeaks(t)
			col := &collector{}
			_, err := runWithin(t, 20*time.Second, testEnv(t, col), `name: quit
stages:
  - {name: g, kind: gen, params: {n: 1000}}
  - {name: r, kind: relay, inputs: [g], params: {quit_at: 3}}
  - {name: c, kind: collect, inputs: [r]}
`, pipeline.Options{Transport: transport}, nil)
			if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), `stage "r" (relay): gave up`) {
				t.Fatalf("got %v, want stage r's own error", err)
			}
			if col.flushed {
				t.Error("the sink was finalised after a stage failed")
			}
		})
	}
}

// TestConsumerEndReleasesWaitingProducer: a consumer that ends while its
// producer still sends (here: removed from the graph) tells the producer,
// which stops waiting for its credits and warns, naming the subject and
// the consumer; Drain then ends the run.
func TestConsumerEndReleasesWaitingProducer(t *testing.T) {
	noLeaks(t)
	logs := newLogRecorder()
	col := &collector{}
	_, err := runWithin(t, 20*time.Second, testEnv(t, col), `name: early
transport: nats
stages:
  - {name: g, kind: gen, params: {forever: true}}
  - {name: c, kind: collect, inputs: [g]}
`, pipeline.Options{Log: logs.logger()}, func(r *pipeline.Runner) {
		defer r.Drain()
		col.waitFirst(t)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := r.RemoveStages(ctx, "c"); err != nil {
			t.Error(err)
			return
		}
		logs.wait(t, 10*time.Second, "a consumer has ended", "subject=avflow.early.g.out", "consumer=c", "stage=g")
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSlowConsumerWarns: a producer that waits long for a consumer (its
// room in the local queue, its credits over NATS) warns, naming itself,
// the port or subject and the consumer, and goes on once the consumer
// takes again: nothing is lost.
func TestSlowConsumerWarns(t *testing.T) {
	defer pipeline.SetSlowConsumerAfter(50 * time.Millisecond)()
	for _, tt := range []struct {
		transport string
		want      []string
	}{
		{"nats", []string{"slow consumer: waiting for credits", "stage=g", "subject=avflow.slow.g.out", "waiting_for=[h]"}},
		{"local", []string{"slow consumer: waiting for room in its input queue", "stage=g", "port=g.out", "waiting_for=h"}},
	} {
		t.Run(tt.transport, func(t *testing.T) {
			noLeaks(t)
			hold := make(chan struct{})
			holdRelays = hold
			logs := newLogRecorder()
			col := &collector{}
			const n = 50
			_, err := runWithin(t, 30*time.Second, testEnv(t, col), fmt.Sprintf(`name: slow
stages:
  - {name: g, kind: gen, params: {n: %d}}
  - {name: h, kind: relay, inputs: [g], params: {hold: true}}
  - {name: c, kind: collect, inputs: [h]}
`, n), pipeline.Options{Transport: tt.transport, Log: logs.logger()}, func(*pipeline.Runner) {
				defer close(hold)
				logs.wait(t, 10*time.Second, tt.want...)
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(col.got) != n {
				t.Fatalf("got %d of %d messages", len(col.got), n)
			}
		})
	}
}

// TestDrainWhileStarting: a Drain while a stage is still being built (a
// source opening a server that never answers) cancels the context the stage
// was given, and the run ends at once with ErrCanceled naming the stage.
func TestDrainWhileStarting(t *testing.T) {
	noLeaks(t)
	for _, transport := range []string{"nats", "local"} {
		t.Run(transport, func(t *testing.T) {
			col := &collector{}
			env := testEnv(t, col)
			opening := make(chan struct{})
			if err := env.Register(pipeline.Spec{
				Kind: "opener",
				Ports: func(pipeline.Params, []pipeline.PortType) ([]pipeline.Port, error) {
					return []pipeline.Port{{Name: "out", Type: dataPort}}, nil
				},
				New: func(ctx context.Context, _ pipeline.Init) (stage.Stage, error) {
					close(opening)
					<-ctx.Done() // a server that never answers
					return nil, fmt.Errorf("opening interrupted: %w", ctx.Err())
				},
			}); err != nil {
				t.Fatal(err)
			}
			cfg, err := pipeline.Parse([]byte("name: starting\nstages:\n  - {name: o, kind: opener}\n  - {name: c, kind: collect, inputs: [o]}\n"), "test.yaml")
			if err != nil {
				t.Fatal(err)
			}
			r, err := pipeline.NewRunner(env, cfg, pipeline.Options{Transport: transport})
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- r.Run(context.Background()) }()
			<-opening
			r.Drain()
			select {
			case err := <-done:
				if !errors.Is(err, pipeline.ErrCanceled) || !strings.Contains(err.Error(), `stage "o"`) {
					t.Fatalf("got %v, want ErrCanceled naming stage o", err)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("Drain did not stop a stage that was starting")
			}
		})
	}
}

// countingStage passes messages on and counts every third one as an event.
type countingStage struct {
	stage.Base
	seen atomic.Int64
}

func (c *countingStage) Process(_ context.Context, in stage.Batch) (stage.Batch, error) {
	out := make(stage.Batch, 0, len(in))
	for _, e := range in {
		c.seen.Add(1)
		out = append(out, e.Pass())
	}
	return out, nil
}

func (c *countingStage) Status() stage.Status {
	return stage.Status{Counts: map[string]int64{"thirds": c.seen.Load() / 3}}
}

// TestEventCounters: a stage's own counters reach the snapshot (summed over
// replicas), the end table and the Prometheus text.
func TestEventCounters(t *testing.T) {
	col := &collector{}
	env := testEnv(t, col)
	if err := env.Register(pipeline.Spec{
		Kind: "counting", MinInputs: 1, MaxInputs: 1,
		Ports: func(_ pipeline.Params, in []pipeline.PortType) ([]pipeline.Port, error) {
			return []pipeline.Port{{Name: "out", Type: in[0]}}, nil
		},
		Replicable: func(pipeline.Params) error { return nil },
		New:        func(context.Context, pipeline.Init) (stage.Stage, error) { return &countingStage{}, nil },
	}); err != nil {
		t.Fatal(err)
	}
	r, err := runYAML(t, env, `name: events
transport: local
stages:
  - {name: g, kind: gen, params: {n: 30}}
  - {name: k, kind: counting, inputs: [g], replicas: 2}
  - {name: c, kind: collect, inputs: [k]}
`, pipeline.Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got int64 = -1
	for _, s := range r.Metrics().Snapshot() {
		if s.Name == "k" {
			got = s.Events["thirds"]
		}
	}
	// 30 messages over two replicas: each counts a third of its share.
	if got < 8 || got > 10 {
		t.Fatalf("events of k: thirds=%d, want about 10", got)
	}
	var table, prom strings.Builder
	r.Metrics().WriteTable(&table)
	r.Metrics().WritePrometheus(&prom, "events")
	if !strings.Contains(table.String(), fmt.Sprintf("thirds=%d", got)) {
		t.Errorf("the table does not show the events:\n%s", table.String())
	}
	want := fmt.Sprintf(`avflow_stage_events_total{pipeline="events",stage="k",kind="counting",device="cpu:0",event="thirds"} %d`, got)
	if !strings.Contains(prom.String(), want) {
		t.Errorf("Prometheus text lacks %s:\n%s", want, prom.String())
	}
	// The end table's other columns are series too, with the values of the snapshot.
	for _, st := range r.Metrics().Snapshot() {
		if st.Name != "c" {
			continue
		}
		if st.FPS <= 0 || st.MaxLatMs <= 0 || st.LatP99Ms < st.LatP50Ms || st.MaxLatMs < st.LatP99Ms {
			t.Errorf("stats of c: fps %g, latency p50 %g p99 %g max %g", st.FPS, st.LatP50Ms, st.LatP99Ms, st.MaxLatMs)
		}
		for _, series := range []string{"avflow_stage_fps", "avflow_stage_latency_max_seconds", "avflow_stage_latency_p50_seconds", "avflow_stage_latency_p99_seconds"} {
			if !strings.Contains(prom.String(), series+`{pipeline="events",stage="c",kind="collect",device="cpu:0"} `) {
				t.Errorf("Prometheus text lacks %s for c", series)
			}
		}
	}
}

// TestFailedRunStopsEndlessSource: a source that never blocks (drop-oldest
// flow) and never looks at its context still stops when a stage fails.
func TestFailedRunStopsEndlessSource(t *testing.T) {
	noLeaks(t)
	for _, transport := range []string{"local", "nats"} {
		t.Run(transport, func(t *testing.T) {
			_, err := runWithin(t, 20*time.Second, testEnv(t, &collector{}), `name: endless
flow: drop-oldest
stages:
  - {name: g, kind: gen, params: {forever: true, deaf: true}}
  - {name: bad, kind: relay, inputs: [g], params: {fail_at: 5}}
  - {name: c, kind: collect, inputs: [bad]}
`, pipeline.Options{Transport: transport}, nil)
			if !errors.Is(err, errBoom) {
				t.Fatalf("got %v, want the failing stage's error", err)
			}
		})
	}
}
