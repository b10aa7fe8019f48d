package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline/e2e"
)

// permPipeline writes a 5-stage transcode named name (its subjects are
// avflow.<name>.*) of frames lavfi frames into out/out.mp4; its flt stage
// scales them.
func permPipeline(t *testing.T, dir, name, out string, frames int, realtime bool) string {
	t.Helper()
	return writePermPipeline(t, dir, name, out, frames, realtime, `filter, params: {graph: "scale=320:180"}`)
}

// writePermPipeline is permPipeline whose flt stage is "flt" (its kind
// and params).
func writePermPipeline(t *testing.T, dir, name, out string, frames int, realtime bool, flt string) string {
	t.Helper()
	return writePipeline(t, dir, fmt.Sprintf(`name: %s
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2=size=640x360:rate=25", max_frames: %d, realtime: %t}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: flt, kind: %s, inputs: [dec]}
  - {name: enc, kind: encode, inputs: [flt], params: {codec: libx264, preset: ultrafast}}
  - {name: out, kind: sink, inputs: [enc], params: {path: %q}}
`, name, frames, realtime, flt, filepath.Join(out, "out.mp4")))
}

// TestPermissionsCommand: what avflow permissions prints for each kind of
// process, and its usage errors.
func TestPermissionsCommand(t *testing.T) {
	dir := t.TempDir()
	p := permPipeline(t, dir, "cam", dir, 10, false)
	tests := []struct {
		name        string
		args        []string
		code        int
		wants, nots []string
	}{
		{"served stage", []string{"--stage", "flt"}, 0,
			[]string{"#   avflow serve " + p + " --stage flt --nats URL\n", "permissions: {\n", `"avflow.cam.dec.out"`, `"avflow.cam.flt.out"`, `"$SRV.PING.cam-dec"`, `"$SRV.STATS.cam-flt.*"`, "allow_responses: {max: 1}\n", `"$SRV.PING.cam-enc"`},
			[]string{`"avflow.cam.src.video"`, `"avflow.cam.enc.out"`, `"$SRV.INFO.cam-enc"`}},
		{"run with a remote stage", []string{"--remote", "flt"}, 0,
			[]string{"#   avflow run " + p + " --remote flt --nats URL\n", `"avflow.cam.dec.out"`, `"$SRV.PING.cam-flt"`, `"_INBOX.>"`},
			[]string{`"$SRV.PING.cam-flt.*"`, `"avflow.cam.src.video"`}},
		{"one process", nil, 0,
			[]string{"#   avflow run " + p + " --nats URL\n", `"$SRV.PING.cam-src"`, `"_INBOX.>"`},
			[]string{`"avflow.cam.dec.out"`}},
		{"both, renamed", []string{"--stage", "flt", "--remote", "flt", "--name", "cam2"}, 0,
			[]string{`deployment "cam2"`, "--stage flt --name cam2 --nats URL\n", "--remote flt --name cam2 --nats URL\n", `"avflow.cam2.dec.out"`, `"avflow.cam2.flt.out"`},
			[]string{`"avflow.cam.`}},
		{"transport nats", []string{"--transport", "nats"}, 0, []string{`"avflow.cam.src.video"`, `"avflow.cam.dec.out.ack"`}, nil},
		{"unknown stage", []string{"--stage", "nope"}, exitInvalid, []string{`stage to serve "nope": the pipeline has no such stage (stages: src, dec, flt, enc, out)`}, []string{"permissions: {"}},
		{"local transport", []string{"--transport", "local"}, exitInvalid, []string{"transport local uses no NATS server"}, nil},
		{"bad name", []string{"--name", "a.b"}, exitInvalid, []string{`--name: invalid pipeline: name "a.b"`}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := avflow(t, nil, append([]string{"permissions", p}, tt.args...)...)
			if r.code != tt.code {
				t.Fatalf("exit %d, want %d:\n%s%s", r.code, tt.code, r.stdout, r.stderr)
			}
			for _, w := range tt.wants {
				if !strings.Contains(r.stdout+r.stderr, w) {
					t.Errorf("output lacks %q:\n%s%s", w, r.stdout, r.stderr)
				}
			}
			for _, n := range tt.nots {
				if strings.Contains(r.stdout+r.stderr, n) {
					t.Errorf("output has %q:\n%s%s", n, r.stdout, r.stderr)
				}
			}
		})
	}
	if r := avflow(t, nil, "permissions"); r.code != exitInvalid || !strings.Contains(r.stderr, "want one pipeline file") {
		t.Errorf("no file: exit %d: %s", r.code, r.stderr)
	}
}

