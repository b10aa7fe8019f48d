package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// permEnv has the kinds of a small camera pipeline, typed like the real
// ones (never run): a source of video packets (and audio packets its
// params turn off), a filter giving frames and detections, a sink.
func permEnv(t *testing.T) *pipeline.Environment {
	env := pipeline.NewEnvironment()
	ports := func(ps ...pipeline.Port) func(pipeline.Params, []pipeline.PortType) ([]pipeline.Port, error) {
		return func(pipeline.Params, []pipeline.PortType) ([]pipeline.Port, error) { return ps, nil }
	}
	never := func(context.Context, pipeline.Init) (stage.Stage, error) { return nil, errors.New("not run") }
	for _, s := range []pipeline.Spec{
		{Kind: "camsrc", New: never, Ports: ports(
			pipeline.Port{Name: "video", Type: pipeline.PortType{Kind: envelope.KindPacket, Media: envelope.MediaVideo}},
			pipeline.Port{Name: "audio", Type: pipeline.PortType{Kind: envelope.KindPacket, Media: envelope.MediaAudio}, Unread: pipeline.UnreadQuiet})},
		{Kind: "camflt", MinInputs: 1, MaxInputs: 1, New: never, Ports: ports(
			pipeline.Port{Name: "out", Type: pipeline.PortType{Kind: envelope.KindFrame, Media: envelope.MediaVideo}},
			pipeline.Port{Name: "meta", Type: pipeline.PortType{Kind: envelope.KindData}})},
		{Kind: "camsink", MinInputs: 1, MaxInputs: 1, New: never, Ports: ports()},
	} {
		if err := env.Register(s); err != nil {
			t.Fatal(err)
		}
	}
	return env
}

