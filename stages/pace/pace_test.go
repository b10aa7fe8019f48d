package pace

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/pipelinetest"
	"github.com/avflow/avflow/pipeline/stage"
	_ "github.com/avflow/avflow/stages/decode"
	_ "github.com/avflow/avflow/stages/source"
	"go.uber.org/goleak"
)

// fakeClock's Sleep moves its time on by d plus late (a sleep that ends
// late, as a loaded machine's do); cancelled makes Sleep fail.
type fakeClock struct {
	now       time.Time
	late      time.Duration
	cancelled bool
	sleeps    []time.Duration
}

func (c *fakeClock) Now() time.Time { return c.now }

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	if c.cancelled {
		return context.Canceled
	}
	c.sleeps = append(c.sleeps, d)
	c.now = c.now.Add(d + c.late)
	return nil
}

// TestPaceSchedule: messages arriving at the given times (ms after the
// start, each in its own batch, or all in one) leave at the given times.
func TestPaceSchedule(t *testing.T) {
	tests := []struct {
		name    string
		rate    float64
		late    time.Duration // every sleep ends this late
		arrive  []int         // ms
		oneCall bool          // all messages in one batch
		leave   []int         // ms
	}{
		{name: "a burst is spread at 1/rate", rate: 10, arrive: []int{0, 0, 0, 0}, leave: []int{0, 100, 200, 300}},
		{name: "one batch of several", rate: 10, arrive: []int{0, 0, 0}, oneCall: true, leave: []int{200, 200, 200}},
		{name: "slower than the rate: no wait", rate: 10, arrive: []int{0, 150, 400}, leave: []int{0, 150, 400}},
		{name: "idle time is not saved up", rate: 10, arrive: []int{0, 500, 500, 500}, leave: []int{0, 500, 600, 700}},
		{name: "half way between turns", rate: 20, arrive: []int{0, 20, 30}, leave: []int{0, 50, 100}},
		{name: "late sleeps keep the schedule", rate: 10, late: 30 * time.Millisecond, arrive: []int{0, 0, 0, 0}, leave: []int{0, 130, 230, 330}},
		{name: "fractional rate", rate: 0.5, arrive: []int{0, 0}, leave: []int{0, 2000}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t0 := time.Unix(1_000_000, 0)
			clk := &fakeClock{now: t0, late: tc.late}
			s := New(tc.rate, clk)
			defer s.Close()
			ms := func() int { return int(clk.now.Sub(t0) / time.Millisecond) }
			var leave []int
			if tc.oneCall {
				batch := stage.Batch{}
				for i := range tc.arrive {
					batch = append(batch, &stage.Msg{Envelope: envelope.Envelope{Kind: envelope.KindFrame, Seq: uint64(i)}})
				}
				out, err := s.Process(context.Background(), batch)
				if err != nil || len(out) != len(batch) {
					t.Fatalf("Process: %d messages, %v", len(out), err)
				}
				for range out {
					leave = append(leave, ms())
				}
			} else {
				for i, at := range tc.arrive {
					if a := t0.Add(time.Duration(at) * time.Millisecond); a.After(clk.now) {
						clk.now = a
					}
					out, err := s.Process(context.Background(), stage.Batch{{Envelope: envelope.Envelope{Kind: envelope.KindFrame, Seq: uint64(i)}}})
					if err != nil || len(out) != 1 || out[0].Seq != uint64(i) {
						t.Fatalf("message %d: out %v, %v", i, out, err)
					}
					leave = append(leave, ms())
				}
			}
			if fmt.Sprint(leave) != fmt.Sprint(tc.leave) {
				t.Errorf("messages left at %v ms, want %v (sleeps %v)", leave, tc.leave, clk.sleeps)
			}
		})
	}
}

// local is an in-process object that records being freed.
type local struct{ freed bool }

func (l *local) PayloadSize() (int, error)   { return 0, nil }
func (l *local) WritePayload([]byte) error   { return nil }
func (l *local) Clone() (stage.Local, error) { return &local{}, nil }
func (l *local) Free()                       { l.freed = true }