// cluster is a 3-node nats-server cluster on loopback.
type cluster struct {
	urls  []string // client URL of each node
	nodes []*proc
	confs []string // each node's config file
}

// restart kills node i (SIGKILL) and starts it again with its config.
func (c *cluster) restart(t *testing.T, i int, after time.Duration) {
	t.Helper()
	c.nodes[i].kill(t)
	<-time.After(after)
	c.nodes[i] = startProc(t, exec.Command(natsServerBin(t), "-c", c.confs[i]))
}

// startCluster starts 3 nats-server nodes, routed to each other, whose
// clients are the users given (the inside of an authorization users
// list), and waits until every node routes to both others. Ports that
// were free when chosen but taken before a node bound them make it start
// the cluster again.
func startCluster(t *testing.T, users string) *cluster { return startClusterWith(t, users, false) }

// startJetStreamCluster is startCluster with JetStream on every node.
func startJetStreamCluster(t *testing.T, users string) *cluster {
	return startClusterWith(t, users, true)
}

func startClusterWith(t *testing.T, users string, js bool) *cluster {
	t.Helper()
	bin := natsServerBin(t)
	dir := t.TempDir()
	for attempt := 0; attempt < 5; attempt++ {
		var client, route, monitor [3]int
		for i := range 3 {
			client[i], route[i], monitor[i] = unusedPort(t, "tcp"), unusedPort(t, "tcp"), unusedPort(t, "tcp")
		}
		c := &cluster{}
		for i := range 3 {
			var routes []string
			for j := range 3 {
				if j != i {
					routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", route[j]))
				}
			}
			conf := filepath.Join(dir, fmt.Sprintf("node%d.conf", i+1))
			jetstream := ""
			if js {
				jetstream = fmt.Sprintf("jetstream { store_dir: %q }\n", filepath.Join(dir, fmt.Sprintf("js%d-%d", i+1, attempt)))
			}
			writeFile(t, conf, fmt.Appendf(nil, jetstream+`server_name: node%d
listen: 127.0.0.1:%d
http: 127.0.0.1:%d
cluster {
  name: avflow-test
  listen: 127.0.0.1:%d
  routes: [%s]
}
authorization {
  users = [
%s
  ]
}
`, i+1, client[i], monitor[i], route[i], strings.Join(routes, ", "), users))
			c.nodes = append(c.nodes, startProc(t, exec.Command(bin, "-c", conf)))
			c.confs = append(c.confs, conf)
			c.urls = append(c.urls, "nats://127.0.0.1:"+strconv.Itoa(client[i]))
		}
		if c.wait(t, client, monitor) {
			return c
		}
		for _, n := range c.nodes {
			_ = n.cmd.Process.Kill()
			<-n.done
		}
	}
	t.Fatal("no 3-node cluster could be started on free ports")
	return nil
}

// wait waits until every node listens and routes to the two others; false
// when a node has exited (its port was taken).
func (c *cluster) wait(t *testing.T, client, monitor [3]int) bool {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for i, n := range c.nodes {
		for !bound(n.cmd.Process.Pid, "tcp", client[i]) || routedTo(monitor[i]) < 2 {
			// Any node that exits (a port taken) leaves the others unrouted.
			for j, other := range c.nodes {
				select {
				case <-other.done:
					t.Logf("node %d exited, starting the cluster again:\n%s", j+1, other.out)
					return false
				default:
				}
			}
			time.Sleep(50 * time.Millisecond) // polling the monitoring endpoint
			if time.Now().After(deadline) {
				t.Fatalf("node %d does not route to both others within 30s:\n%s", i+1, n.out)
			}
		}
	}
	return true
}

// routedTo is how many other servers a node has routes to (its
// monitoring endpoint's /routez; a route pool has several per server).
func routedTo(monitor int) int {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/routez", monitor))
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var z struct {
		Routes []struct {
			RemoteName string `json:"remote_name"`
		} `json:"routes"`
	}
	if json.NewDecoder(resp.Body).Decode(&z) != nil {
		return 0
	}
	names := map[string]bool{}
	for _, r := range z.Routes {
		names[r.RemoteName] = true
	}
	return len(names)
}