func camConfig(t *testing.T, flow string) *pipeline.Config {
	cfg, err := pipeline.Parse([]byte(`name: cam
flow: `+flow+`
stages:
  - {name: src, kind: camsrc}
  - {name: flt, kind: camflt, inputs: [src.video]}
  - {name: out, kind: camsink, inputs: [flt]}
`), "cam.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := permEnv(t).Validate(cfg); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// services are the subscriptions of the micro services of stages of cam.
func services(stages ...string) []string {
	out := []string{}
	for _, s := range stages {
		out = append(out, "avflow.cam."+s+".$metrics")
	}
	for _, verb := range []string{"INFO", "PING", "STATS"} {
		out = append(out, "$SRV."+verb)
		for _, s := range stages {
			out = append(out, "$SRV."+verb+".cam-"+s, "$SRV."+verb+".cam-"+s+".*")
		}
	}
	return out
}

// TestPermissions: each kind of process of a 3-stage pipeline gets what
// the wire protocol makes it publish and subscribe to, and nothing more.
func TestPermissions(t *testing.T) {
	tests := []struct {
		name      string
		flow      string
		proc      pipeline.Process
		responses int // 2 x services - 1
		pub, sub  []string
	}{
		{"run, one process", "block", pipeline.Process{}, 5,
			// A second driver is refused: the first stage's service is asked for.
			[]string{"avflow.cam.flt.meta", "avflow.cam.flt.meta.eos", "avflow.cam.src.audio.eos", "$SRV.PING.cam-src"},
			append(append([]string{"avflow.cam.flt.meta.ack", "avflow.cam.src.audio.ack"}, services("flt", "out", "src")...), "_INBOX.>")},
		// Replicas of a stage take each message on a subject of their own
		// too (<subject>.to.<stage>.<input>.<instance>).
		{"serve flt", "block", pipeline.Process{Serve: []string{"flt"}}, 1,
			[]string{"avflow.cam.flt.meta", "avflow.cam.flt.meta.eos", "avflow.cam.flt.out", "avflow.cam.flt.out.eos", "avflow.cam.flt.out.to.out.0.*", "avflow.cam.src.video.ack", "$SRV.PING.cam-flt", "$SRV.PING.cam-out", "$SRV.PING.cam-src"},
			append(append([]string{"avflow.cam.flt.meta.ack", "avflow.cam.flt.out.ack", "avflow.cam.src.video", "avflow.cam.src.video.eos", "avflow.cam.src.video.to.flt.0.*"}, services("flt")...), "_INBOX.>")},
		{"run, flt remote", "block", pipeline.Process{Remote: []string{"flt"}}, 3,
			[]string{"avflow.cam.flt.out.ack", "avflow.cam.src.audio.eos", "avflow.cam.src.video", "avflow.cam.src.video.eos", "avflow.cam.src.video.to.flt.0.*", "$SRV.PING.cam-flt", "$SRV.PING.cam-out", "$SRV.PING.cam-src"},
			append(append([]string{"avflow.cam.flt.out", "avflow.cam.flt.out.eos", "avflow.cam.src.audio.ack", "avflow.cam.src.video.ack"}, services("out", "src")...), "_INBOX.>")},
		{"serve flt and out", "block", pipeline.Process{Serve: []string{"flt", "out"}}, 3,
			[]string{"avflow.cam.flt.meta", "avflow.cam.flt.meta.eos", "avflow.cam.src.video.ack", "$SRV.PING.cam-flt", "$SRV.PING.cam-out", "$SRV.PING.cam-src"},
			append(append([]string{"avflow.cam.flt.meta.ack", "avflow.cam.src.video", "avflow.cam.src.video.eos", "avflow.cam.src.video.to.flt.0.*"}, services("flt", "out")...), "_INBOX.>")},
		// Frames and data may be dropped: no credits (no .to. subjects);
		// packets always block. The .ack subjects stay: consumers ask
		// there whether a producer has ended, in every flow (they were
		// left out, and a drop-oldest run with these permissions failed).
		{"serve flt, drop-oldest", "drop-oldest", pipeline.Process{Serve: []string{"flt"}}, 1,
			[]string{"avflow.cam.flt.meta", "avflow.cam.flt.meta.eos", "avflow.cam.flt.out", "avflow.cam.flt.out.eos", "avflow.cam.src.video.ack", "$SRV.PING.cam-flt", "$SRV.PING.cam-src"},
			append(append([]string{"avflow.cam.flt.meta.ack", "avflow.cam.flt.out.ack", "avflow.cam.src.video", "avflow.cam.src.video.eos", "avflow.cam.src.video.to.flt.0.*"}, services("flt")...), "_INBOX.>")},
		{"run, transport nats", "block", pipeline.Process{Transport: "nats"}, 5,
			[]string{"avflow.cam.flt.meta", "avflow.cam.flt.meta.eos", "avflow.cam.flt.out", "avflow.cam.flt.out.ack", "avflow.cam.flt.out.eos",
				"avflow.cam.src.audio.eos", "avflow.cam.src.video", "avflow.cam.src.video.ack", "avflow.cam.src.video.eos", "$SRV.PING.cam-src"},
			append(append([]string{"avflow.cam.flt.meta.ack", "avflow.cam.flt.out", "avflow.cam.flt.out.ack", "avflow.cam.flt.out.eos",
				"avflow.cam.src.audio.ack", "avflow.cam.src.video", "avflow.cam.src.video.ack", "avflow.cam.src.video.eos"}, services("flt", "out", "src")...), "_INBOX.>")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := pipeline.Permissions(camConfig(t, tt.flow), tt.proc)
			if err != nil {
				t.Fatal(err)
			}
			if got.Responses != tt.responses {
				t.Errorf("%d answers per request, want %d", got.Responses, tt.responses)
			}
			for _, l := range []struct {
				what      string
				got, want []string
			}{{"publish", got.Publish, tt.pub}, {"subscribe", got.Subscribe, tt.sub}} {
				want := slices.Sorted(slices.Values(l.want))
				if g := slices.Sorted(slices.Values(l.got)); !slices.Equal(g, want) {
					t.Errorf("%s:\n got %q\nwant %q", l.what, g, want)
				}
			}
		})
	}
}

// TestPermissionsConfig: the block printed for a served stage, exactly;
// nats-server reads it.
func TestPermissionsConfig(t *testing.T) {
	p, err := pipeline.Permissions(camConfig(t, "block"), pipeline.Process{Serve: []string{"flt"}})
	if err != nil {
		t.Fatal(err)
	}
	want := `permissions: {
  publish: {
    allow: [
      "avflow.cam.flt.meta"
      "avflow.cam.flt.meta.eos"
      "avflow.cam.flt.out"
      "avflow.cam.flt.out.eos"
      "avflow.cam.flt.out.to.out.0.*"
      "avflow.cam.src.video.ack"
      "$SRV.PING.cam-flt"
      "$SRV.PING.cam-out"
      "$SRV.PING.cam-src"
    ]
  }
  subscribe: {
    allow: [
      "avflow.cam.flt.$metrics"
      "avflow.cam.flt.meta.ack"
      "avflow.cam.flt.out.ack"
      "avflow.cam.src.video"
      "avflow.cam.src.video.eos"
      "avflow.cam.src.video.to.flt.0.*"
      "$SRV.INFO"
      "$SRV.INFO.cam-flt"
      "$SRV.INFO.cam-flt.*"
      "$SRV.PING"
      "$SRV.PING.cam-flt"
      "$SRV.PING.cam-flt.*"
      "$SRV.STATS"
      "$SRV.STATS.cam-flt"
      "$SRV.STATS.cam-flt.*"
      "_INBOX.>"
    ]
  }
  allow_responses: {max: 1}
}
`
	if got := p.Config(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
	opts := &server.Options{}
	if err := opts.ProcessConfigString("authorization { users = [ {user: u, password: p, " + p.Config() + "} ] }"); err != nil {
		t.Fatalf("nats-server does not read the block: %v", err)
	}
	perms := opts.Users[0].Permissions
	if !slices.Equal(perms.Publish.Allow, p.Publish) || !slices.Equal(perms.Subscribe.Allow, p.Subscribe) || perms.Response == nil || perms.Response.MaxMsgs != 1 {
		t.Errorf("nats-server read other permissions: %+v %+v %+v", perms.Publish, perms.Subscribe, perms.Response)
	}
	// Nothing to publish: everything denied, not everything allowed.
	opts = &server.Options{}
	if err := opts.ProcessConfigString("authorization { users = [ {user: u, password: p, " + (pipeline.NATSPermissions{Subscribe: []string{"x"}}).Config() + "} ] }"); err != nil {
		t.Fatal(err)
	}
	if perms := opts.Users[0].Permissions; perms.Publish == nil || !slices.Equal(perms.Publish.Deny, []string{">"}) {
		t.Errorf("an empty publish list reads as %+v, want deny >", perms.Publish)
	}
}

func TestPermissionsUnion(t *testing.T) {
	a := pipeline.NATSPermissions{Publish: []string{"avflow.x.a.out", "$SRV.PING.x-b"}, Subscribe: []string{"_INBOX.>"}}
	b := pipeline.NATSPermissions{Publish: []string{"avflow.x.a.out", "avflow.x.b.out"}, Responses: 2}
	u := a.Union(b)
	if want := []string{"avflow.x.a.out", "avflow.x.b.out", "$SRV.PING.x-b"}; !slices.Equal(u.Publish, want) {
		t.Errorf("publish %q, want %q", u.Publish, want)
	}
	if !slices.Equal(u.Subscribe, []string{"_INBOX.>"}) || u.Responses != 2 {
		t.Errorf("union %+v", u)
	}
}

func TestPermissionsErrors(t *testing.T) {
	unvalidated, err := pipeline.Parse([]byte("name: cam\nstages:\n  - {name: src, kind: camsrc}\n"), "cam.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  *pipeline.Config
		proc pipeline.Process
		is   error
		want string
	}{
		{"not validated", unvalidated, pipeline.Process{}, pipeline.ErrPermissions, "cam.yaml: validate the pipeline first"},
		{"unknown stage", camConfig(t, "block"), pipeline.Process{Serve: []string{"nope"}}, pipeline.ErrInvalid, `stage to serve "nope": the pipeline has no such stage (stages: src, flt, out)`},
		{"unknown remote", camConfig(t, "block"), pipeline.Process{Remote: []string{"nope"}}, pipeline.ErrInvalid, `remote stage "nope"`},
		{"all remote", camConfig(t, "block"), pipeline.Process{Remote: []string{"src", "flt", "out"}}, pipeline.ErrInvalid, "every stage is remote"},
		{"local", camConfig(t, "block"), pipeline.Process{Transport: "local"}, pipeline.ErrPermissions, "transport local uses no NATS server"},
		{"bad transport", camConfig(t, "block"), pipeline.Process{Transport: "carrier-pigeon"}, pipeline.ErrPermissions, `transport "carrier-pigeon"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := pipeline.Permissions(tt.cfg, tt.proc)
			if !errors.Is(err, tt.is) || err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err %v, want %v with %q", err, tt.is, tt.want)
			}
		})
	}
}

// permServer starts a NATS server whose users have these permissions
// (each rendered as avflow permissions prints it); password: the name.
func permServer(t *testing.T, users map[string]pipeline.NATSPermissions, extra ...string) string {
	t.Helper()
	var conf strings.Builder
	conf.WriteString("host: 127.0.0.1\nport: -1\n" + strings.Join(extra, "\n") + "\nauthorization { users = [\n")
	for name, p := range users {
		fmt.Fprintf(&conf, "{user: %s, password: %s,\n%s}\n", name, name, p.Config())
	}
	conf.WriteString("] }\n")
	opts := &server.Options{}
	if err := opts.ProcessConfigString(conf.String()); err != nil {
		t.Fatalf("%v:\n%s", err, conf.String())
	}
	return e2e.NATSServer(t, opts).ClientURL()
}

const splitYAML = `name: t
stages:
  - {name: g, kind: gen, params: {n: 20}}
  - {name: rl, kind: relay, inputs: [g]}
  - {name: c, kind: collect, inputs: [rl]}
`

// runSplit runs splitYAML over the server at url as two processes would:
// rl served by user srv, the rest run by user drv with rl remote. It
// returns both errors, the driver's first, once both have ended or the
// first has failed (the other is stopped then), and the messages collected.
func runSplit(t *testing.T, url string) (drvErr, srvErr error, got int) {
	t.Helper()
	return runSplitWith(t, url, pipeline.DeliveryLive)
}

// runSplitWith is runSplit with a delivery.
func runSplitWith(t *testing.T, url, delivery string) (drvErr, srvErr error, got int) {
	t.Helper()
	col := &collector{}
	env := testEnv(t, col)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type result struct {
		driver bool
		err    error
	}
	done := make(chan result, 2)
	for _, driver := range []bool{false, true} {
		cfg, err := pipeline.Parse([]byte(splitYAML), "t.yaml")
		if err != nil {
			t.Fatal(err)
		}
		user, opts := "srv", pipeline.Options{Serve: []string{"rl"}}
		if driver {
			user, opts = "drv", pipeline.Options{Remote: []string{"rl"}, RemoteTimeout: 10 * time.Second}
		}
		opts.NATSURL, opts.NATSOptions, opts.Log = url, []nats.Option{nats.UserInfo(user, user)}, slog.New(slog.DiscardHandler)
		opts.Delivery = delivery
		r, err := pipeline.NewRunner(env, cfg, opts)
		if err != nil {
			t.Fatal(err)
		}
		go func() { done <- result{driver, r.Run(ctx)} }()
	}
	for range 2 {
		res := <-done
		if res.err != nil {
			cancel() // the other process would wait for this one
		}
		if res.driver {
			drvErr = res.err
		} else {
			srvErr = res.err
		}
	}
	if ctx.Err() == context.DeadlineExceeded {
		t.Errorf("the split run hangs: driver %v, server %v", drvErr, srvErr)
	}
	col.mu.Lock()
	defer col.mu.Unlock()
	return drvErr, srvErr, len(col.got)
}

// splitPermissions are what Permissions gives splitYAML's two processes,
// with a delivery: user drv runs it with rl remote, user srv serves rl.
func splitPermissions(t *testing.T, delivery string) map[string]pipeline.NATSPermissions {
	t.Helper()
	cfg, err := pipeline.Parse([]byte(splitYAML), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := testEnv(t, &collector{}).Validate(cfg); err != nil {
		t.Fatal(err)
	}
	users := map[string]pipeline.NATSPermissions{}
	for user, proc := range map[string]pipeline.Process{"drv": {Remote: []string{"rl"}, Delivery: delivery}, "srv": {Serve: []string{"rl"}, Delivery: delivery}} {
		if users[user], err = pipeline.Permissions(cfg, proc); err != nil {
			t.Fatal(err)
		}
	}
	return users
}

// TestPermissionsAreNeeded: a split pipeline runs over a server whose two
// users have exactly what Permissions gives the two processes; without
// any one entry (allow_responses included) one process fails with a
// permission violation naming that subject.
func TestPermissionsAreNeeded(t *testing.T) {
	e2e.Long(t)
	users := splitPermissions(t, pipeline.DeliveryLive)
	drvErr, srvErr, got := runSplit(t, permServer(t, users))
	if drvErr != nil || srvErr != nil || got != 20 {
		t.Fatalf("with the permissions given: driver %v, server %v, %d of 20 messages", drvErr, srvErr, got)
	}
	type cut struct {
		user, list, entry string
	}
	var cuts []cut
	for user, p := range users {
		for _, s := range p.Publish {
			cuts = append(cuts, cut{user, "publish", s})
		}
		for _, s := range p.Subscribe {
			cuts = append(cuts, cut{user, "subscribe", s})
		}
		cuts = append(cuts, cut{user, "allow_responses", ""})
	}
	for _, c := range cuts {
		t.Run(c.user+" "+c.list+" "+c.entry, func(t *testing.T) {
			if c.user == "drv" && c.list == "publish" && strings.HasPrefix(c.entry, "$SRV.PING.t-") && c.entry != "$SRV.PING.t-rl" {
				// A stage reading a remote one asks its own service who shares
				// its queue group only when that stage has several instances.
				t.Skip("needed only when the remote producer has several instances")
			}
			if c.list == "publish" && strings.Contains(c.entry, ".to.") {
				// Each message goes to one reader instance alone only when
				// the reader has several (cmd/avflow's TestPermissionsCluster
				// serves one twice with exactly these permissions).
				t.Skip("needed only when the reader has several instances")
			}
			less := map[string]pipeline.NATSPermissions{}
			for u, p := range users {
				if u == c.user {
					switch c.list {
					case "publish":
						p.Publish = slices.DeleteFunc(slices.Clone(p.Publish), func(s string) bool { return s == c.entry })
					case "subscribe":
						p.Subscribe = slices.DeleteFunc(slices.Clone(p.Subscribe), func(s string) bool { return s == c.entry })
					default:
						p.Responses = 0
					}
				}
				less[u] = p
			}
			drvErr, srvErr, _ := runSplit(t, permServer(t, less))
			err := drvErr
			if c.user == "srv" {
				err = srvErr
			}
			// The violation names the subject: the entry, or one it matches.
			verb, subject := "Subscription to", strings.TrimRight(c.entry, "*>")
			if c.list != "subscribe" {
				verb = "Publish to"
			}
			if c.list == "allow_responses" {
				subject = "_INBOX."
			}
			if !errors.Is(err, nats.ErrPermissionViolation) || !strings.Contains(err.Error(), verb+` "`+subject) {
				t.Errorf("without it, %s's run ends with %v (the other's: driver %v, server %v), want a permission violation for %s %q",
					c.user, err, drvErr, srvErr, verb, subject)
			}
		})
	}
}

