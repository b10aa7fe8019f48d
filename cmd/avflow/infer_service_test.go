package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/stages/infer/inferwire"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

const faceModel = "ultraface-rfb-320"

// camsPipeline writes a pipeline of two facecam streams, each through its
// own infer stage (f0, f1) with remote: true, frames frames each.
func camsPipeline(t *testing.T, dir, name string, frames int) string {
	t.Helper()
	media := e2e.MediaDir(t)
	var b strings.Builder
	fmt.Fprintf(&b, "name: %s\nstages:\n", name)
	for i, clip := range []string{"walk.mkv", "book.mkv"} {
		fmt.Fprintf(&b, "  - {name: s%d, kind: source, params: {url: %q, max_frames: %d, audio: false}}\n", i, filepath.Join(media, "facecam", clip), frames)
		fmt.Fprintf(&b, "  - {name: d%d, kind: decode, inputs: [s%d.video]}\n", i, i)
		fmt.Fprintf(&b, "  - {name: f%d, kind: infer, inputs: [d%d], params: {model: %s, remote: true, threads: 1, service_wait: 20s, timeout: 20s}}\n", i, i, faceModel)
		fmt.Fprintf(&b, "  - {name: e%d, kind: encode, inputs: [f%d], params: {codec: libx264, preset: ultrafast}}\n", i, i)
		fmt.Fprintf(&b, "  - {name: o%d, kind: sink, inputs: [e%d], params: {path: \"null\"}}\n", i, i)
	}
	sub := filepath.Join(dir, name)
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	return writePipeline(t, sub, b.String())
}

// metaCollector keeps the detections of the meta ports of pipelines, by
// pipeline, stage and pts.
type metaCollector struct {
	mu  sync.Mutex
	got map[string][]envelope.Detection // "<pipeline>.<stage>@<pts>"
}

