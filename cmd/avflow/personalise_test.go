package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/pipeline/viewers"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestFacecamViewers is the facecam-vertical example as its README runs
// it: avflow run with --serve-hls, then avflow viewers add, ls and rm
// from other processes, which find the run through its run file. Alice
// and Carol get two vertical variants (their greetings differ), Bob a
// blurred landscape one; a fourth viewer with Alice's profile shares
// hers; removing Bob ends his variant; the playlists are served with
// their MIME type and every rendition is valid.
func TestFacecamViewers(t *testing.T) {
	e2e.Long(t)
	out, runDir := t.TempDir(), t.TempDir()
	env := []string{"AVFLOW_OUT=" + out, "AVFLOW_FRAMES=450", "AVFLOW_MEDIA=" + e2e.MediaDir(t), "XDG_RUNTIME_DIR=" + runDir, "AVFLOW_MODEL_MIRROR=" + e2e.Models(t)}
	addr := fmt.Sprintf("127.0.0.1:%d", unusedPort(t, "tcp"))
	run := startAvflow(t, env, "run", "--serve-hls", addr, "../../examples/facecam-vertical/pipeline.yaml")
	waitFor(t, func() bool { return avflow(t, env, "viewers", "ls", "-p", "facecam-vertical").code == 0 }, 30*time.Second, run.out)
	greet := "text=Hi {{.Viewer.Name}};position=top"
	for _, add := range [][]string{
		{"alice", "--name", "Alice", "--layout", "vertical", "--overlay", greet},
		{"carol", "--name", "Carol", "--layout", "vertical", "--overlay", greet},
		{"bob", "--layout", "landscape", "--privacy", "blur-faces"},
		{"alice2", "--name", "Alice", "--layout", "vertical", "--overlay", greet},
	} {
		if r := avflow(t, env, append([]string{"viewers", "add", "-p", "facecam-vertical"}, add...)...); r.code != 0 {
			t.Fatalf("viewers add %s: exit %d: %s%s", add[0], r.code, r.stdout, r.stderr)
		}
	}
	var m map[string]viewers.Entry
	waitFor(t, func() bool {
		m = listing(t, env)
		for _, id := range []string{"alice", "carol", "bob", "alice2"} {
			if m[id].State != viewers.StateLive {
				return false
			}
		}
		return true
	}, 30*time.Second, run.out)
	if m["alice"].Variant != m["alice2"].Variant || m["alice"].Variant == m["carol"].Variant || m["bob"].Variant == m["alice"].Variant {
		t.Errorf("variants alice %s, alice2 %s, carol %s, bob %s: want alice and alice2 to share, carol and bob apart",
			m["alice"].Variant, m["alice2"].Variant, m["carol"].Variant, m["bob"].Variant)
	}
	url := m["alice"].Playlist
	if !strings.HasPrefix(url, "http://"+addr+"/facecam-vertical/") {
		t.Fatalf("alice's playlist %q, want one served by --serve-hls on %s", url, addr)
	}
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "application/vnd.apple.mpegurl" || !strings.Contains(string(body), "#EXTM3U") {
		t.Errorf("GET %s: %d %q %q", url, resp.StatusCode, ct, body)
	}
	ls := avflow(t, env, "viewers", "ls", "-p", "facecam-vertical")
	if !strings.Contains(ls.stdout, "VIEWER") || !strings.Contains(ls.stdout, m["bob"].Variant) {
		t.Errorf("viewers ls:\n%s", ls.stdout)
	}
	if r := avflow(t, env, "viewers", "rm", "-p", "facecam-vertical", "bob"); r.code != 0 {
		t.Fatalf("viewers rm bob: %d %s", r.code, r.stderr)
	}
	run.waitLog(t, "variant removed: its last viewer left", 20*time.Second)
	if code := run.wait(t, time.Minute); code != 0 {
		t.Fatalf("run exit %d:\n%s", code, run.out)
	}
	for _, id := range []string{"alice", "carol", "bob"} {
		pl := filepath.Join(out, "facecam-vertical", m[id].Variant, "index.m3u8")
		if n := e2e.VideoFrames(t, pl); n == 0 {
			t.Errorf("%s's rendition %s decodes to no frames", id, pl)
		}
	}
	if r := avflow(t, env, "viewers", "ls", "-p", "facecam-vertical"); r.code == 0 || !strings.Contains(r.stderr, "no running pipeline") {
		t.Errorf("viewers ls after the run: exit %d %q, want a failure saying no pipeline runs", r.code, r.stderr)
	}
}