// answers sends a request to subject as nats micro does and counts the
// answers that come within quiet of each other.
func answers(t *testing.T, nc *nats.Conn, subject string) int {
	t.Helper()
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(subject, inbox, nil); err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		if _, err := sub.NextMsg(500 * time.Millisecond); err != nil {
			return n
		}
		n++
	}
}

// TestPermissionsLetEveryServiceAnswer: nats micro ls (a request to every
// service) gets an answer from each stage of a run with exactly its
// permissions, though the stages share a connection, and the run goes on;
// with one answer per request fewer, the request fails the run.
func TestPermissionsLetEveryServiceAnswer(t *testing.T) {
	// One connection for the run: every service on it (the most a
	// process's connection can have).
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	yaml := "name: t\nstages:\n  - {name: g, kind: gen, params: {forever: true}}\n  - {name: r, kind: relay, inputs: [g]}\n  - {name: c, kind: collect, inputs: [r]}\n"
	for _, tt := range []struct {
		name  string
		fewer int
	}{{"as printed", 0}, {"one answer fewer", 1}} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := pipeline.Parse([]byte(yaml), "t.yaml")
			if err != nil {
				t.Fatal(err)
			}
			env := testEnv(t, &collector{})
			if err := env.Validate(cfg); err != nil {
				t.Fatal(err)
			}
			p, err := pipeline.Permissions(cfg, pipeline.Process{})
			if err != nil {
				t.Fatal(err)
			}
			p.Responses -= tt.fewer
			ops := pipeline.NATSPermissions{Publish: []string{"$SRV.>"}, Subscribe: []string{"_INBOX.>"}}
			url := permServer(t, map[string]pipeline.NATSPermissions{"run": p, "ops": ops})
			nc, err := nats.Connect(url, nats.UserInfo("ops", "ops"))
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			_, err = runWithin(t, time.Minute, env, yaml, pipeline.Options{NATSURL: url, NATSOptions: []nats.Option{nats.UserInfo("run", "run")}}, func(r *pipeline.Runner) {
				for _, subject := range []string{"$SRV.PING", "$SRV.INFO", "$SRV.STATS"} {
					if n := answers(t, nc, subject); n != 3 && tt.fewer == 0 {
						t.Errorf("%s: %d answers, want one from each of the 3 stages", subject, n)
					}
				}
				r.Drain()
			})
			switch {
			case tt.fewer == 0 && err != nil:
				t.Errorf("the run failed: %v", err)
			case tt.fewer > 0 && (!errors.Is(err, nats.ErrPermissionViolation) || !strings.Contains(err.Error(), `Publish to "_INBOX.`)):
				t.Errorf("with one answer fewer the run ends with %v, want a permission violation for an answer", err)
			}
		})
	}
}

