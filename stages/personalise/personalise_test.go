package personalise_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/pipeline/viewers"
	_ "github.com/avflow/avflow/stages/all"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// liveRun is a live pipeline with a personalise stage, running.
type liveRun struct {
	r     *pipeline.Runner
	done  chan error
	store *viewers.Store
	kv    jetstream.KeyValue
	nc    *nats.Conn
	dir   string
	logs  *e2e.Buffer
}

// showConfig is a realtime test pattern of seconds through personalise
// (gop 1 s, 1 s segments, 3 kept) into dir.
func showConfig(t *testing.T, seconds, maxVariants int, dir string) *pipeline.Config {
	t.Helper()
	yaml := fmt.Sprintf(`name: show
flow: drop-oldest
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2=size=640x360:rate=30:duration=%d[out0];sine=frequency=440:sample_rate=48000:duration=%d[out1]", realtime: true}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: adec, kind: decode, inputs: [src.audio]}
  - {name: aenc, kind: encode, inputs: [adec], params: {codec: aac, bitrate: 96k}}
  - {name: looks, kind: personalise, inputs: [dec, aenc], params: {max_variants: %d, out: %q, gop: 1s, hls_time: 1s, hls_list_size: 3, height: 240, preset: ultrafast, bitrate: 400k}}
`, seconds, seconds, maxVariants, dir)
	cfg, err := pipeline.Parse([]byte(yaml), "show.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// startLive runs cfg and connects to its embedded server as an outside
// client would.
func startLive(t *testing.T, cfg *pipeline.Config, dir string) *liveRun {
	t.Helper()
	if err := pipeline.Default.Validate(cfg); err != nil {
		t.Fatal(err)
	}
	logs := &e2e.Buffer{}
	r, err := pipeline.NewRunner(pipeline.Default, cfg, pipeline.Options{Log: logs.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	lr := &liveRun{r: r, done: make(chan error, 1), dir: dir, logs: logs}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { lr.done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-lr.done
	})
	select {
	case <-r.Ready():
	case err := <-lr.done:
		t.Fatalf("run ended before it was ready: %v\n%s", err, logs)
	case <-time.After(30 * time.Second):
		t.Fatal("run not ready within 30s")
	}
	user, pw := r.ListenCredentials()
	if r.NATSURL() == "" {
		t.Fatal("a pipeline with a personalise stage has no listener for the viewers' clients")
	}
	lr.nc, err = nats.Connect(r.NATSURL(), nats.UserInfo(user, pw))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lr.nc.Close)
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	if lr.store, err = viewers.Attach(sctx, lr.nc, cfg.Name); err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(lr.nc)
	if err != nil {
		t.Fatal(err)
	}
	if lr.kv, err = js.KeyValue(sctx, viewers.Bucket(cfg.Name)); err != nil {
		t.Fatal(err)
	}
	return lr
}

func (lr *liveRun) put(t *testing.T, p viewers.Profile) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := lr.store.Put(ctx, &p); err != nil {
		t.Fatal(err)
	}
}

func (lr *liveRun) remove(t *testing.T, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := lr.store.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
}

// entries returns the manifest.
func (lr *liveRun) entries(t *testing.T) map[string]viewers.Entry {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l, err := lr.store.List(ctx)
	if err != nil {
		t.Fatalf("%v\n%s", err, lr.logs)
	}
	return l.Manifest
}

// waitEntries waits until every named viewer's entry is in state.
func (lr *liveRun) waitEntries(t *testing.T, state string, ids ...string) map[string]viewers.Entry {
	t.Helper()
	var m map[string]viewers.Entry
	e2e.WaitFor(t, 20*time.Second, func() string { return fmt.Sprintf("manifest %v, want %v %s\n%s", m, ids, state, lr.logs) }, func() bool {
		m = lr.entries(t)
		for _, id := range ids {
			if m[id].State != state {
				return false
			}
		}
		return true
	})
	return m
}

// events is the personalise stage's counters, and the number of render
// stages the graph has had.
func (lr *liveRun) events() (map[string]int64, int) {
	var ev map[string]int64
	renders := 0
	for _, s := range lr.r.Metrics().Snapshot() {
		switch s.Kind {
		case "personalise":
			ev = s.Events
		case "render":
			renders++
		}
	}
	return ev, renders
}

// TestViewersShareVariants: 50 viewers over 3 looks run exactly 3
// branches; a fourth look joining mid-stream starts on a keyframe within
// one GOP; removing the viewers of a look removes its branch while the
// others go on without a gap; a look over max_variants, a profile that
// does not decode and one whose image is missing are refused in their
// manifest entries without touching anyone else's output. Every
// rendition is valid HLS with aligned keyframes, segments within 10% of
// their target and no pile-up on disk; the looks that keep the sound
// share the pipeline's one audio encode, the muted look has none. (Not
// a long test: it runs in real time, 20 s, on little CPU, and the race
// pass of make test runs it.)
func TestViewersShareVariants(t *testing.T) {
	dir := t.TempDir()
	lr := startLive(t, showConfig(t, 20, 5, dir), dir)
	looks := []viewers.Profile{
		{Layout: viewers.LayoutVertical, Overlays: []viewers.Overlay{{Text: "LIVE", Position: "top"}}},
		{Layout: viewers.LayoutSquare, Privacy: viewers.PrivacyBlurFaces},
		{Layout: viewers.LayoutSource, Quality: viewers.Quality{MaxHeight: 180}, Audio: viewers.AudioMute},
	}
	var ids []string
	for i := range 50 {
		p := looks[i%3]
		p.ID, p.Name = fmt.Sprintf("v%02d", i), fmt.Sprintf("Viewer %d", i)
		lr.put(t, p)
		ids = append(ids, p.ID)
	}
	m := lr.waitEntries(t, viewers.StateLive, ids...)
	audio := map[string]bool{m[ids[0]].Variant: true, m[ids[1]].Variant: true, m[ids[2]].Variant: false} // the third look is muted
	variants := map[string]bool{}
	for _, id := range ids {
		variants[m[id].Variant] = true
	}
	ev, renders := lr.events()
	if len(variants) != 3 || ev["variants"] != 3 || ev["variants_added"] != 3 || renders != 3 {
		t.Fatalf("50 viewers over 3 looks: %d variants in the manifest, counters %v, %d render stages; want 3 of each", len(variants), ev, renders)
	}
	lr.put(t, viewers.Profile{ID: "late", Layout: viewers.LayoutVertical, Overlays: []viewers.Overlay{{Text: "late", Position: "bottom"}}})
	late := lr.waitEntries(t, viewers.StateLive, "late")["late"]
	audio[late.Variant] = true
	for _, s := range lr.r.Metrics().Snapshot() {
		if s.Name == "looks-"+late.Variant+"-look" {
			if w := s.Events["waited_frames"]; w > 30 {
				t.Errorf("the late viewer's variant waited %d frames for its first keyframe, want at most one GOP (30)", w)
			}
		}
	}
	// A template naming HUD text the frames lack: the variant runs, and
	// the viewer's entry says what did not render.
	lr.put(t, viewers.Profile{ID: "hud", Layout: viewers.LayoutVertical, Overlays: []viewers.Overlay{{Text: "{{.HUD.speed}} km/h", Position: "bottom"}}})
	e2e.WaitFor(t, 20*time.Second, func() string { return fmt.Sprintf("hud's entry %+v", lr.entries(t)["hud"]) }, func() bool {
		e := lr.entries(t)["hud"]
		return e.State == viewers.StateLive && strings.Contains(e.Error, `"speed"`)
	})
	// Refusals: a sixth look (max_variants 5), a profile that does not
	// decode, an overlay image that is missing.
	lr.put(t, viewers.Profile{ID: "toomany", Layout: viewers.LayoutLandscape})
	if _, err := lr.kv.Put(context.Background(), viewers.ProfileKey("forged"), []byte(`{"id":"forged","colour":"red"}`)); err != nil {
		t.Fatal(err)
	}
	lr.put(t, viewers.Profile{ID: "noimage", Overlays: []viewers.Overlay{{Image: "no-such-logo.png"}}})
	m = lr.waitEntries(t, viewers.StateRefused, "toomany", "forged", "noimage")
	for id, want := range map[string]string{"toomany": "max_variants", "forged": `unknown field "colour"`, "noimage": "no-such-logo.png"} {
		if !strings.Contains(m[id].Error, want) {
			t.Errorf("%s refused with %q, want a reason naming %s", id, m[id].Error, want)
		}
	}
	for _, id := range []string{"toomany", "noimage", "hud"} {
		lr.remove(t, id)
	}
	// The stage has seen them go before the bucket goes: a removal it has
	// not seen yet goes with the bucket, and it puts back what it knew
	// (hud came back, and its variant stayed: seen in CI).
	e2e.WaitFor(t, 20*time.Second, func() string { ev, _ := lr.events(); return fmt.Sprintf("counters %v, manifest %v", ev, lr.entries(t)) }, func() bool {
		ev, _ := lr.events()
		m := lr.entries(t)
		return ev["variants_removed"] == 1 && m["toomany"].Viewer == "" && m["noimage"].Viewer == "" && m["hud"].Viewer == ""
	})
	// Someone deletes the bucket: it comes back with every viewer, and
	// the outputs go on (checked below: no gap).
	js, err := jetstream.New(lr.nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteKeyValue(context.Background(), viewers.Bucket("show")); err != nil {
		t.Fatal(err)
	}
	e2e.WaitFor(t, 20*time.Second, func() string { return "the bucket is not back with v00 live\n" + lr.logs.Grep("bucket", "error") }, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		st, err := viewers.Attach(ctx, lr.nc, "show")
		if err != nil {
			return false
		}
		l, err := st.List(ctx)
		lr.store = st
		return err == nil && l.Manifest["v00"].State == viewers.StateLive && len(l.Profiles) >= 50
	})
	// The viewers of the third look leave: its branch goes.
	for i := 2; i < 50; i += 3 {
		lr.remove(t, ids[i])
	}
	e2e.WaitFor(t, 20*time.Second, func() string {
		ev, _ := lr.events()
		return fmt.Sprintf("counters %v\n%s", ev, lr.logs.Grep("bucket", "error", "viewer left", "variant removed"))
	}, func() bool {
		ev, _ := lr.events()
		return ev["variants"] == 3 && ev["variants_removed"] == 2
	})
	if err := <-lr.done; err != nil {
		t.Fatalf("run: %v\n%s", err, lr.logs)
	}
	lr.done <- nil // for the cleanup
	checkRenditions(t, lr, audio)
}

// checkRenditions: each variant's playlist is finished, valid HLS without
// discontinuities, its segments within 10% of 1 s (the last may be
// shorter), at most hls_list_size+2 segment files on disk, every segment
// starting on a keyframe at the same offset into the GOP as every other
// variant's.
func checkRenditions(t *testing.T, lr *liveRun, audio map[string]bool) {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join(lr.dir, "show", "*"))
	if err != nil || len(dirs) != 5 {
		t.Fatalf("rendition folders %v (%v), want 5 (3 looks, late's and hud's; none for the refused)", dirs, err)
	}
	offsets := map[int64]bool{}
	for _, d := range dirs {
		playlist := filepath.Join(d, "index.m3u8")
		b, err := os.ReadFile(playlist)
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		if strings.Contains(text, "EXT-X-DISCONTINUITY") || !strings.Contains(text, "EXT-X-ENDLIST") {
			t.Errorf("%s: want no discontinuity and an end:\n%s", playlist, text)
		}
		durs := extinf(t, text)
		for i, dur := range durs[:len(durs)-1] {
			if dur < 0.9 || dur > 1.1 {
				t.Errorf("%s: segment %d lasts %.3fs, want 1s ±10%%", playlist, i, dur)
			}
		}
		segs := segments(t, d)
		if len(segs) > 5 {
			t.Errorf("%s: %d segment files on disk, want at most 5 (3 in the list, the older deleted)", d, len(segs))
		}
		prev := int64(-1)
		for _, seg := range segs {
			key, pts := firstFrame(t, seg)
			if !key {
				t.Errorf("%s starts on a frame that is not a keyframe", seg)
			}
			if prev >= 0 && (pts-prev < 87000 || pts-prev > 93000) {
				t.Errorf("%s starts %.3fs after the segment before it, want 1s: a gap or an overlap", seg, float64(pts-prev)/90000)
			}
			prev = pts
			offsets[pts%90000] = true
		}
		if n := e2e.VideoFrames(t, playlist); n == 0 {
			t.Errorf("%s: ffprobe decodes no frames", playlist)
		}
		if want, known := audio[filepath.Base(d)]; known && hasAudio(t, playlist) != want {
			t.Errorf("%s: audio stream %v, want %v (muted looks have none, the others share the pipeline's)", playlist, !want, want)
		}
	}
	if len(offsets) != 1 {
		t.Errorf("segments start at %d different offsets into the GOP (90 kHz ticks mod 1 s: %v), want one: the variants' keyframes are not aligned", len(offsets), offsets)
	}
}

