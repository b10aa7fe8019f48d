package pipeline_test

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// The attacks of issue #10 on a run's bus, by a small hostile client of
// its NATS server: forged credits, injected messages and ends of stream,
// chunk floods, a second run of the same deployment, spying, a server
// that goes away, malformed messages. Each runs against the embedded
// server (with its listener) and an external one.

// busServers are the two kinds of server a run uses.
var busServers = []struct {
	name string
	opts func(t *testing.T) pipeline.Options
}{
	{"embedded", func(*testing.T) pipeline.Options { return pipeline.Options{Listen: true} }},
	{"external", func(t *testing.T) pipeline.Options { return pipeline.Options{NATSURL: natsServer(t, 0)} }},
}

// natsServer starts a NATS server on a loopback port (0: a free one) and
// returns its URL; it is shut down when the test ends.
func natsServer(t *testing.T, port int) string {
	t.Helper()
	return e2e.NATSServer(t, &server.Options{Port: port}).ClientURL()
}

func startNATS(t *testing.T, port int) *server.Server {
	t.Helper()
	return e2e.StartNATS(t, &server.Options{Port: port})
}

// hostile is a client of the run's server that is not the pipeline's.
type hostile struct {
	t  *testing.T
	nc *nats.Conn
}

// attacker connects to the run's server as an outside client (with the
// listener's credentials, which a local user would not have: the attacks
// are of a client the server lets in).
func attacker(t *testing.T, r *pipeline.Runner) *hostile {
	t.Helper()
	nc, err := nats.Connect(r.NATSURL(), nats.UserInfo(r.ListenCredentials()))
	if err != nil {
		t.Fatalf("the attacker cannot connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return &hostile{t: t, nc: nc}
}

// instance is the instance id of a stage's service, from its metadata.
func (h *hostile) instance(pipe, stage string) string {
	h.t.Helper()
	m, err := h.nc.Request(micro.APIPrefix+".INFO."+pipeline.ServiceName(pipe, stage), nil, 5*time.Second)
	if err != nil {
		h.t.Fatalf("$SRV.INFO of %s: %v", stage, err)
	}
	var info micro.Info
	if err := json.Unmarshal(m.Data, &info); err != nil || info.Metadata["instance"] == "" {
		h.t.Fatalf("$SRV.INFO of %s: %s (%v)", stage, m.Data, err)
	}
	return info.Metadata["instance"]
}

// pub publishes data on subject with the headers given as name, value
// pairs, and waits until the server has it.
func (h *hostile) pub(subject string, data []byte, header ...string) {
	h.t.Helper()
	m := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	for i := 0; i+1 < len(header); i += 2 {
		m.Header.Set(header[i], header[i+1])
	}
	if err := h.nc.PublishMsg(m); err != nil {
		h.t.Fatal(err)
	}
	if err := h.nc.Flush(); err != nil {
		h.t.Fatal(err)
	}
}

// frame is a valid data message like gen's, numbered n.
func frame(t *testing.T, n uint64) []byte {
	t.Helper()
	p := make([]byte, 64)
	binary.BigEndian.PutUint64(p, n)
	b, err := envelope.Marshal(&envelope.Envelope{V: envelope.Version, Kind: envelope.KindData, Stream: "g.out", Seq: n, Payload: p})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// eos is a valid end of stream.
func eos(t *testing.T) []byte {
	t.Helper()
	b, err := envelope.Marshal(&envelope.Envelope{V: envelope.Version, Kind: envelope.KindEOS, Stream: "g.out"})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// events are a stage's event counters now.
func events(r *pipeline.Runner, stage string) map[string]int64 {
	for _, s := range r.Metrics().Snapshot() {
		if s.Name == stage {
			return s.Events
		}
	}
	return nil
}

// waitEvent waits until a stage's event counter reaches n.
func waitEvent(t *testing.T, r *pipeline.Runner, stage, event string, n int64) {
	t.Helper()
	e2e.WaitFor(t, 10*time.Second, func() string { return fmt.Sprintf("%s %s >= %d (events now: %v)", stage, event, n, events(r, stage)) },
		func() bool { return events(r, stage)[event] >= n })
}

func (c *collector) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.got)
}

// moves waits until the collector has n more messages than now: the
// pipeline is not frozen and its input has not ended.
func (c *collector) moves(t *testing.T, n int) {
	t.Helper()
	from := c.count()
	e2e.WaitFor(t, 15*time.Second, func() string {
		return fmt.Sprintf("%d more messages after %d (got %d): frozen or ended", n, from, c.count())
	},
		func() bool { return c.count() >= from+n })
}

// numbers are the numbers of the messages the collector got.
func (c *collector) numbers() []uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]uint64, len(c.got))
	for i, e := range c.got {
		out[i] = binary.BigEndian.Uint64(e.Payload)
	}
	return out
}

