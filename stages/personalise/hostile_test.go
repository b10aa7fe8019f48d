package personalise_test

// Attacks on a running personalise stage by a hostile client of its
// viewer bucket: anyone who may write the bucket. Each attack must be
// refused (or absorbed) with a clear reason in the attacker's own
// manifest entry, while every other viewer's output goes on: the run
// never fails, freezes or grows without bound because of them.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/pipeline/viewers"
	"github.com/nats-io/nats.go/jetstream"
)

// hostileConfig is a light realtime pattern (320x180, 15 fps) of seconds
// through personalise, renditions 96 pixels high, in dir.
func hostileConfig(t *testing.T, seconds, maxVariants int, dir string) *pipeline.Config {
	t.Helper()
	yaml := fmt.Sprintf(`name: hostile
flow: drop-oldest
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2=size=320x180:rate=15:duration=%d", realtime: true}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: looks, kind: personalise, inputs: [dec], params: {max_variants: %d, out: %q, gop: 1s, hls_time: 1s, hls_list_size: 3, height: 96, preset: ultrafast, bitrate: 150k}}
`, seconds, maxVariants, dir)
	cfg, err := pipeline.Parse([]byte(yaml), "hostile.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Dir = dir // the pipeline's folder: overlay images are relative to it
	return cfg
}

// images makes, in dir, a 32x32 PNG logo.png, a text file notimage.png
// and a folder, and elsewhere a PNG, returned.
func images(t *testing.T, dir string) (outside string) {
	t.Helper()
	outside = filepath.Join(t.TempDir(), "elsewhere.png")
	for _, f := range []string{filepath.Join(dir, "logo.png"), outside} {
		if out, err := exec.Command(e2e.Tool(t, "ffmpeg"), "-v", "error", "-f", "lavfi", "-i", "color=red:s=32x32", "-frames:v", "1", f).CombinedOutput(); err != nil {
			t.Fatalf("ffmpeg: %v\n%s", err, out)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "notimage.png"), []byte("not an image\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "folder"), 0o755); err != nil {
		t.Fatal(err)
	}
	return outside
}

// putRaw writes any bytes under any key of the bucket, as a forger would.
func (lr *liveRun) putRaw(t *testing.T, key string, value []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := lr.kv.Put(ctx, key, value); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

// forge writes a profile straight into the bucket, as a hostile writer
// would: without the checks of viewers.Store.Put (the stage's own
// reading of the bucket must refuse it).
func (lr *liveRun) forge(t *testing.T, p viewers.Profile) {
	t.Helper()
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	lr.putRaw(t, viewers.ProfileKey(p.ID), b)
}

// await waits until every named viewer's entry is in state, failing at
// once if the run ends first (a hostile viewer ended everyone's output).
func (lr *liveRun) await(t *testing.T, state string, ids ...string) map[string]viewers.Entry {
	t.Helper()
	var m map[string]viewers.Entry
	e2e.WaitFor(t, 20*time.Second, func() string { return fmt.Sprintf("manifest %v, want %v %s\n%s", m, ids, state, lr.logs) }, func() bool {
		select {
		case err := <-lr.done:
			lr.done <- err
			t.Fatalf("the run ended while waiting for %v %s: %v\nmanifest %v\n%s", ids, state, err, m, lr.logs)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		l, err := lr.store.List(ctx)
		if err != nil {
			return false
		}
		m = l.Manifest
		for _, id := range ids {
			if m[id].State != state {
				return false
			}
		}
		return true
	})
	return m
}

// finish waits for the run to end by itself and fails the test if it
// ended with an error: a hostile viewer made everyone lose their output.
func (lr *liveRun) finish(t *testing.T) {
	t.Helper()
	select {
	case err := <-lr.done:
		lr.done <- nil // for the cleanup
		if err != nil {
			t.Fatalf("the run failed: every viewer lost their output: %v\n%s", err, lr.logs)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("the run did not end within 60 s of its source's end\n%s", lr.logs)
	}
}

// checkFinished: the viewer's rendition is a finished playlist without a
// discontinuity, with frames ffprobe decodes.
func checkFinished(t *testing.T, e viewers.Entry) {
	t.Helper()
	b, err := os.ReadFile(e.Playlist)
	if err != nil {
		t.Fatalf("%s's playlist: %v", e.Viewer, err)
	}
	if s := string(b); !strings.Contains(s, "EXT-X-ENDLIST") || strings.Contains(s, "EXT-X-DISCONTINUITY") {
		t.Errorf("%s's playlist %s is not one finished stream:\n%s", e.Viewer, e.Playlist, s)
	}
	if n := e2e.VideoFrames(t, e.Playlist); n == 0 {
		t.Errorf("%s's playlist %s: ffprobe decodes no frames", e.Viewer, e.Playlist)
	}
}

// running counts the render stages that still take frames: those whose
// input count grows while the personalise stage takes 15 more (removed
// branches stay in the metrics, with their counts frozen).
func (lr *liveRun) running(t *testing.T) int {
	t.Helper()
	snap := func() (int64, map[string]int64) {
		in, renders := int64(0), map[string]int64{}
		for _, s := range lr.r.Metrics().Snapshot() {
			switch s.Kind {
			case "personalise":
				in = s.In
			case "render":
				renders[s.Name] = s.In
			}
		}
		return in, renders
	}
	in0, before := snap()
	var after map[string]int64
	e2e.WaitFor(t, 10*time.Second, func() string { return "the personalise stage takes no more frames" }, func() bool {
		var in int64
		in, after = snap()
		return in >= in0+15
	})
	n := 0
	for name, in := range after {
		if in > before[name] {
			n++
		}
	}
	return n
}

// goroutines waits until the process has at most limit goroutines.
func goroutines(t *testing.T, limit int) {
	t.Helper()
	e2e.WaitFor(t, 15*time.Second, func() string {
		return fmt.Sprintf("%d goroutines, want at most %d: something leaks", runtime.NumGoroutine(), limit)
	}, func() bool { return runtime.NumGoroutine() <= limit })
}

// TestHostileBranchFailure: a look that passes the profile's checks but
// whose branch cannot run (an encoder that will not open, an overlay
// "image" that is a folder or not an image, or a file outside the
// pipeline's folder) is refused with the reason in the viewer's entry;
// the other viewer's rendition goes on to its end and the run does not
// fail.
func TestHostileBranchFailure(t *testing.T) {
	image := func(path string) viewers.Profile {
		return viewers.Profile{Overlays: []viewers.Overlay{{Image: path, Position: "top-right"}}}
	}
	cases := []struct {
		name string
		look func(dir, outside string) viewers.Profile
		want string // in the refusal; "" for a look that must go live
	}{
		{"bitrate under a kilobit", func(_, _ string) viewers.Profile {
			return viewers.Profile{Quality: viewers.Quality{MaxBitrate: 999}}
		}, "max_bitrate"},
		{"image is a folder", func(_, _ string) viewers.Profile { return image("folder") }, "overlays[0].image"},
		{"image is not an image", func(_, _ string) viewers.Profile { return image("notimage.png") }, "overlays[0].image"},
		{"image outside the pipeline folder", func(_, outside string) viewers.Profile { return image(outside) }, "overlays[0].image"},
		{"image climbing out", func(dir, outside string) viewers.Profile {
			rel, err := filepath.Rel(dir, outside)
			if err != nil {
				t.Fatal(err)
			}
			return image(rel)
		}, "overlays[0].image"},
		{"image in the pipeline folder", func(_, _ string) viewers.Profile { return image("logo.png") }, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			outside := images(t, dir)
			lr := startLive(t, hostileConfig(t, 5, 4, dir), dir)
			lr.put(t, viewers.Profile{ID: "good", Layout: viewers.LayoutSquare})
			lr.await(t, viewers.StateLive, "good")
			bad := c.look(dir, outside)
			bad.ID = "bad"
			lr.forge(t, bad)
			state := viewers.StateRefused
			if c.want == "" {
				state = viewers.StateLive
			}
			m := lr.await(t, state, "bad")
			if !strings.Contains(m["bad"].Error, c.want) {
				t.Errorf("refused with %q, want a reason naming %s", m["bad"].Error, c.want)
			}
			lr.finish(t)
			checkFinished(t, m["good"])
		})
	}
}

// TestHostileTemplateBombs: text templates that pass the function list
// but would take the stage's time (a range over a huge number, a
// template that calls itself, ranges nested over the frame) are refused
// at once: a viewer who joins after them gets their rendition within
// seconds, and the run ends cleanly.
func TestHostileTemplateBombs(t *testing.T) {
	bombs := map[string]string{
		"range-number": `{{range 200000000}}{{end}}x`,
		"recursion":    `{{define "x"}}{{template "x"}}{{end}}{{template "x"}}`,
		"block":        `{{block "b" .}}{{template "b" .}}{{end}}`,
		"nested-range": `{{range .Detections}}{{range $.Detections}}{{range $.Detections}}{{end}}{{end}}{{end}}`,
		"range-len":    `{{range len .Detections}}{{range len $.Detections}}{{end}}{{end}}`,
	}
	dir := t.TempDir()
	lr := startLive(t, hostileConfig(t, 12, 8, dir), dir)
	var ids []string
	for id, text := range bombs {
		lr.forge(t, viewers.Profile{ID: id, Overlays: []viewers.Overlay{{Text: text}}})
		ids = append(ids, id)
	}
	lr.put(t, viewers.Profile{ID: "after", Layout: viewers.LayoutVertical})
	start := time.Now()
	lr.await(t, viewers.StateLive, "after")
	if d := time.Since(start); d > 8*time.Second {
		t.Errorf("the viewer after the bombs waited %s for their rendition: the stage was busy with the bombs", d)
	}
	m := lr.await(t, viewers.StateRefused, ids...)
	for _, id := range ids {
		if !strings.Contains(m[id].Error, "overlays[0].text") {
			t.Errorf("%s refused with %q, want a reason naming overlays[0].text", id, m[id].Error)
		}
	}
	// A legitimate single range over the frame's detections is fine.
	lr.put(t, viewers.Profile{ID: "labels", Overlays: []viewers.Overlay{{Text: `{{range .Detections}}{{.Label}} {{end}}seen`}}})
	lr.await(t, viewers.StateLive, "labels")
	lr.finish(t)
	checkFinished(t, m["after"])
}

// TestHostileFlood: a thousand profiles, each a look of its own, are
// bounded by max_variants: at most that many branches ever run, the rest
// are refused, memory stays bounded, and the first viewer's rendition
// goes on. Removing them all leaves only the first viewer's entry.
func TestHostileFlood(t *testing.T) {
	const flood = 1000
	dir := t.TempDir()
	lr := startLive(t, hostileConfig(t, 15, 2, dir), dir)
	lr.put(t, viewers.Profile{ID: "good", Layout: viewers.LayoutSquare})
	lr.await(t, viewers.StateLive, "good")
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range flood {
		lr.put(t, viewers.Profile{ID: fmt.Sprintf("f%04d", i), Name: strings.Repeat("n", 64),
			Overlays: []viewers.Overlay{{Text: fmt.Sprintf("look %d %s", i, strings.Repeat("x", 200))}}})
	}
	e2e.WaitFor(t, 30*time.Second, func() string { ev, _ := lr.events(); return fmt.Sprintf("counters %v", ev) }, func() bool {
		ev, _ := lr.events()
		return ev["viewers_refused"] >= flood-1
	})
	ev, renders := lr.events()
	if renders > 2 || ev["variants"] > 2 || ev["variants_added"] > 2 {
		t.Errorf("max_variants 2: %d render stages, counters %v", renders, ev)
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 64<<20 {
		t.Errorf("the heap grew by %d MiB over a flood of %d profiles", grew>>20, flood)
	}
	for i := range flood {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := lr.store.Delete(ctx, fmt.Sprintf("f%04d", i))
		cancel()
		if err != nil {
			select {
			case rerr := <-lr.done:
				lr.done <- rerr
				t.Fatalf("removing f%04d: %v; the run ended: %v", i, err, rerr)
			default:
				t.Fatalf("removing f%04d: %v (the run goes on)\n%s", i, err, lr.logs)
			}
		}
	}
	var m map[string]viewers.Entry
	e2e.WaitFor(t, 30*time.Second, func() string { return fmt.Sprintf("%d manifest entries, want good's only", len(m)) }, func() bool {
		m = lr.entries(t)
		return len(m) == 1 && m["good"].State == viewers.StateLive
	})
	lr.finish(t)
	checkFinished(t, m["good"])
}

// TestHostileChurn: one viewer changing looks and leaving and coming
// back as fast as the bucket takes it leaks no branch and no goroutine,
// and ends in the look they chose last; the other viewer never notices.
func TestHostileChurn(t *testing.T) {
	dir := t.TempDir()
	lr := startLive(t, hostileConfig(t, 20, 4, dir), dir)
	lr.put(t, viewers.Profile{ID: "good", Layout: viewers.LayoutSquare})
	lr.await(t, viewers.StateLive, "good")
	base := runtime.NumGoroutine()
	looks := []viewers.Profile{
		{Layout: viewers.LayoutVertical},
		{Layout: viewers.LayoutLandscape, Overlays: []viewers.Overlay{{Text: "churn {{.Viewer.Name}}"}}},
		{Layout: viewers.LayoutSource, Quality: viewers.Quality{MaxHeight: 64}},
	}
	for i := range 60 {
		p := looks[i%len(looks)]
		p.ID, p.Name = "churn", fmt.Sprint(i)
		lr.put(t, p)
		if i%4 == 3 {
			lr.remove(t, "churn")
		}
	}
	final := viewers.Profile{ID: "churn", Layout: viewers.LayoutVertical, Overlays: []viewers.Overlay{{Text: "final", Position: "top"}}}
	lr.put(t, final)
	want, err := final.VariantKey()
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]viewers.Entry
	e2e.WaitFor(t, 30*time.Second, func() string { return fmt.Sprintf("churn's entry %+v, want live in %s\n%s", m["churn"], want, lr.logs) }, func() bool {
		m = lr.entries(t)
		return m["churn"].State == viewers.StateLive && m["churn"].Variant == want
	})
	// Variants whose last viewer left before they were live go once they are.
	e2e.WaitFor(t, 15*time.Second, func() string {
		ev, _ := lr.events()
		return fmt.Sprintf("after the churn, counters %v: want 2 variants (good's and churn's last)", ev)
	}, func() bool {
		ev, _ := lr.events()
		return ev["variants"] == 2 && ev["variants_added"]-ev["variants_removed"] == 2
	})
	e2e.WaitFor(t, 15*time.Second, func() string { return "render stages of removed variants still take frames" }, func() bool {
		return lr.running(t) == 2
	})
	goroutines(t, base+20)
	if ev, _ := lr.events(); ev["manifest_forged"] != 0 {
		t.Errorf("nobody forged the manifest, yet the stage counted %d forged writes (its own, mistaken)", ev["manifest_forged"])
	}
	lr.finish(t)
	checkFinished(t, m["good"])
}

// TestHostileTexts: texts that FFmpeg's option parser or drawtext would
// read as syntax (quotes, colons, backslashes, %{...}), newlines, any
// Unicode, control characters, a text that renders empty, the longest
// text and name: every such viewer gets a rendition (or a clear
// refusal), nobody else is affected, and no template error is counted.
func TestHostileTexts(t *testing.T) {
	texts := map[string]string{
		"quotes":    `it's "quoted" ''' '\''`,
		"syntax":    `a:b\c;d,e[f]g=h @x%{localtime}%{pts}%{eif:1/0:d} 50%`,
		"newlines":  "line one\nline two\r\nthree\\n",
		"unicode":   "ünïcødé 日本語 🎉 \u200b\u202e",
		"controls":  "del\x7f c1\u0085\u009b bom\ufeff end", // a NUL is refused by viewers.Check
		"backslash": `ends with \`,
		"empty":     `{{if false}}x{{end}}`,
		"longest":   strings.Repeat("é", viewers.MaxText/2),
		"name":      `Hi {{.Viewer.Name}}!`,
	}
	dir := t.TempDir()
	lr := startLive(t, hostileConfig(t, 20, len(texts)+1, dir), dir)
	lr.put(t, viewers.Profile{ID: "good", Layout: viewers.LayoutSquare})
	var ids []string
	for id, text := range texts {
		p := viewers.Profile{ID: id, Overlays: []viewers.Overlay{{Text: text, Position: "center"}}}
		if id == "name" {
			p.Name = `O'Brien: "x" \ y` + strings.Repeat("'", viewers.MaxName-16)
		}
		lr.put(t, p)
		ids = append(ids, id)
	}
	m := lr.await(t, viewers.StateLive, append(ids, "good")...)
	for _, s := range lr.r.Metrics().Snapshot() {
		if s.Kind == "render" && s.Events["template_errors"] > 0 {
			t.Errorf("%s: %d template errors", s.Name, s.Events["template_errors"])
		}
	}
	lr.finish(t)
	for _, id := range append(ids, "good") {
		checkFinished(t, m[id])
	}
}

// TestHostileBucketWrites: a forger writes what the stage does not
// expect: a profile under another viewer's key, values that are not
// JSON or not a profile, keys that are no viewer id, and manifest
// entries of its own. Each bad profile is refused in its own entry, the
// viewer they imitate keeps their variant, and a forged manifest entry
// of a watching viewer is put right by the stage.
func TestHostileBucketWrites(t *testing.T) {
	dir := t.TempDir()
	lr := startLive(t, hostileConfig(t, 12, 4, dir), dir)
	alice := viewers.Profile{ID: "alice", Layout: viewers.LayoutSquare}
	lr.put(t, alice)
	real := lr.await(t, viewers.StateLive, "alice")["alice"]
	// Alice's profile under bob's key, with another look.
	lr.putRaw(t, viewers.ProfileKey("bob"), []byte(`{"id":"alice","layout":"vertical"}`))
	bad := map[string]string{
		"garbage":  "not json at all",
		"empty":    "",
		"null":     "null",
		"array":    "[]",
		"object":   "{}",
		"trailing": `{"id":"trailing"} {"id":"x"}`,
		"nested":   strings.Repeat("[", viewers.MaxValue-1),
		"template": `{"id":"template","overlays":[{"text":"{{"}]}`,
		"a=b":      `{"id":"a=b"}`,
		"a/b":      `{"id":"a/b"}`,
		"number":   `{"id":"number","quality":{"max_height":1e400}}`,
	}
	var ids []string
	for id, v := range bad {
		lr.putRaw(t, viewers.ProfileKey(id), []byte(v))
		ids = append(ids, id)
	}
	m := lr.await(t, viewers.StateRefused, append(ids, "bob")...)
	if !strings.Contains(m["bob"].Error, `stored under "bob"`) {
		t.Errorf("bob refused with %q, want the id mismatch named", m["bob"].Error)
	}
	for _, id := range ids {
		if m[id].Error == "" {
			t.Errorf("%s refused without a reason", id)
		}
	}
	if got := m["alice"]; got.State != viewers.StateLive || got.Variant != real.Variant || got.Playlist != real.Playlist {
		t.Errorf("alice's entry after the forgeries %+v, want %+v", got, real)
	}
	// A forged manifest entry for alice, sending her player elsewhere.
	forged := fmt.Sprintf(`{"viewer":"alice","variant":"evil","playlist":"http://evil.example/x.m3u8","state":"live","updated":%q}`, time.Now().UTC().Format(time.RFC3339))
	lr.putRaw(t, viewers.ManifestKey("alice"), []byte(forged))
	var got viewers.Entry
	e2e.WaitFor(t, 5*time.Second, func() string { return fmt.Sprintf("alice's entry stays forged: %+v", got) }, func() bool {
		got = lr.entries(t)["alice"]
		return got.Playlist == real.Playlist && got.Variant == real.Variant
	})
	// Alice's entry removed, and one made up for a viewer nobody knows.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := lr.kv.Delete(ctx, viewers.ManifestKey("alice")); err != nil {
		t.Fatal(err)
	}
	lr.putRaw(t, viewers.ManifestKey("zed"), []byte(`{"viewer":"zed","playlist":"http://evil.example/z.m3u8","state":"live"}`))
	var all map[string]viewers.Entry
	e2e.WaitFor(t, 5*time.Second, func() string { return fmt.Sprintf("manifest %v: want alice's back and no zed", all) }, func() bool {
		all = lr.entries(t)
		_, zed := all["zed"]
		return !zed && all["alice"].Playlist == real.Playlist
	})
	if ev, _ := lr.events(); ev["manifest_forged"] != 3 {
		t.Errorf("3 forged manifest writes, counted %d", ev["manifest_forged"])
	}
	lr.finish(t)
	checkFinished(t, real)
}

// TestHostileBucketDeletes: the bucket deleted again and again comes back each time with the viewer
// live in it, and bounded when someone made it again without the bounds; the viewer's rendition has
// no gap, and nothing leaks.
func TestHostileBucketDeletes(t *testing.T) {
	dir := t.TempDir()
	lr := startLive(t, hostileConfig(t, 15, 4, dir), dir)
	lr.put(t, viewers.Profile{ID: "alice", Layout: viewers.LayoutSquare})
	real := lr.await(t, viewers.StateLive, "alice")["alice"]
	base := runtime.NumGoroutine()
	js, err := jetstream.New(lr.nc)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := js.DeleteKeyValue(ctx, viewers.Bucket("hostile"))
		cancel()
		if err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) && !errors.Is(err, jetstream.ErrStreamNotFound) {
			t.Fatalf("delete %d: %v", i, err)
		}
		if i%2 == 1 { // twice in a row, before the stage has noticed
			continue
		}
		loose := i == 4 // the last time, made again at once without the bounds
		if loose {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: viewers.Bucket("hostile"), History: 5, Storage: jetstream.MemoryStorage})
			cancel()
			if err != nil && !errors.Is(err, jetstream.ErrBucketExists) {
				t.Fatalf("making the bucket again without bounds: %v", err)
			}
		}
		e2e.WaitFor(t, 20*time.Second, func() string {
			return fmt.Sprintf("delete %d: the bucket is not back, bounded, with alice live\n%s", i, lr.logs)
		}, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			st, err := viewers.Attach(ctx, lr.nc, "hostile")
			if err != nil || (loose && st.Alive(ctx) != nil) {
				return false
			}
			l, err := st.List(ctx)
			return err == nil && l.Manifest["alice"].State == viewers.StateLive && len(l.Profiles) == 1
		})
	}
	goroutines(t, base+20)
	lr.finish(t)
	checkFinished(t, real)
	if _, err := os.Stat(filepath.Join(dir, "hostile")); err != nil {
		t.Fatal(err)
	}
}