// hasAudio reports whether a rendition has an audio stream.
func hasAudio(t *testing.T, playlist string) bool {
	t.Helper()
	out, err := exec.Command(e2e.Tool(t, "ffprobe"), "-v", "error", "-select_streams", "a", "-show_entries", "stream=codec_name", "-of", "csv=p=0", playlist).Output()
	if err != nil {
		t.Fatalf("ffprobe %s: %v", playlist, err)
	}
	return strings.TrimSpace(string(out)) != ""
}

// segments are a rendition's segment files, in order.
func segments(t *testing.T, dir string) []string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*.ts"))
	num := func(f string) int {
		base := strings.TrimSuffix(filepath.Base(f), ".ts")
		n, _ := strconv.Atoi(strings.TrimLeft(base, "index"))
		return n
	}
	slices.SortFunc(files, func(a, b string) int { return num(a) - num(b) })
	return files
}

var extinfRe = "#EXTINF:"

func extinf(t *testing.T, playlist string) []float64 {
	t.Helper()
	var out []float64
	sc := bufio.NewScanner(strings.NewReader(playlist))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), extinfRe); ok {
			f, err := strconv.ParseFloat(strings.TrimSuffix(v, ","), 64)
			if err != nil {
				t.Fatalf("bad %s line %q", extinfRe, sc.Text())
			}
			out = append(out, f)
		}
	}
	if len(out) == 0 {
		t.Fatalf("playlist without segments:\n%s", playlist)
	}
	return out
}