// checkNumbers checks that the collector got gen's messages in order, and
// in block flow all of them: none injected, none lost.
func checkNumbers(t *testing.T, col *collector, block bool) {
	t.Helper()
	nums := col.numbers()
	for i, n := range nums {
		switch {
		case block && n != uint64(i):
			t.Fatalf("message %d is number %d: injected or lost (block flow loses nothing)", i, n)
		case i > 0 && n <= nums[i-1]:
			t.Fatalf("message %d is number %d after %d: injected", i, n, nums[i-1])
		}
	}
}

// TestForgedCreditsNeverFreeze: credits forged on a block-mode edge's ack
// subject, in the old and the new formats, from made-up and real instance
// ids, with the largest count there is, and a frame injected with the
// producer's real instance id (its consumer then credits one more than was
// sent) never freeze the pipeline: credits are clamped to what was sent,
// and those not from the consumer's instances are dropped and counted.
func TestForgedCreditsNeverFreeze(t *testing.T) {
	const huge = "18446744073709551615"
	tests := []struct {
		name string
		// forge sends the forgery, given the producer's and the consumer's instance ids.
		forge func(h *hostile, g, r string)
		event string // the producer's counter that must show it
	}{
		{"old format", func(h *hostile, _, _ string) { h.pub("avflow.credits.g.out.ack", []byte("r/0 "+huge)) }, "dropped_messages"},
		{"made-up consumer instance", func(h *hostile, g, _ string) { h.pub("avflow.credits.g.out.ack", []byte("r/0 made-up "+huge+" "+g)) }, "dropped_messages"},
		{"unknown consumer", func(h *hostile, g, r string) { h.pub("avflow.credits.g.out.ack", []byte("x/0 "+r+" "+huge+" "+g)) }, "dropped_messages"},
		{"real instance ids", func(h *hostile, g, r string) { h.pub("avflow.credits.g.out.ack", []byte("r/0 "+r+" "+huge+" "+g)) }, "clamped_credits"},
		{"made-up end", func(h *hostile, _, _ string) { h.pub("avflow.credits.g.out.ack", []byte("r/0 made-up end")) }, "dropped_messages"},
		{"real end", func(h *hostile, _, r string) { h.pub("avflow.credits.g.out.ack", []byte("r/0 "+r+" end")) }, ""},
		{"injected frame", func(h *hostile, g, _ string) {
			h.pub("avflow.credits.g.out", frame(h.t, 1<<40), pipeline.HeaderInstance, g)
		}, ""},
	}
	for _, srv := range busServers {
		for _, tt := range tests {
			t.Run(srv.name+"/"+tt.name, func(t *testing.T) {
				noLeaks(t)
				col := &collector{}
				_, err := runWithin(t, 40*time.Second, testEnv(t, col), `name: credits
transport: nats
stages:
  - {name: g, kind: gen, params: {forever: true}}
  - {name: r, kind: relay, inputs: [g]}
  - {name: c, kind: collect, inputs: [r]}
`, srv.opts(t), func(r *pipeline.Runner) {
					defer r.Drain()
					h := attacker(t, r)
					col.moves(t, 50)
					tt.forge(h, h.instance("credits", "g"), h.instance("credits", "r"))
					col.moves(t, 200)
					if tt.event != "" {
						waitEvent(t, r, "g", tt.event, 1)
					}
				})
				if err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

// TestInjectedMessagesDoNotAlterOutput: frames and ends of stream injected
// on an edge's data and end subjects, with no instance id, a made-up one,
// or (ends of stream only) the producer's real one copied from its
// service's metadata, neither reach the consumer nor end its input early:
// it gets every message of its producer, in order (block flow: all of
// them), and each forgery is counted in its dropped_messages. Ends of
// stream with the real id and a made-up Avflow-Sent are put to the
// producer, which says it is still running: counted once (the input is
// then waiting for a real end) and they do not end an input whose
// messages keep coming: the real one, at the end, says what was sent.
func TestInjectedMessagesDoNotAlterOutput(t *testing.T) {
	const subject = "avflow.inject.g.out"
	forged := func(id string) func(h *hostile, g string) {
		return func(h *hostile, g string) {
			hdr := []string{}
			if id == "real" {
				id = g
			}
			if id != "" {
				hdr = []string{pipeline.HeaderInstance, id}
			}
			for i := range 5 {
				h.pub(subject, frame(h.t, uint64(1<<40+i)), hdr...)
			}
			h.pub(subject, eos(h.t), hdr...)
			h.pub(subject+".eos", eos(h.t), append(hdr, pipeline.HeaderSent, "1")...)
		}
	}
	tests := []struct {
		name    string
		forge   func(h *hostile, g string)
		dropped int64
	}{
		{"no instance id", forged(""), 7},
		{"made-up instance id", forged("made-up"), 7},
		{"real instance id, ends of stream", func(h *hostile, g string) {
			h.pub(subject, eos(h.t), pipeline.HeaderInstance, g)                                        // on the data subject: dropped
			h.pub(subject+".eos", eos(h.t), pipeline.HeaderInstance, g)                                 // without Avflow-Sent: dropped
			h.pub(subject+".eos", eos(h.t), pipeline.HeaderInstance, g, pipeline.HeaderSent, "1")       // says less than arrived
			h.pub(subject+".eos", eos(h.t), pipeline.HeaderInstance, g, pipeline.HeaderSent, "1000000") // says more
		}, 3},
	}
	for _, srv := range busServers {
		for _, flow := range []string{"block", "drop-oldest"} {
			for _, tt := range tests {
				t.Run(srv.name+"/"+flow+"/"+tt.name, func(t *testing.T) {
					noLeaks(t)
					col := &collector{}
					r, err := runWithin(t, 40*time.Second, testEnv(t, col), `name: inject
transport: nats
flow: `+flow+`
stages:
  - {name: g, kind: gen, params: {forever: true}}
  - {name: r, kind: relay, inputs: [g]}
  - {name: c, kind: collect, inputs: [r]}
`, srv.opts(t), func(r *pipeline.Runner) {
						defer r.Drain()
						h := attacker(t, r)
						col.moves(t, 50)
						tt.forge(h, h.instance("inject", "g"))
						col.moves(t, 200) // its input has not ended
						waitEvent(t, r, "r", "dropped_messages", tt.dropped)
					})
					if err != nil {
						t.Fatal(err)
					}
					checkNumbers(t, col, flow == "block")
					if got := events(r, "r")["dropped_messages"]; got != tt.dropped {
						t.Errorf("dropped_messages = %d, want %d", got, tt.dropped)
					}
				})
			}
		}
	}
}

// heapInUse is the heap the process holds after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// TestChunkFloodStaysBounded: a thousand chunk messages ("Avflow-Chunk: 77
// <i> 1024", a million bytes each) on an edge's subject, with no instance
// id, a made-up one or the producer's real one, leave the memory of the
// run where it was: chunks not from the producer's instances are dropped,
// a message announcing more than envelope.DefaultMaxMessageBytes is
// refused from its first part, and a partial message under the bound is
// let go when the producer's next whole message overtakes it.
func TestChunkFloodStaysBounded(t *testing.T) {
	const (
		subject = "avflow.flood.g.out"
		part    = 1000 << 10 // under the external server's 1 MiB max payload
		bound   = 100 << 20  // what the run may keep of ~1 GB sent
	)
	tests := []struct {
		name         string
		id           string // "real": the producer's
		count, parts int
		dropped      int64 // chunks and partial messages dropped...
		atLeast      bool  // ...or at least (the producer's whole messages cut the partial one short, then the parts that follow are dropped)
	}{
		{"no instance id", "", 1024, 1000, 1000, false},
		{"made-up instance id", "made-up", 1024, 1000, 1000, false},
		{"real instance id", "real", 1024, 1000, 1000, false},
		{"real instance id, a message under the bound that never ends", "real", 200, 199, 1, true},
	}
	payload := make([]byte, part)
	for _, srv := range busServers {
		for _, tt := range tests {
			t.Run(srv.name+"/"+tt.name, func(t *testing.T) {
				col := &collector{}
				_, err := runWithin(t, 60*time.Second, testEnv(t, col), `name: flood
transport: nats
stages:
  - {name: g, kind: gen, params: {forever: true}}
  - {name: c, kind: collect, inputs: [g]}
`, srv.opts(t), func(r *pipeline.Runner) {
					defer r.Drain()
					h := attacker(t, r)
					col.moves(t, 50)
					before := heapInUse()
					id := tt.id
					if id == "real" {
						id = h.instance("flood", "g")
					}
					for i := range tt.parts {
						m := &nats.Msg{Subject: subject, Data: payload, Header: nats.Header{envelope.HeaderChunk: []string{fmt.Sprintf("77 %d %d", i, tt.count)}}}
						if id != "" {
							m.Header.Set(pipeline.HeaderInstance, id)
						}
						if err := h.nc.PublishMsg(m); err != nil {
							t.Fatal(err)
						}
						if !tt.atLeast && i%20 == 19 {
							// At most 40 MB in flight: a server cuts off a client
							// that falls 64 MB behind, which would lose some.
							waitEvent(t, r, "c", "dropped_messages", int64(i-39))
						}
					}
					h.pub(subject, []byte("the end of the flood")) // dropped after it
					deadline := time.Now().Add(10 * time.Second)
					for events(r, "c")["dropped_messages"] < tt.dropped+1 && time.Now().Before(deadline) {
						col.moves(t, 1)
					}
					if got := events(r, "c")["dropped_messages"]; got < tt.dropped+1 || (got != tt.dropped+1 && !tt.atLeast) {
						t.Errorf("dropped_messages = %d, want %d", got, tt.dropped+1)
					}
					col.moves(t, 10) // whole messages of the producer's
					grown := int64(heapInUse()) - int64(before)
					if grown > bound {
						t.Errorf("the run holds %d MiB more after the flood, want at most %d", grown>>20, bound>>20)
					}
				})
				if err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

// listeningPorts are the TCP ports this process listens on.
func listeningPorts(t *testing.T) map[int]bool {
	t.Helper()
	inodes := map[string]bool{}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	for _, fd := range fds {
		if l, err := os.Readlink("/proc/self/fd/" + fd.Name()); err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	ports := map[int]bool{}
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, _ := os.ReadFile(table)
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "0A" || !inodes[f[9]] {
				continue
			}
			_, hexPort, _ := strings.Cut(f[1], ":")
			if p, err := strconv.ParseInt(hexPort, 16, 32); err == nil {
				ports[int(p)] = true
			}
		}
	}
	return ports
}

// TestEmbeddedServerListensOnlyWhenAsked: by default the embedded server
// opens no port (nothing outside the process can subscribe to a run's
// frames); with Options.Listen it listens on loopback and lets in only
// the user and password made for the run, which NATSURL does not show.
func TestEmbeddedServerListensOnlyWhenAsked(t *testing.T) {
	const yaml = `name: spy
flow: drop-oldest
stages:
  - {name: g, kind: gen, params: {forever: true}}
  - {name: c, kind: collect, inputs: [g]}
`
	t.Run("default", func(t *testing.T) {
		noLeaks(t)
		before := listeningPorts(t)
		_, err := runYAML(t, testEnv(t, &collector{}), yaml, pipeline.Options{}, func(r *pipeline.Runner) {
			defer r.Drain()
			for p := range listeningPorts(t) {
				if !before[p] {
					t.Errorf("the run listens on port %d", p)
				}
			}
			if u := r.NATSURL(); u != "" {
				t.Errorf("NATSURL() = %q, want none", u)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	t.Run("listen", func(t *testing.T) {
		noLeaks(t)
		before := listeningPorts(t)
		_, err := runYAML(t, testEnv(t, &collector{}), yaml, pipeline.Options{Listen: true}, func(r *pipeline.Runner) {
			defer r.Drain()
			url := r.NATSURL()
			user, password := r.ListenCredentials()
			if !strings.HasPrefix(url, "nats://127.0.0.1:") || strings.Contains(url, "@") || user == "" || len(password) < 20 {
				t.Fatalf("NATSURL() = %q, credentials %q/%d characters: want a loopback URL without them, and a long password", url, user, len(password))
			}
			port, _ := strconv.Atoi(url[strings.LastIndex(url, ":")+1:])
			if !listeningPorts(t)[port] || before[port] {
				t.Errorf("the run does not listen on %s", url)
			}
			for _, opt := range []nats.Option{nil, nats.UserInfo(user, password+"x"), nats.UserInfo("spy", password)} {
				opts := []nats.Option{nats.MaxReconnects(0)}
				if opt != nil {
					opts = append(opts, opt)
				}
				if nc, err := nats.Connect(url, opts...); err == nil {
					nc.Close()
					t.Errorf("a client without the run's credentials got in")
				} else if !errors.Is(err, nats.ErrAuthorization) {
					t.Errorf("a client without the run's credentials: %v, want an authorization violation", err)
				}
			}
			h := attacker(t, r) // with them
			if h.instance("spy", "g") == "" {
				t.Error("no instance")
			}
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// TestSecondRunRefused: the same pipeline run a second time on one server
// is refused at its start with a message naming the first run's instance
// and host, and the first run never sees a frame of it; under another name
// (--name) it runs beside the first.
func TestSecondRunRefused(t *testing.T) {
	noLeaks(t)
	url := natsServer(t, 0)
	const yaml = `name: twice
stages:
  - {name: g, kind: gen, params: {forever: true}}
  - {name: r, kind: relay, inputs: [g]}
  - {name: c, kind: collect, inputs: [r]}
`
	col := &collector{}
	first, err := runWithin(t, 60*time.Second, testEnv(t, col), yaml, pipeline.Options{NATSURL: url, Transport: "nats"}, func(first *pipeline.Runner) {
		defer first.Drain()
		col.moves(t, 50)
		h := attacker(t, first)
		inst := h.instance("twice", "g")
		second := &collector{}
		start := time.Now()
		_, err := runWithin(t, 20*time.Second, testEnv(t, second), yaml, pipeline.Options{NATSURL: url, Transport: "nats"}, nil)
		host, _ := os.Hostname()
		if !errors.Is(err, pipeline.ErrRunning) || !strings.Contains(err.Error(), inst) || !strings.Contains(err.Error(), host) || !strings.Contains(err.Error(), "--name") {
			t.Errorf("the second run: %v (after %s); want ErrRunning naming instance %s on host %s and --name", err, time.Since(start), inst, host)
		}
		if n := second.count(); n > 0 {
			t.Errorf("the second run got %d messages", n)
		}
		// Another name is another deployment.
		other := &collector{}
		if _, err := runWithin(t, 20*time.Second, testEnv(t, other), strings.Replace(yaml, "name: twice", "name: twice-2", 1), pipeline.Options{NATSURL: url, Transport: "nats"}, func(r *pipeline.Runner) {
			defer r.Drain()
			other.moves(t, 50)
		}); err != nil {
			t.Errorf("the run under another name: %v", err)
		}
		col.moves(t, 50)
	})
	if err != nil {
		t.Fatal(err)
	}
	checkNumbers(t, col, true)
	for _, stage := range []string{"r", "c"} {
		if n := events(first, stage)["dropped_messages"]; n != 0 {
			t.Errorf("the first run's %s dropped %d messages", stage, n)
		}
	}
}

// TestMalformedBusMessagesAreDropped: junk on every subject of an edge and
// on the stages' micro endpoints is dropped and counted on the stage whose
// subscription got it, logged once per source, and never fails or stops
// the run; the micro endpoints still answer.
func TestMalformedBusMessagesAreDropped(t *testing.T) {
	const subject = "avflow.junk.g.out"
	for _, srv := range busServers {
		t.Run(srv.name, func(t *testing.T) {
			noLeaks(t)
			logs := newLogRecorder()
			col := &collector{}
			opts := srv.opts(t)
			opts.Log = logs.logger()
			r, err := runWithin(t, 40*time.Second, testEnv(t, col), `name: junk
transport: nats
stages:
  - {name: g, kind: gen, params: {forever: true}}
  - {name: c, kind: collect, inputs: [g]}
`, opts, func(r *pipeline.Runner) {
				defer r.Drain()
				h := attacker(t, r)
				col.moves(t, 50)
				g := h.instance("junk", "g")
				real := []string{pipeline.HeaderInstance, g}
				// On the data subject, from g's instance: dropped by c.
				h.pub(subject, []byte("\x92\xc1junk"), real...)
				h.pub(subject, frame(t, 1<<40), append(real, envelope.HeaderChunk, "x y z")...)
				h.pub(subject, frame(t, 1<<40), append(real, envelope.HeaderChunk, "1 5 2")...)
				h.pub(subject, frame(t, 1<<40), append(real, envelope.HeaderChunk, "1 0 99999")...)
				// On the end subject: dropped by c.
				h.pub(subject+".eos", []byte{0xff, 0x00}, append(real, pipeline.HeaderSent, "1")...)
				h.pub(subject+".eos", frame(t, 1<<40), append(real, pipeline.HeaderSent, "1")...)
				h.pub(subject+".eos", eos(t), append(real, pipeline.HeaderSent, "many")...)
				h.pub(subject+".eos", eos(t), pipeline.HeaderSent, "1")
				// On the credit subject: dropped by g.
				for _, a := range []string{"", "junk", "c/0 x notanumber " + g, "a b c d e", "\x00\xff\x01"} {
					h.pub(subject+".ack", []byte(a))
				}
				// Requests with junk to the micro endpoints: answered as ever.
				for _, subj := range []string{micro.APIPrefix + ".INFO.junk-g", micro.APIPrefix + ".STATS.junk-c", "avflow.junk.c.$metrics"} {
					if _, err := h.nc.Request(subj, []byte("\x00junk{"), 5*time.Second); err != nil {
						t.Errorf("%s: %v", subj, err)
					}
				}
				h.pub(micro.APIPrefix+".PING", []byte("junk")) // no reply subject
				col.moves(t, 200)
				waitEvent(t, r, "c", "dropped_messages", 8)
				waitEvent(t, r, "g", "dropped_messages", 5)
			})
			if err != nil {
				t.Fatal(err)
			}
			checkNumbers(t, col, true)
			if c, g := events(r, "c")["dropped_messages"], events(r, "g")["dropped_messages"]; c != 8 || g != 5 {
				t.Errorf("dropped_messages: c %d, g %d; want 8 and 5", c, g)
			}
			// Once per source and subscription: g's instance and "unknown"
			// at c, "unknown" at g.
			logs.mu.Lock()
			defer logs.mu.Unlock()
			seen := map[string]int{}
			for _, l := range logs.lines {
				if strings.Contains(l, "dropped a message") {
					stage := l[strings.Index(l, "stage="):]
					from := l[strings.Index(l, "from="):]
					seen[strings.Fields(stage)[0]+" "+strings.Fields(from)[0]]++
				}
			}
			if len(seen) != 3 {
				t.Errorf("logged drops %v, want one line for each of 3 sources", seen)
			}
			for k, n := range seen {
				if n != 1 {
					t.Errorf("%s: %d lines, want 1", k, n)
				}
			}
		})
	}
}

// TestNATSBlip: an external server that goes away mid-run and comes back
// on the same port a moment later costs at most the messages in flight:
// the connections reconnect, producers and consumers send again what may
// have been lost, and the run goes on and ends cleanly; a server that
// stays away fails the run once it has been away for the bound, naming it.
func TestNATSBlip(t *testing.T) {
	const yaml = `name: blip
transport: nats
flow: %s
stages:
  - {name: g, kind: gen, params: {forever: true}}
  - {name: r, kind: relay, inputs: [g]}
  - {name: c, kind: collect, inputs: [r]}
`
	for _, flow := range []string{"block", "drop-oldest"} {
		t.Run(flow, func(t *testing.T) {
			noLeaks(t)
			s := startNATS(t, 0)
			port := s.Addr().(*net.TCPAddr).Port
			defer func() { s.Shutdown(); s.WaitForShutdown() }()
			logs := newLogRecorder()
			col := &collector{}
			_, err := runWithin(t, 60*time.Second, testEnv(t, col), fmt.Sprintf(yaml, flow), pipeline.Options{NATSURL: s.ClientURL(), Log: logs.logger()}, func(r *pipeline.Runner) {
				defer r.Drain()
				col.moves(t, 100)
				s.Shutdown()
				s.WaitForShutdown()
				logs.wait(t, 10*time.Second, "lost the connection to the NATS server: reconnecting")
				s = startNATS(t, port)
				logs.wait(t, 10*time.Second, "reconnected to the NATS server")
				col.moves(t, 300)
			})
			if err != nil {
				t.Fatal(err)
			}
			checkNumbers(t, col, false)
			if flow == "block" {
				// What was in flight, a window or two per edge (4 messages).
				nums := col.numbers()
				if lost := int(nums[len(nums)-1]) + 1 - len(nums); lost > 32 {
					t.Errorf("lost %d messages in block flow, want a few windows at most", lost)
				}
			}
		})
	}
	t.Run("stays away", func(t *testing.T) {
		noLeaks(t)
		defer pipeline.SetMaxNATSDown(time.Second)()
		s := startNATS(t, 0)
		url := s.ClientURL()
		col := &collector{}
		var gone time.Time
		_, err := runWithin(t, 30*time.Second, testEnv(t, col), fmt.Sprintf(yaml, "block"), pipeline.Options{NATSURL: url}, func(*pipeline.Runner) {
			col.moves(t, 50)
			s.Shutdown()
			s.WaitForShutdown()
			gone = time.Now()
		})
		took := time.Since(gone)
		if !errors.Is(err, pipeline.ErrTransport) || !strings.Contains(err.Error(), "lost the connection to the NATS server at "+url) {
			t.Fatalf("got %v, want a transport error naming %s", err, url)
		}
		if took < time.Second || took > 10*time.Second {
			t.Errorf("the run failed %s after the server went away, want about 1s (the bound)", took)
		}
	})
}

// TestForgedEndOfStreamWithTheRightCount: an end of stream forged with the
// producer's real instance id and exactly the number of messages its
// consumer has (an attacker who counts the subject's messages, while the
// stream is held up) does not end the input: the consumer asks the
// producer, which says it is still running; the forgery is counted and
// the consumer gets every message.
func TestForgedEndOfStreamWithTheRightCount(t *testing.T) {
	defer pipeline.SetSlowConsumerAfter(50 * time.Millisecond)()
	for _, srv := range busServers {
		t.Run(srv.name, func(t *testing.T) {
			noLeaks(t)
			hold := make(chan struct{})
			holdRelays = hold
			logs := newLogRecorder()
			col := &collector{}
			opts := srv.opts(t)
			opts.Log = logs.logger()
			r, err := runWithin(t, 40*time.Second, testEnv(t, col), `name: exact
transport: nats
stages:
  - {name: g, kind: gen, params: {forever: true}}
  - {name: r, kind: relay, inputs: [g], params: {hold: true}}
  - {name: c, kind: collect, inputs: [r]}
`, opts, func(r *pipeline.Runner) {
				defer r.Drain()
				h := attacker(t, r)
				// g waits for r, which holds its first message: what g
				// says it sent (its stats, which any client can ask) is
				// what r got.
				logs.wait(t, 10*time.Second, "slow consumer: waiting for credits", "stage=g")
				m, err := h.nc.Request("avflow.exact.g.$metrics", nil, 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				var st pipeline.StageStats
				if err := json.Unmarshal(m.Data, &st); err != nil || st.Out == 0 {
					t.Fatalf("g's stats: %s (%v)", m.Data, err)
				}
				h.pub("avflow.exact.g.out.eos", eos(t), pipeline.HeaderInstance, h.instance("exact", "g"), pipeline.HeaderSent, strconv.FormatInt(st.Out, 10))
				close(hold)
				col.moves(t, 200)
				waitEvent(t, r, "r", "dropped_messages", 1)
			})
			if err != nil {
				t.Fatal(err)
			}
			checkNumbers(t, col, true)
			if n := events(r, "r")["dropped_messages"]; n != 1 {
				t.Errorf("dropped_messages = %d, want 1", n)
			}
		})
	}
}