// userEntry is a user of an authorization users list whose permissions
// are what avflow permissions prints for args.
func userEntry(t *testing.T, user, password string, args ...string) string {
	t.Helper()
	r := avflow(t, nil, append([]string{"permissions"}, args...)...)
	if r.code != 0 {
		t.Fatalf("avflow permissions %s: exit %d: %s", strings.Join(args, " "), r.code, r.stderr)
	}
	return fmt.Sprintf("{user: %s, password: %s,\n%s}\n", user, password, r.stdout)
}

// violation is avflow's error for a subject of pipeline b that a user may
// not read or write.
var violation = regexp.MustCompile(`avflow: .*Permissions Violation for (Subscription|Publish) to "(avflow\.b\.[^"]+|\$SRV\.[A-Z]+\.b-[^"]+)"`)

// TestPermissionsCluster: on a 3-node cluster whose two users may do
// exactly what avflow permissions prints for their pipelines, pipeline a
// runs split over three processes (its flt stage served twice) on three
// nodes and pipeline b in one process on the third, each with every frame; a's user can neither run
// nor serve b: one error naming the subject and the permission, exit 1,
// no hang, no output.
func TestPermissionsCluster(t *testing.T) {
	e2e.Long(t)
	outA, outB := t.TempDir(), t.TempDir()
	// a's flt passes frames as they are (a stage that may have replicas).
	a := writePermPipeline(t, t.TempDir(), "a", outA, 300, false, "pace, params: {rate: 1000}")
	b := permPipeline(t, t.TempDir(), "b", outB, 25, false)
	users := userEntry(t, "alice", "alice-pw", a, "--stage", "flt", "--remote", "flt") + userEntry(t, "bob", "bob-pw", b)
	c := startCluster(t, users)
	creds := func(user string) []string {
		return []string{"AVFLOW_NATS_USER=" + user, "AVFLOW_NATS_PASSWORD=" + user + "-pw"}
	}

	serve := startAvflow(t, creds("alice"), "serve", a, "--stage", "flt", "--nats", c.urls[1])
	serve2 := startAvflow(t, creds("alice"), "serve", a, "--stage", "flt", "--nats", c.urls[2])
	run := startAvflow(t, creds("alice"), "run", a, "--remote", "flt", "--nats", c.urls[0])
	runB := startAvflow(t, creds("bob"), "run", b, "--nats", c.urls[2])
	for name, pr := range map[string]*proc{"run a": run, "serve a": serve, "serve a again": serve2, "run b": runB} {
		if code := pr.wait(t, 90*time.Second); code != 0 {
			t.Fatalf("%s with exactly the printed permissions: exit %d:\n%s", name, code, pr.out)
		}
	}
	if n := probe(t, filepath.Join(outA, "out.mp4"))["video"].frames(); n != 300 {
		t.Errorf("a's output has %d frames, want 300", n)
	}
	if n := probe(t, filepath.Join(outB, "out.mp4"))["video"].frames(); n != 25 {
		t.Errorf("b's output has %d frames, want 25", n)
	}
	if err := os.Remove(filepath.Join(outB, "out.mp4")); err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct {
		name string
		args []string
	}{
		{"run b", []string{"run", b, "--nats", c.urls[0]}},
		{"serve b", []string{"serve", b, "--stage", "flt", "--nats", c.urls[1]}},
		{"run b with a remote stage", []string{"run", b, "--remote", "flt", "--nats", c.urls[0]}},
	} {
		t.Run("alice may not "+tt.name, func(t *testing.T) {
			pr := startAvflow(t, creds("alice"), tt.args...)
			if code := pr.wait(t, 30*time.Second); code != exitRun {
				t.Fatalf("exit %d, want %d:\n%s", code, exitRun, pr.out)
			}
			if !violation.MatchString(pr.out.String()) {
				t.Errorf("no error naming a subject of b and the permission refused:\n%s", pr.out)
			}
			assertNoOutput(t, outB)
		})
	}
}

// natsCLI is natscli's nats command, which make setup installs in bin/.
func natsCLI(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("NATS_BIN")
	if bin == "" {
		bin, _ = filepath.Abs(filepath.Join("..", "..", "bin", "nats"))
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("natscli is not installed (make setup installs bin/nats; NATS_BIN names another): %v", err)
	}
	return bin
}