// firstFrame is whether a segment's first video frame is a keyframe, and
// its pts (90 kHz).
func firstFrame(t *testing.T, seg string) (bool, int64) {
	t.Helper()
	out, err := exec.Command(e2e.Tool(t, "ffprobe"), "-v", "error", "-select_streams", "v", "-read_intervals", "%+#1",
		"-show_entries", "frame=key_frame,pts", "-of", "csv=p=0", seg).Output()
	if err != nil {
		t.Fatalf("ffprobe %s: %v", seg, err)
	}
	f := strings.Split(strings.TrimSpace(strings.Split(string(out), "\n")[0]), ",")
	if len(f) < 2 {
		t.Fatalf("ffprobe %s: %q", seg, out)
	}
	pts, _ := strconv.ParseInt(f[1], 10, 64)
	return f[0] == "1", pts
}

// TestPushOutput: with push set, a variant is also sent to its URL (here
// MPEG-TS over TCP to a listener of the test's), and what arrives is
// valid video with the variant's size; the manifest names the URL.
func TestPushOutput(t *testing.T) {
	e2e.Long(t)
	dir := t.TempDir()
	l := e2e.Listen(t)
	got := filepath.Join(dir, "pushed.ts")
	received := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			received <- err
			return
		}
		defer c.Close()
		f, err := os.Create(got)
		if err != nil {
			received <- err
			return
		}
		_, err = io.Copy(f, c)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		received <- err
	}()
	url := "tcp://" + l.Addr().String()
	cfg, err := pipeline.Parse([]byte(fmt.Sprintf(`name: pushy
flow: drop-oldest
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2=size=640x360:rate=30:duration=6", realtime: true}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: looks, kind: personalise, inputs: [dec], params: {out: %q, gop: 1s, hls_time: 1s, height: 240, preset: ultrafast, push: "%s?variant={variant}"}}
`, dir, url)), "pushy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	lr := startLive(t, cfg, dir)
	lr.put(t, viewers.Profile{ID: "pat", Layout: viewers.LayoutSquare})
	m := lr.waitEntries(t, viewers.StateLive, "pat")
	if want := url + "?variant=" + m["pat"].Variant; m["pat"].Push != want {
		t.Errorf("pat's entry pushes to %q, want %q", m["pat"].Push, want)
	}
	if err := <-lr.done; err != nil {
		t.Fatalf("run: %v\n%s", err, lr.logs)
	}
	lr.done <- nil
	if err := <-received; err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(e2e.Tool(t, "ffprobe"), "-v", "error", "-select_streams", "v", "-show_entries", "stream=width,height", "-of", "csv=p=0", got).Output()
	if first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n"); err != nil || first != "240,240" { // listed in the program too
		t.Fatalf("pushed stream: %q %v, want 240x240 video", out, err)
	}
	if n := e2e.VideoFrames(t, got); n < 60 {
		t.Errorf("%d frames pushed, want the variant's seconds of them", n)
	}
}