// TestPacePassesUnchanged: what comes out is the message that went in,
// its in-process frame handed on (not freed, not copied), its port reset;
// a run stopped during a wait fails with the context's error and frees
// the frames it had passed in that batch.
func TestPacePassesUnchanged(t *testing.T) {
	clk := &fakeClock{now: time.Unix(0, 0)}
	s := New(1, clk)
	fr := &local{}
	in := &stage.Msg{Envelope: envelope.Envelope{Kind: envelope.KindFrame, Media: envelope.MediaVideo, Seq: 7, PTS: 3003, Detections: []envelope.Detection{{X2: 1, Y2: 1, Label: "face"}}, Src: &envelope.Origin{Stream: "src.video", Seq: 7}}, Port: "out", Local: fr}
	out, err := s.Process(context.Background(), stage.Batch{in})
	if err != nil || len(out) != 1 {
		t.Fatalf("Process: %v, %v", out, err)
	}
	o := out[0]
	if o.Seq != 7 || o.PTS != 3003 || o.Local != stage.Local(fr) || o.Port != "" || len(o.Detections) != 1 || o.Src == nil || o.Src.Seq != 7 || in.Local != nil || fr.freed {
		t.Errorf("passed %+v (input now %+v, frame freed %v)", o, in, fr.freed)
	}

	// A fresh stage: the first message goes at once, the second's wait is cut short.
	s, clk = New(1, clk), &fakeClock{now: time.Unix(0, 0), cancelled: true}
	s.clock = clk
	first, second := &local{}, &local{}
	in2 := stage.Batch{{Envelope: envelope.Envelope{Kind: envelope.KindFrame}, Local: first}, {Envelope: envelope.Envelope{Kind: envelope.KindFrame}, Local: second}}
	out, err = s.Process(context.Background(), in2)
	if !errors.Is(err, context.Canceled) || out != nil {
		t.Errorf("stopped during a wait: %v, %v; want context.Canceled and nothing", out, err)
	}
	if !first.freed || second.freed || in2[1].Local == nil {
		t.Errorf("after the stop: the passed frame freed %v (want true), the waiting one freed %v and still the input's %v (want false, true)",
			first.freed, second.freed, in2[1].Local != nil)
	}
}

// TestPaceWallClock: on the real clock, 11 messages at 100/s take at
// least the 100 ms their turns need (timers never fire early), and a
// cancelled context ends a long wait at once.
func TestPaceWallClock(t *testing.T) {
	defer goleak.VerifyNone(t)
	s := New(100, nil)
	batch := stage.Batch{}
	for range 11 {
		batch = append(batch, &stage.Msg{Envelope: envelope.Envelope{Kind: envelope.KindFrame}})
	}
	t0 := time.Now()
	out, err := s.Process(context.Background(), batch)
	if d := time.Since(t0); err != nil || len(out) != 11 || d < 100*time.Millisecond || d > 30*time.Second {
		t.Errorf("11 messages at 100/s: %d out in %s, %v; want 11 in 100 ms or a little more", len(out), d, err)
	}

	slow := New(0.001, nil) // one message per 1000 s
	ctx, cancel := context.WithCancel(context.Background())
	if _, err := slow.Process(ctx, stage.Batch{{Envelope: envelope.Envelope{Kind: envelope.KindFrame}}}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := slow.Process(ctx, stage.Batch{{Envelope: envelope.Envelope{Kind: envelope.KindFrame}}})
		done <- err
	}()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled wait: %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a cancelled wait did not end")
	}
}

// TestPaceParams: the rate is required and must be a positive finite
// number; the stage takes packets and frames and gives what it takes.
func TestPaceParams(t *testing.T) {
	tests := []struct {
		name, params, input, want string
	}{
		{name: "frames", params: "{rate: 25}", input: "dec"},
		{name: "packets", params: "{rate: 2.5}", input: "src.video"},
		{name: "missing", params: "{}", input: "dec", want: `"rate"`},
		{name: "zero", params: "{rate: 0}", input: "dec", want: "rate must be a finite number of messages per second > 0, got 0"},
		{name: "negative", params: "{rate: -3}", input: "dec", want: "got -3"},
		{name: "infinite", params: "{rate: .inf}", input: "dec", want: "param rate (float): want a number"},
		{name: "not a number", params: "{rate: fast}", input: "dec", want: "rate"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := pipeline.Parse([]byte(fmt.Sprintf(`name: p
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2", max_frames: 1}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: p, kind: pace, inputs: [%s], params: %s}
`, tc.input, tc.params)), "p.yaml")
			if err == nil {
				err = pipeline.Default.Validate(cfg)
			}
			if tc.want == "" && err != nil {
				t.Fatalf("valid params refused: %v", err)
			}
			if tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestPaceInPipeline: a real run (lavfi -> decode -> pace -> counter)
// delivers every frame and takes at least the time the rate needs.
func TestPaceInPipeline(t *testing.T) {
	c := &pipelinetest.Counter{}
	env := pipelinetest.WithCounter(t, "count", c)
	cfg, err := pipeline.Parse([]byte(`name: p
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2=size=160x120:rate=25", max_frames: 11}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: slow, kind: pace, inputs: [dec], params: {rate: 50}, replicas: 1}
  - {name: c, kind: count, inputs: [slow]}
`), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Validate(cfg); err != nil {
		t.Fatal(err)
	}
	r, err := pipeline.NewRunner(env, cfg, pipeline.Options{Transport: pipeline.TransportLocal, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := r.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); c.N.Load() != 11 || d < 200*time.Millisecond {
		t.Errorf("%d frames in %s, want 11 in at least 200 ms (10 gaps of 20 ms)", c.N.Load(), d)
	}
}