// TestNATSMicroCLI: the stock NATS CLI lists every stage of a running
// pipeline as a micro service, and its info and stats show the stage's
// real counters.
func TestNATSMicroCLI(t *testing.T) {
	nats := natsCLI(t)
	dir := t.TempDir()
	p := permPipeline(t, dir, "micro", dir, 2500, true) // 100 s of frames: stopped below
	port, _ := startNATSServer(t)
	url := "nats://127.0.0.1:" + strconv.Itoa(port)
	run := startAvflow(t, nil, "run", p, "--nats", url, "--progress-interval", "200ms")
	waitFor(t, func() bool { return framesDone(run.out.String()) >= 25 }, 30*time.Second, run.out)
	home := t.TempDir() // no nats contexts of the machine's user
	cli := func(args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(runContext(t), nats, append([]string{"--server", url}, args...)...)
		cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+home)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("nats %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	stages := []string{"src", "dec", "flt", "enc", "out"}

	var listed []struct{ Name string }
	if err := json.Unmarshal([]byte(cli("micro", "ls", "--json")), &listed); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range listed {
		names = append(names, s.Name)
	}
	ls := cli("micro", "ls")
	for _, s := range stages {
		if !slices.Contains(names, "micro-"+s) || !strings.Contains(ls, "micro-"+s) {
			t.Errorf("nats micro ls does not list micro-%s: %q\n%s", s, names, ls)
		}
	}

	info := cli("micro", "info", "micro-flt")
	for _, w := range []string{"Service: micro-flt", "kind: filter", "inputs: avflow.micro.dec.out", "outputs: avflow.micro.flt.out", "avflow.micro.flt.$metrics"} {
		if !strings.Contains(info, w) {
			t.Errorf("nats micro info micro-flt lacks %q:\n%s", w, info)
		}
	}
	if m := regexp.MustCompile(`"In": (\d+)`).FindStringSubmatch(info); m == nil || m[1] == "0" {
		t.Errorf("nats micro info micro-flt shows no frames taken:\n%s", info)
	}

	for _, s := range stages {
		text := cli("micro", "stats", "micro-"+s)
		if !strings.Contains(text, "micro-"+s+" Service Statistics") {
			t.Errorf("nats micro stats micro-%s:\n%s", s, text)
		}
		var stats []struct {
			Endpoints []struct {
				Data struct {
					Name, Kind string
					In, Out    int64
					FPS        float64
					Terminal   bool
				}
			}
		}
		out := cli("micro", "stats", "micro-"+s, "--json")
		if err := json.Unmarshal([]byte(out), &stats); err != nil || len(stats) != 1 || len(stats[0].Endpoints) != 1 {
			t.Fatalf("nats micro stats micro-%s --json: %v\n%s", s, err, out)
		}
		d := stats[0].Endpoints[0].Data
		if d.Name != s || d.In == 0 || (d.Out == 0) != d.Terminal || d.FPS <= 0 {
			t.Errorf("nats micro stats micro-%s: %+v, want its stage's name, frames in, out (unless a sink) and fps", s, d)
		}
	}
	if err := run.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := run.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("run: exit %d:\n%s", code, run.out)
	}
}

// TestClusterExample: the cluster example's configs are valid for
// nats-server, and its users have what avflow permissions prints now for
// the processes the example names.
func TestClusterExample(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	users, err := os.ReadFile(filepath.Join(root, "examples", "cluster", "users.conf"))
	if err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "AVFLOW_MEDIA="+mediaDir(t), "IRL_DRIVER_PASSWORD=x", "IRL_FACES_PASSWORD=y", "OPS_PASSWORD=z")
	for _, args := range [][]string{{"--remote", "faces"}, {"--stage", "faces"}} {
		cmd := exec.CommandContext(runContext(t), avflowBin, append([]string{"permissions", "examples/irl-privacy/pipeline.yaml"}, args...)...)
		cmd.Dir, cmd.Env = root, env
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("avflow permissions %s: %v", args, err)
		}
		if !strings.Contains(string(users), string(out)) {
			t.Errorf("examples/cluster/users.conf lacks what avflow permissions examples/irl-privacy/pipeline.yaml %s prints now:\n%s", strings.Join(args, " "), out)
		}
	}
	for i := 1; i <= 3; i++ {
		cmd := exec.CommandContext(runContext(t), natsServerBin(t), "-t", "-c", filepath.Join(root, "examples", "cluster", fmt.Sprintf("node%d.conf", i)))
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("node%d.conf: %v\n%s", i, err, out)
		}
	}
}