// TestPermissionsJob: with delivery job, the two users' permissions
// (JetStream's API for the run's stream, its consumers and acks, the
// edges' job subjects) are enough for the split run over a JetStream
// server, and name the stream and consumers exactly: no other stream's.
func TestPermissionsJob(t *testing.T) {
	e2e.Long(t)
	users := splitPermissions(t, pipeline.DeliveryJob)
	for _, want := range []string{"$JS.API.STREAM.CREATE.AVFLOW_t", "$JS.API.CONSUMER.MSG.NEXT.AVFLOW_t.c-0", "avflow.t.g.out.job.rl.0"} {
		if !slices.Contains(users["drv"].Publish, want) {
			t.Errorf("the driver may not publish %s: %v", want, users["drv"].Publish)
		}
	}
	for _, p := range append(users["drv"].Publish, users["srv"].Publish...) {
		if strings.HasPrefix(p, "$JS.") && strings.Contains(p, "*") && !strings.HasSuffix(p, ".>") {
			t.Errorf("%s names any stream or consumer", p)
		}
	}
	url := permServer(t, users, fmt.Sprintf("jetstream { store_dir: %q }", t.TempDir()))
	drvErr, srvErr, got := runSplitWith(t, url, pipeline.DeliveryJob)
	if drvErr != nil || srvErr != nil || got != 20 {
		t.Fatalf("with the permissions given: driver %v, server %v, %d of 20 messages\ndriver:\n%s\nserver:\n%s", drvErr, srvErr, got, users["drv"].Config(), users["srv"].Config())
	}
	// A driver that may not make the stream fails, naming the subject.
	const create = "$JS.API.STREAM.CREATE.AVFLOW_t"
	drv := users["drv"]
	drv.Publish = slices.DeleteFunc(slices.Clone(drv.Publish), func(s string) bool { return s == create })
	url = permServer(t, map[string]pipeline.NATSPermissions{"drv": drv, "srv": users["srv"]}, fmt.Sprintf("jetstream { store_dir: %q }", t.TempDir()))
	drvErr, _, _ = runSplitWith(t, url, pipeline.DeliveryJob)
	if !errors.Is(drvErr, pipeline.ErrJob) || !errors.Is(drvErr, nats.ErrPermissionViolation) || !strings.Contains(drvErr.Error(), create) {
		t.Errorf("without %s the driver ends with %v, want a job delivery error naming the permission", create, drvErr)
	}
}