// TestBranchFailureRefusesOnlyItsViewers: a variant whose branch fails
// while it runs, where no check before could see it coming, is
// removed and its viewers refused with the reason; the other variant's
// rendition is complete and continuous, and the run ends well. (A folder
// stands where its first segment goes: the sink opens, and fails when
// that segment is done.)
func TestBranchFailureRefusesOnlyItsViewers(t *testing.T) {
	e2e.Long(t)
	dir := t.TempDir()
	broken := viewers.Profile{ID: "broken", Layout: viewers.LayoutSquare}
	key, err := broken.VariantKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "show", key, "index0.ts"), 0o755); err != nil {
		t.Fatal(err)
	}
	lr := startLive(t, showConfig(t, 8, 4, dir), dir)
	lr.put(t, viewers.Profile{ID: "fine", Layout: viewers.LayoutVertical})
	lr.put(t, broken)
	broken.ID = "broken2"
	lr.put(t, broken)
	m := lr.waitEntries(t, viewers.StateRefused, "broken", "broken2")
	if !strings.Contains(m["broken"].Error, "branch failed") || !strings.Contains(m["broken"].Error, "sink") {
		t.Errorf("broken refused with %q, want the branch's failure named", m["broken"].Error)
	}
	fine := lr.waitEntries(t, viewers.StateLive, "fine")["fine"]
	if err := <-lr.done; err != nil {
		t.Fatalf("run failed with one variant's branch: %v\n%s", err, lr.logs)
	}
	lr.done <- nil
	playlist := filepath.Join(dir, "show", fine.Variant, "index.m3u8")
	b, err := os.ReadFile(playlist)
	if err != nil || !strings.Contains(string(b), "EXT-X-ENDLIST") || strings.Contains(string(b), "DISCONTINUITY") {
		t.Fatalf("the other variant's playlist: %v\n%s", err, b)
	}
	if n := e2e.VideoFrames(t, playlist); n == 0 {
		t.Error("the other variant's rendition decodes to nothing")
	}
}