// listing is avflow viewers ls --json's manifest.
func listing(t *testing.T, env []string) map[string]viewers.Entry {
	t.Helper()
	r := avflow(t, env, "viewers", "ls", "-p", "facecam-vertical", "--json")
	if r.code != 0 {
		t.Fatalf("viewers ls: exit %d: %s", r.code, r.stderr)
	}
	var l struct {
		Manifest map[string]viewers.Entry `json:"manifest"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &l); err != nil {
		t.Fatalf("viewers ls --json: %v\n%s", err, r.stdout)
	}
	return l.Manifest
}

// TestViewersPermissions: on a 3-node JetStream cluster whose two users
// may do exactly what avflow permissions prints, the facecam-vertical run
// (its printed block) makes its viewer bucket, and a viewers client (the
// --viewers block) adds a viewer on another node and sees them live; the
// client cannot write the manifest, which only the pipeline writes.
func TestViewersPermissions(t *testing.T) {
	e2e.Long(t)
	example := "../../examples/facecam-vertical/pipeline.yaml"
	// Long enough for a loaded machine (the first viewers add waited 10 s
	// for the bucket, and the 300-frame run ended as alice's branch began);
	// ended by SIGTERM once checked.
	env := []string{"AVFLOW_MEDIA=" + e2e.MediaDir(t), "AVFLOW_MODEL_MIRROR=" + e2e.Models(t), "AVFLOW_FRAMES=3000"}
	users := userEntry(t, "runner", "runner-pw", example) + userEntry(t, "client", "client-pw", example, "--viewers")
	c := startJetStreamCluster(t, users)
	out := t.TempDir()
	run := startAvflow(t, append(env, "AVFLOW_OUT="+out, "AVFLOW_NATS_USER=runner", "AVFLOW_NATS_PASSWORD=runner-pw"), "run", "--nats", c.urls[0], example)
	client := append(env, "AVFLOW_NATS_USER=client", "AVFLOW_NATS_PASSWORD=client-pw", "AVFLOW_NATS_URL="+c.urls[1])
	waitFor(t, func() bool {
		return avflow(t, client, "viewers", "add", "-p", "facecam-vertical", "alice", "--layout", "vertical").code == 0
	}, 30*time.Second, run.out)
	var m map[string]viewers.Entry
	waitFor(t, func() bool { m = listing(t, client); return m["alice"].State == viewers.StateLive }, 30*time.Second, run.out)
	nc, err := nats.Connect(c.urls[2], nats.UserInfo("client", "client-pw"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, viewers.Bucket("facecam-vertical"))
	if err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 2*time.Second)
	defer cancelShort()
	if _, err := kv.Put(short, viewers.ManifestKey("alice"), []byte(`{"viewer":"alice","state":"live","playlist":"http://evil/"}`)); err == nil {
		t.Error("the viewers client wrote alice's manifest entry")
	}
	if err := run.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := run.wait(t, time.Minute); code != 0 {
		t.Fatalf("run with exactly the printed permissions, ended by SIGTERM: exit %d:\n%s", code, run.out)
	}
	if n := e2e.VideoFrames(t, filepath.Join(out, "facecam-vertical", m["alice"].Variant, "index.m3u8")); n == 0 {
		t.Error("alice's rendition decodes to nothing")
	}
}