func collectMeta(t *testing.T, nc *nats.Conn) *metaCollector {
	c := &metaCollector{got: map[string][]envelope.Detection{}}
	sub, err := nc.Subscribe("avflow.*.*.meta", func(m *nats.Msg) {
		e, err := envelope.Unmarshal(m.Data)
		if err != nil || e.Kind != envelope.KindData {
			return
		}
		parts := strings.Split(m.Subject, ".")
		key := parts[1] + "." + parts[2] + "@" + strconv.FormatInt(e.PTS, 10)
		c.mu.Lock()
		c.got[key] = e.Detections
		c.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return c
}

// of returns the detections of one pipeline, by "<stage>@<pts>".
func (c *metaCollector) of(pipeline string) map[string][]envelope.Detection {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string][]envelope.Detection{}
	for k, v := range c.got {
		if rest, ok := strings.CutPrefix(k, pipeline+"."); ok {
			out[rest] = v
		}
	}
	return out
}

// sameBoxes says whether two frames' detections match (ONNX Runtime may
// differ in the last bits between a batched and a single run).
func sameBoxes(a, b []envelope.Detection) bool {
	if len(a) != len(b) {
		return false
	}
	near := func(x, y float32) bool { return math.Abs(float64(x-y)) < 2e-3 }
	for i := range a {
		if !near(a[i].X1, b[i].X1) || !near(a[i].Y1, b[i].Y1) || !near(a[i].X2, b[i].X2) || !near(a[i].Y2, b[i].Y2) ||
			!near(a[i].Score, b[i].Score) || a[i].Label != b[i].Label {
			return false
		}
	}
	return true
}

// serviceStats asks a micro service for its stats' data.
func serviceStats(t *testing.T, nc *nats.Conn, service string) inferStats {
	t.Helper()
	m, err := nc.Request(micro.APIPrefix+".STATS."+service, nil, 5*time.Second)
	if err != nil {
		t.Fatalf("stats of %s: %v", service, err)
	}
	var st micro.Stats
	if err := json.Unmarshal(m.Data, &st); err != nil || len(st.Endpoints) != 1 {
		t.Fatalf("stats of %s: %v: %s", service, err, m.Data)
	}
	var data inferStats
	if err := json.Unmarshal(st.Endpoints[0].Data, &data); err != nil {
		t.Fatalf("stats data of %s: %v: %s", service, err, st.Endpoints[0].Data)
	}
	return data
}

type inferStats struct {
	Requests    int64   `json:"requests"`
	Images      int64   `json:"images"`
	Batches     int64   `json:"batches"`
	MeanBatch   float64 `json:"mean_batch"`
	BadRequests int64   `json:"bad_requests"`
}

// TestSharedInferenceService: 4 pipelines of 2 facecam streams each use
// one avflow serve --infer service: every pipeline completes, each frame's
// detections equal those of local infer stages on the same frames, and the
// service's model runs hold the frames of several callers (mean batch > 1).
func TestSharedInferenceService(t *testing.T) {
	e2e.Long(t)
	const frames = 30
	port, _ := startNATSServer(t)
	url := "nats://127.0.0.1:" + strconv.Itoa(port)
	nc := natsClient(t, url)
	meta := collectMeta(t, nc)
	dir := t.TempDir()

	ref := startAvflow(t, nil, "run", camsPipeline(t, dir, "ref", frames), "--nats", url, "--set", "f0.remote=false", "--set", "f1.remote=false")
	if code := ref.wait(t, 120*time.Second); code != 0 {
		t.Fatalf("the local run: exit %d:\n%s", code, ref.out)
	}

	svc := startAvflow(t, nil, "serve", "--infer", faceModel, "--nats", url, "--max-batch", "8", "--max-wait", "20ms", "--threads", "2")
	svc.waitLog(t, "inference service ready", 60*time.Second)
	var runs []*proc
	for i := range 4 {
		runs = append(runs, startAvflow(t, nil, "run", camsPipeline(t, dir, fmt.Sprintf("cams%d", i), frames), "--nats", url))
	}
	for i, r := range runs {
		if code := r.wait(t, 180*time.Second); code != 0 {
			t.Fatalf("pipeline cams%d: exit %d:\n%s", i, code, r.out)
		}
	}
	want := meta.of("ref")
	if len(want) != 2*frames {
		t.Fatalf("the local run gave detections for %d frames, want %d", len(want), 2*frames)
	}
	faces := 0
	for _, dets := range want {
		faces += len(dets)
	}
	if faces == 0 {
		t.Fatal("the local run found no face: the comparison would prove nothing")
	}
	for i := range 4 {
		got := meta.of(fmt.Sprintf("cams%d", i))
		if len(got) != len(want) {
			t.Errorf("cams%d: detections for %d frames, want %d", i, len(got), len(want))
		}
		for _, k := range slices.Sorted(func(yield func(string) bool) {
			for k := range want {
				if !yield(k) {
					return
				}
			}
		}) {
			if !sameBoxes(got[k], want[k]) {
				t.Errorf("cams%d %s: the service found %+v, a local infer stage %+v", i, k, got[k], want[k])
			}
		}
	}
	st := serviceStats(t, nc, inferwire.ServiceName(faceModel))
	t.Logf("%d faces on %d frames; service stats %+v", faces, len(want), st)
	if st.Images != 8*frames || st.MeanBatch <= 1 {
		t.Errorf("service stats %+v: want %d images in batches of more than 1 on average", st, 8*frames)
	}
	if err := svc.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := svc.wait(t, 30*time.Second); code != 0 {
		t.Errorf("the service after SIGTERM: exit %d:\n%s", code, svc.out)
	}
}

// TestInferServiceBadRequests: a request the service cannot serve gets an
// error reply naming what is wrong, and the service goes on serving; a
// pipeline whose service never appears fails at start, naming it.
func TestInferServiceBadRequests(t *testing.T) {
	e2e.Long(t)
	port, _ := startNATSServer(t)
	url := "nats://127.0.0.1:" + strconv.Itoa(port)

	noService := startAvflow(t, nil, "run", camsPipeline(t, t.TempDir(), "alone", 5), "--nats", url, "--set", "f0.service_wait=500ms", "--set", "f1.service_wait=500ms")
	if code := noService.wait(t, 60*time.Second); code == 0 || !strings.Contains(noService.out.String(), "no instance of service avflow-infer-"+faceModel) {
		t.Errorf("a pipeline without its service: exit %d, want an error naming the service:\n%s", code, noService.out)
	}

	svc := startAvflow(t, nil, "serve", "--infer", faceModel, "--nats", url)
	svc.waitLog(t, "inference service ready", 60*time.Second)
	nc := natsClient(t, url)
	image := func(model string, w, h, c int) []byte {
		r := inferwire.Request{Model: model, Caller: "test/hostile/1", W: w, H: h, C: c, Pixels: make([]byte, w*h*c)}
		b, err := r.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	tests := []struct {
		name       string
		body       []byte
		code, want string // error code and text; "" : an answer
	}{
		{"not msgpack", []byte("hello"), inferwire.CodeBadRequest, "malformed"},
		{"wrong size", image(faceModel, 100, 100, 3), inferwire.CodeBadRequest, "image 100x100, model ultraface-rfb-320 takes 320x240"},
		{"wrong channels", image(faceModel, 320, 240, 1), inferwire.CodeBadRequest, "1 channels"},
		{"unknown model", image("yolo-nope", 320, 240, 3), inferwire.CodeNoModel, `model "yolo-nope" is not served here`},
		{"a good one after them", image(faceModel, 320, 240, 3), "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := nc.Request(inferwire.Subject(faceModel), tt.body, 10*time.Second)
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			code, text := m.Header.Get(micro.ErrorCodeHeader), m.Header.Get(micro.ErrorHeader)
			if code != tt.code || !strings.Contains(text, tt.want) {
				t.Errorf("answer %q %q, want %q containing %q", code, text, tt.code, tt.want)
			}
			if tt.code == "" {
				if _, err := inferwire.UnmarshalReply(m.Data); err != nil {
					t.Errorf("the reply: %v", err)
				}
			}
		})
	}
	if st := serviceStats(t, nc, inferwire.ServiceName(faceModel)); st.BadRequests != 4 || st.Images != 1 {
		t.Errorf("stats %+v: want 4 bad requests and 1 image", st)
	}
}

// TestServeInferUsage: --infer serves a model, not a pipeline; serve
// without --stage or --infer says what it wants.
func TestServeInferUsage(t *testing.T) {
	p := camsPipeline(t, t.TempDir(), "u", 1)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--infer", faceModel, "--nats", "nats://127.0.0.1:1", p}, "--infer serves a model, without a pipeline file or --stage"},
		{[]string{"serve", "--infer", faceModel, "--nats", "nats://127.0.0.1:1", "--stage", "f0"}, "--infer serves a model"},
		{[]string{"serve", "--nats", "nats://127.0.0.1:1", p}, "want --stage NAME"},
		{[]string{"serve", "--infer", faceModel, "--nats", "nats://127.0.0.1:1", "--max-batch", "0"}, "--max-batch must be at least 1"},
	} {
		pr := startAvflow(t, nil, tt.args...)
		if code := pr.wait(t, 30*time.Second); code != exitInvalid || !strings.Contains(pr.out.String(), tt.want) {
			t.Errorf("avflow %s: exit %d, want %d and %q:\n%s", strings.Join(tt.args, " "), code, exitInvalid, tt.want, pr.out)
		}
	}
}
