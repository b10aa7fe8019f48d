package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/pipeline/envelope"
)

// The bus attacks of issue #10 on `avflow run`, by a hostile NATS client
// of the server it uses; pipeline/hostile_test.go has them in process.

// livePipeline is a realtime lavfi source of frames frames -> decode ->
// x264 -> MP4 in dir, with the given flow and transport.
func livePipeline(t *testing.T, dir, flow, transport string, frames int) string {
	return writePipeline(t, dir, fmt.Sprintf(`name: live
flow: %s
transport: %s
stages:
  - name: src
    kind: source
    params: {url: "lavfi:testsrc2=size=320x240:rate=25", realtime: true, max_frames: %d}
  - {name: vdec, kind: decode, inputs: [src.video]}
  - {name: venc, kind: encode, inputs: [vdec], params: {codec: libx264, preset: ultrafast}}
  - {name: out, kind: sink, inputs: [venc], params: {path: live.mp4}}
`, flow, transport, frames))
}

// natsClient connects to the server at url as an outside client.
func natsClient(t *testing.T, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connecting to %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// serviceInstance is the instance id in a stage service's metadata.
func serviceInstance(t *testing.T, nc *nats.Conn, service string) string {
	t.Helper()
	m, err := nc.Request(micro.APIPrefix+".INFO."+service, nil, 10*time.Second)
	if err != nil {
		t.Fatalf("$SRV.INFO.%s: %v", service, err)
	}
	var info micro.Info
	if err := json.Unmarshal(m.Data, &info); err != nil || info.Metadata["instance"] == "" {
		t.Fatalf("$SRV.INFO.%s: %s (%v)", service, m.Data, err)
	}
	return info.Metadata["instance"]
}

// endRow is a stage's row of an avflow end table: in, drops and events.
func endRow(t *testing.T, log, stage string) (in, drops int, events string) {
	t.Helper()
	m := regexp.MustCompile(`(?m)^\s+`+stage+`\s+\w+\s+(\d+)\s+\d+\s+\S+\s+\S+\s+\S+\s+\S+\s+\d+\s+(\d+)\s+\S+\s+(\S+)\s*$`).FindAllStringSubmatch(log, -1)
	if len(m) == 0 {
		t.Fatalf("no end table row for %s in:\n%s", stage, log)
	}
	last := m[len(m)-1]
	in, _ = strconv.Atoi(last[1])
	drops, _ = strconv.Atoi(last[2])
	return in, drops, last[3]
}

// listening are the TCP ports process pid listens on.
func listening(pid int) []int {
	var out []int
	inodes := map[string]bool{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	for _, table := range []string{"tcp", "tcp6"} {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "0A" || !inodes[f[9]] {
				continue
			}
			_, hexPort, _ := strings.Cut(f[1], ":")
			if p, err := strconv.ParseInt(hexPort, 16, 32); err == nil {
				out = append(out, int(p))
			}
		}
	}
	return out
}

var listenURL = regexp.MustCompile(`reach this run's NATS server at nats://avflow:([^@\s]+)@(127\.0\.0\.1:\d+) `)

// TestRunListen: avflow run opens no port unless asked; --listen opens a
// loopback one that lets in only the user and password it prints, once,
// and never logs; --listen with --nats is a command-line mistake.
func TestRunListen(t *testing.T) {
	e2e.Long(t)
	t.Run("default", func(t *testing.T) {
		run := startAvflow(t, nil, "run", livePipeline(t, t.TempDir(), "block", "auto", 50))
		run.waitLog(t, "output opened", 30*time.Second)
		if ports := listening(run.cmd.Process.Pid); len(ports) > 0 {
			t.Errorf("avflow run listens on %v", ports)
		}
		if code := run.wait(t, 30*time.Second); code != 0 {
			t.Fatalf("exit %d:\n%s", code, run.out)
		}
	})
	t.Run("listen", func(t *testing.T) {
		run := startAvflow(t, nil, "--log-level", "debug", "run", "--listen", livePipeline(t, t.TempDir(), "block", "auto", 75))
		waitFor(t, func() bool { return listenURL.MatchString(run.out.String()) }, 30*time.Second, run.out)
		m := listenURL.FindStringSubmatch(run.out.String())
		password, addr := m[1], m[2]
		if _, err := nats.Connect("nats://"+addr, nats.MaxReconnects(0)); err == nil {
			t.Error("a client without the credentials got in")
		}
		nc := natsClient(t, "nats://"+addr, nats.UserInfo("avflow", password))
		if got := ask(t, nc, micro.APIPrefix+".INFO", 4); !strings.Contains(got, `"stage":"venc"`) {
			t.Errorf("the stages' services are not there:\n%s", got)
		}
		if code := run.wait(t, 30*time.Second); code != 0 {
			t.Fatalf("exit %d:\n%s", code, run.out)
		}
		if n := strings.Count(run.out.String(), password); n != 1 {
			t.Errorf("the password is shown %d times, want once:\n%s", n, run.out)
		}
	})
	t.Run("with --nats", func(t *testing.T) {
		r := avflow(t, nil, "run", "--listen", "--nats", "nats://127.0.0.1:1", livePipeline(t, t.TempDir(), "block", "auto", 5))
		if r.code != exitInvalid || !strings.Contains(r.stderr, "--listen") {
			t.Errorf("exit %d, want %d naming --listen:\n%s", r.code, exitInvalid, r.stderr)
		}
	})
}

// TestRunTwiceRefused: a second avflow run of the same file on one server
// is refused at once (exit 1, no output), naming the first run's instance
// and host and --name; with --name it runs beside the first, and both
// outputs have every frame.
func TestRunTwiceRefused(t *testing.T) {
	e2e.Long(t)
	port, _ := startNATSServer(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	dir := t.TempDir()
	p := livePipeline(t, dir, "block", "auto", 100)
	first := startAvflow(t, nil, "run", "--nats", url, p)
	first.waitLog(t, "output opened", 30*time.Second)
	inst := serviceInstance(t, natsClient(t, url), "live-src")
	host, _ := os.Hostname()
	other := t.TempDir()
	second := avflow(t, nil, "run", "--nats", url, "--set", "out.path="+filepath.Join(other, "second.mp4"), p)
	checkFailure(t, second, exitRun, []string{`deployment "live" already runs`, inst, host, "--name"}, other)
	third := startAvflow(t, nil, "run", "--nats", url, "--name", "live-2", "--set", "out.path="+filepath.Join(other, "third.mp4"), p)
	for name, pr := range map[string]*proc{"first": first, "third": third} {
		if code := pr.wait(t, 60*time.Second); code != 0 {
			t.Fatalf("%s run: exit %d:\n%s", name, code, pr.out)
		}
	}
	for _, f := range []string{filepath.Join(dir, "live.mp4"), filepath.Join(other, "third.mp4")} {
		if n := probe(t, f)["video"].frames(); n != 100 {
			t.Errorf("%s has %d frames, want 100", f, n)
		}
	}
}

// TestHostileClientCannotAlterRun: while avflow run records a live source
// over an external server (every edge on the bus), a client of that server
// injects copies of a real frame with no and a made-up instance id, ends
// of stream on the frame edge's data and end subjects (no, made-up and the
// real instance id, without a count or with a wrong one), and forged
// credits in the old and the new formats: the run exits 0, the MP4 has
// every frame of the source (in drop-oldest flow: those the encoder's
// queue did not drop), and the end table counts each forgery.
func TestHostileClientCannotAlterRun(t *testing.T) {
	e2e.Long(t)
	const frames = 100
	for _, flow := range []string{"block", "drop-oldest"} {
		t.Run(flow, func(t *testing.T) {
			port, _ := startNATSServer(t)
			url := fmt.Sprintf("nats://127.0.0.1:%d", port)
			dir := t.TempDir()
			nc := natsClient(t, url)
			sub, err := nc.SubscribeSync("avflow.live.vdec.out")
			if err != nil {
				t.Fatal(err)
			}
			run := startAvflow(t, nil, "run", "--nats", url, livePipeline(t, dir, flow, "nats", frames))
			real, err := sub.NextMsg(30 * time.Second)
			if err != nil {
				t.Fatalf("no frame on avflow.live.vdec.out: %v\n%s", err, run.out)
			}
			_ = sub.Unsubscribe()
			vdec, venc := real.Header.Get(pipeline.HeaderInstance), serviceInstance(t, nc, "live-venc")
			pub := func(subject string, data []byte, header ...string) {
				m := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
				for i := 0; i+1 < len(header); i += 2 {
					m.Header.Set(header[i], header[i+1])
				}
				if err := nc.PublishMsg(m); err != nil {
					t.Fatal(err)
				}
			}
			eos, err := envelope.Marshal(&envelope.Envelope{V: envelope.Version, Kind: envelope.KindEOS, Stream: "vdec.out"})
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range []string{"", "made-up"} {
				for range 5 {
					pub("avflow.live.vdec.out", real.Data, pipeline.HeaderInstance, id)
				}
			}
			for _, id := range []string{"", "made-up", vdec} {
				pub("avflow.live.vdec.out", eos, pipeline.HeaderInstance, id)
			}
			pub("avflow.live.vdec.out.eos", eos)
			pub("avflow.live.vdec.out.eos", eos, pipeline.HeaderInstance, "made-up", pipeline.HeaderSent, "1")
			pub("avflow.live.vdec.out.eos", eos, pipeline.HeaderInstance, vdec)                           // no count
			pub("avflow.live.vdec.out.eos", eos, pipeline.HeaderInstance, vdec, pipeline.HeaderSent, "1") // says less than arrived: taken, ends nothing
			pub("avflow.live.vdec.out.ack", []byte("venc/0 18446744073709551615"))
			pub("avflow.live.vdec.out.ack", []byte("venc/0 "+venc+" 18446744073709551615 "+vdec))
			if err := nc.Flush(); err != nil {
				t.Fatal(err)
			}
			if code := run.wait(t, 60*time.Second); code != 0 {
				t.Fatalf("exit %d:\n%s", code, run.out)
			}
			in, drops, venEvents := endRow(t, run.out.String(), "venc")
			_, _, vdecEvents := endRow(t, run.out.String(), "vdec")
			got := probe(t, filepath.Join(dir, "live.mp4"))["video"].frames()
			if got != in || in+drops != frames || (flow == "block" && got != frames) {
				t.Errorf("the MP4 has %d frames, the encoder took %d and its queue dropped %d; want %d from the source", got, in, drops, frames)
			}
			// 10 frames, 3 ends of stream on the data subject, 3 on the end
			// subject; and the one that says 1 message was sent, if it
			// arrived when venc had that one only (it asks vdec, which
			// says it is running): otherwise it says less than arrived,
			// is taken and ends nothing until vdec's real one says more.
			if !strings.Contains(venEvents, "dropped_messages=16") && !strings.Contains(venEvents, "dropped_messages=17") {
				t.Errorf("venc events %q, want dropped_messages=16 or 17", venEvents)
			}
			if flow == "block" && (!strings.Contains(vdecEvents, "dropped_messages=1") || !strings.Contains(vdecEvents, "clamped_credits=1")) {
				t.Errorf("vdec events %q, want the old-format credit dropped and the huge one clamped", vdecEvents)
			}
		})
	}
}

// TestNATSBlip: the external server killed mid-run and started again on
// its port a moment later: avflow run reconnects, the recording completes
// (exit 0, an MP4 with the frames that were not in flight); a server that
// stays away fails the run within its 10 s bound, naming it.
func TestNATSBlip(t *testing.T) {
	e2e.Long(t)
	bin := natsServerBin(t)
	for _, transport := range []string{"nats", "auto"} {
		t.Run(transport, func(t *testing.T) {
			port, srv := startNATSServer(t)
			url := fmt.Sprintf("nats://127.0.0.1:%d", port)
			dir := t.TempDir()
			run := startAvflow(t, nil, "run", "--nats", url, "--progress-interval", "200ms", livePipeline(t, dir, "block", transport, 125))
			waitFor(t, func() bool { return framesDone(run.out.String()) >= 25 }, 30*time.Second, run.out)
			_ = srv.cmd.Process.Kill()
			<-srv.done
			run.waitLog(t, "lost the connection to the NATS server: reconnecting", 10*time.Second)
			again := startProc(t, exec.Command(bin, "-a", "127.0.0.1", "-p", strconv.Itoa(port)))
			waitFor(t, func() bool { return bound(again.cmd.Process.Pid, "tcp", port) }, 10*time.Second, again.out)
			if code := run.wait(t, 60*time.Second); code != 0 {
				t.Fatalf("exit %d:\n%s", code, run.out)
			}
			if !strings.Contains(run.out.String(), "reconnected to the NATS server") {
				t.Errorf("no reconnect logged:\n%s", run.out)
			}
			if n := probe(t, filepath.Join(dir, "live.mp4"))["video"].frames(); n < 100 {
				t.Errorf("the MP4 has %d frames, want most of 125", n)
			}
		})
	}
	t.Run("stays away", func(t *testing.T) {
		port, srv := startNATSServer(t)
		url := fmt.Sprintf("nats://127.0.0.1:%d", port)
		dir := t.TempDir()
		run := startAvflow(t, nil, "run", "--nats", url, livePipeline(t, dir, "block", "nats", 10000))
		run.waitLog(t, "output opened", 30*time.Second)
		_ = srv.cmd.Process.Kill()
		<-srv.done
		gone := time.Now()
		if code := run.wait(t, 30*time.Second); code != exitRun {
			t.Fatalf("exit %d, want %d:\n%s", code, exitRun, run.out)
		}
		if took := time.Since(gone); took > 20*time.Second {
			t.Errorf("the run failed %s after the server went away, want about 10s", took)
		}
		if !strings.Contains(run.out.String(), "lost the connection to the NATS server at "+url+", not back within 10s") {
			t.Errorf("the error does not name the server and the bound:\n%s", run.out)
		}
		for _, f := range []string{"live.mp4", "live.mp4.partial"} {
			if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
				t.Errorf("a failed run left %s", f)
			}
		}
	})
}
