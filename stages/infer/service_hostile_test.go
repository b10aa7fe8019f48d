package infer

// Hostile tests of the shared inference service (Service) and of the
// remote infer stage that calls it: forged and malformed requests, a
// service stopped with requests queued, a bogus service answering the
// caller, and the mapping of the reply back to the frame.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/stages/infer/inferwire"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/vmihailenco/msgpack/v5"
	"go.uber.org/goleak"
)

const hostileModel = "ultraface-rfb-320"

// hostileBus starts an embedded nats-server and returns its URL and a
// connection to it, both gone when the test ends.
func hostileBus(t *testing.T) (string, *nats.Conn) {
	t.Helper()
	srv := e2e.NATSServer(t, &server.Options{})
	nc := hostileConn(t, srv.ClientURL())
	return srv.ClientURL(), nc
}

func hostileConn(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// startHostileService runs the shared service of UltraFace on nc, stopped
// when the test ends (Stop is idempotent: a test may stop it first).
func startHostileService(t *testing.T, nc *nats.Conn, maxBatch int, maxWait time.Duration) *Service {
	t.Helper()
	t.Setenv("AVFLOW_MODEL_MIRROR", e2e.Models(t))
	t.Setenv("AVFLOW_MODELS", t.TempDir())
	s, err := NewService(context.Background(), nc, ServiceOptions{Model: hostileModel, MaxBatch: maxBatch, MaxWait: maxWait, Threads: 1,
		Version: "0.0.1", Instance: "svc-" + t.Name(), Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	return s
}

// rawFrames decodes n frames of a facecam clip, scaled to w x h, as
// yuv420p frames (with the ffmpeg CLI, into the test's folder).
func rawFrames(t *testing.T, clip string, w, h, n int, fps string) []*astiav.Frame {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "frames.yuv")
	out, err := exec.Command(e2e.Tool(t, "ffmpeg"), "-v", "error", "-i", e2e.Media(t, "facecam/"+clip), "-vf",
		fmt.Sprintf("fps=%s,scale=%d:%d", fps, w, h), "-frames:v", strconv.Itoa(n), "-pix_fmt", "yuv420p", "-f", "rawvideo", raw).CombinedOutput()
	if err != nil {
		t.Fatalf("ffmpeg: %v\n%s", err, out)
	}
	data, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	size := w*h + 2*(w/2)*(h/2)
	if len(data) != n*size {
		t.Fatalf("ffmpeg gave %d bytes, want %d frames of %d", len(data), n, size)
	}
	var frames []*astiav.Frame
	for i := range n {
		f := astiav.AllocFrame()
		t.Cleanup(f.Free)
		f.SetWidth(w)
		f.SetHeight(h)
		f.SetPixelFormat(astiav.PixelFormatYuv420P)
		if err := f.AllocBuffer(0); err != nil {
			t.Fatal(err)
		}
		pl, st, err := codecs.YUVPlanes(f)
		if err != nil {
			t.Fatal(err)
		}
		src := data[i*size:]
		for p, pw, ph := 0, w, h; p < 3; p++ {
			if p > 0 {
				pw, ph = w/2, h/2
			}
			for y := range ph {
				copy(pl[p][y*st[p]:y*st[p]+pw], src[y*pw:(y+1)*pw])
			}
			src = src[pw*ph:]
		}
		frames = append(frames, f)
	}
	return frames
}

// modelImages preprocesses frames as a remote stage does (fillBytes), for
// requests a test sends itself.
func modelImages(t *testing.T, frames []*astiav.Frame) [][]byte {
	t.Helper()
	card, err := lookup(hostileModel, "")
	if err != nil {
		t.Fatal(err)
	}
	flags, _ := scalerFlags("bilinear")
	p := newPreprocessor(card.Inputs[0], 0, flags)
	defer p.dst.Free()
	var out [][]byte
	for _, f := range frames {
		pix, _, err := p.fillBytes(f, nil)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, pix)
	}
	return out
}

func goodRequest(t *testing.T, pix []byte) []byte {
	t.Helper()
	r := inferwire.Request{Model: hostileModel, Caller: "hostile/test/1", W: 320, H: 240, C: 3, Pixels: pix}
	b, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rawRequest writes a request map as a hostile client would: any keys,
// any values, no checks.
func rawRequest(t *testing.T, m map[string]any) []byte {
	t.Helper()
	b, err := msgpack.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func stats(t *testing.T, nc *nats.Conn) ServiceStats {
	t.Helper()
	m, err := nc.Request(micro.APIPrefix+".STATS."+inferwire.ServiceName(hostileModel), nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var st micro.Stats
	if err := json.Unmarshal(m.Data, &st); err != nil || len(st.Endpoints) != 1 {
		t.Fatalf("stats: %v: %s", err, m.Data)
	}
	var data ServiceStats
	if err := json.Unmarshal(st.Endpoints[0].Data, &data); err != nil {
		t.Fatal(err)
	}
	return data
}

// TestServiceHostileRequests: forged and malformed requests each get one
// error reply with the right code naming what is wrong, and the service
// goes on answering a good request with the same boxes as before.
func TestServiceHostileRequests(t *testing.T) {
	e2e.Long(t)
	_, nc := hostileBus(t)
	startHostileService(t, nc, 4, 0)
	pix := modelImages(t, rawFrames(t, "book.mkv", 640, 480, 1, "1"))[0]
	good := goodRequest(t, pix)
	base := func(over map[string]any) []byte {
		m := map[string]any{"v": 1, "model": hostileModel, "caller": "hostile/forger/1", "w": 320, "h": 240, "c": 3, "thr": float32(0), "px": pix}
		for k, v := range over {
			if v == nil {
				delete(m, k)
				continue
			}
			m[k] = v
		}
		return rawRequest(t, m)
	}
	ask := func(body []byte) *nats.Msg {
		t.Helper()
		m, err := nc.Request(inferwire.Subject(hostileModel), body, 10*time.Second)
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		return m
	}
	first, err := inferwire.UnmarshalReply(ask(good).Data)
	if err != nil || len(first.Boxes) == 0 {
		t.Fatalf("a good request: %v, %d boxes (want a face)", err, len(first.Boxes))
	}
	tests := []struct {
		name       string
		body       []byte
		code, want string
	}{
		{"empty body", nil, inferwire.CodeBadRequest, "malformed"},
		{"not a map", []byte{0xc1}, inferwire.CodeBadRequest, "malformed"},
		{"a bin claiming 4 GB", []byte{0x81, 0xa2, 'p', 'x', 0xc6, 0xff, 0xff, 0xff, 0xff, 0x00}, inferwire.CodeBadRequest, "malformed"},
		{"w as a string", base(map[string]any{"w": "320"}), inferwire.CodeBadRequest, "malformed"},
		{"version 0", base(map[string]any{"v": 0}), inferwire.CodeBadRequest, "version 0"},
		{"version 99", base(map[string]any{"v": 99}), inferwire.CodeBadRequest, "version 99"},
		{"4096x4096x3 claimed, 230 KB sent", base(map[string]any{"w": 4096, "h": 4096}), inferwire.CodeBadRequest, "image of 50331648 bytes"},
		{"a side of 1e9", base(map[string]any{"w": 1000000000, "h": 1}), inferwire.CodeBadRequest, "image 1000000000x1"},
		{"w*h overflowing int", base(map[string]any{"w": math.MaxInt64, "h": math.MaxInt64}), inferwire.CodeBadRequest, "malformed"},
		{"negative side", base(map[string]any{"w": -320}), inferwire.CodeBadRequest, "image -320x240"},
		{"pixels one byte short", base(map[string]any{"px": pix[1:]}), inferwire.CodeBadRequest, "230399 bytes of pixels for a 320x240x3 image"},
		{"no pixels", base(map[string]any{"px": nil}), inferwire.CodeBadRequest, "0 bytes of pixels"},
		{"2 channels", base(map[string]any{"c": 2, "px": pix[:320*240*2]}), inferwire.CodeBadRequest, "2 channels"},
		{"grey image for a colour model", base(map[string]any{"c": 1, "px": pix[:320*240]}), inferwire.CodeBadRequest, "1 channels, model ultraface-rfb-320 takes 3"},
		{"the right bytes, the sides swapped", base(map[string]any{"w": 240, "h": 320}), inferwire.CodeBadRequest, "image 240x320, model ultraface-rfb-320 takes 320x240"},
		{"NaN threshold", base(map[string]any{"thr": float32(math.NaN())}), inferwire.CodeBadRequest, "threshold NaN"},
		{"+Inf threshold", base(map[string]any{"thr": float32(math.Inf(1))}), inferwire.CodeBadRequest, "threshold +Inf"},
		{"negative threshold", base(map[string]any{"thr": float32(-0.5)}), inferwire.CodeBadRequest, "threshold -0.5"},
		{"another model", base(map[string]any{"model": "yolov8n"}), inferwire.CodeNoModel, `model "yolov8n" is not served here (this is avflow-infer-ultraface-rfb-320)`},
		{"no model", base(map[string]any{"model": nil}), inferwire.CodeNoModel, `model "" is not served here`},
		{"a 10 KB caller name", base(map[string]any{"model": "x", "caller": strings.Repeat("c", 10000)}), inferwire.CodeNoModel, "not served here"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := ask(tt.body)
			code, text := m.Header.Get(micro.ErrorCodeHeader), m.Header.Get(micro.ErrorHeader)
			if code != tt.code || !strings.Contains(text, tt.want) {
				t.Errorf("answer %q %q, want %q containing %q", code, text, tt.code, tt.want)
			}
			if len(m.Data) != 0 {
				t.Errorf("an error reply with a %d-byte body", len(m.Data))
			}
		})
	}
	again, err := inferwire.UnmarshalReply(ask(good).Data)
	if err != nil || len(again.Boxes) != len(first.Boxes) || again.Boxes[0] != first.Boxes[0] {
		t.Errorf("the good request after the bad ones: %v, %+v, want %+v", err, again.Boxes, first.Boxes)
	}
	if st := stats(t, nc); st.BadRequests != int64(len(tests)) || st.Images != 2 || st.Failed != 0 {
		t.Errorf("stats %+v: want %d bad requests, 2 images, none failed", st, len(tests))
	}
}

// TestServiceSkipsRequestsWithoutReply: a request published without a
// reply subject cannot be answered; the service must not spend a model
// run on it (a flood of them would take the model from every caller).
// Under -race this also shows the loop goroutine's failed Respond writing
// micro's request while micro's reqHandler reads it.
func TestServiceSkipsRequestsWithoutReply(t *testing.T) {
	e2e.Long(t)
	_, nc := hostileBus(t)
	startHostileService(t, nc, 4, 0)
	body := goodRequest(t, modelImages(t, rawFrames(t, "book.mkv", 640, 480, 1, "1"))[0])
	const flood = 20
	for range flood {
		if err := nc.Publish(inferwire.Subject(hostileModel), body); err != nil {
			t.Fatal(err)
		}
	}
	// One subscription takes requests in order: once this one is
	// answered, the flood has been through the service.
	if _, err := nc.Request(inferwire.Subject(hostileModel), body, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if st := stats(t, nc); st.Images != 1 {
		t.Errorf("stats %+v: the model ran %d images, want 1: the %d requests without a reply subject were run for nobody", st, st.Images, flood)
	}
}

// TestServiceStopAnswersEveryQueuedRequest: requests queued when Stop is
// called are each answered (boxes, or 503 stopping), Stop returns, and no
// goroutine is left behind.
func TestServiceStopAnswersEveryQueuedRequest(t *testing.T) {
	e2e.Long(t)
	body := goodRequest(t, modelImages(t, rawFrames(t, "book.mkv", 640, 480, 1, "1"))[0])
	// The race is narrow: a few rounds, each with a service of its own.
	for round := range 5 {
		t.Run(strconv.Itoa(round), func(t *testing.T) { stopWithQueuedRequests(t, body) })
	}
}

func stopWithQueuedRequests(t *testing.T, body []byte) {
	url, nc := hostileBus(t)
	svcConn := hostileConn(t, url)
	leaks := goleak.IgnoreCurrent()
	s := startHostileService(t, svcConn, 1, 0)

	const n = 60
	answers := make(chan *nats.Msg, 1<<16) // more than the test sends: none dropped here
	sub, err := nc.ChanSubscribe("hostile.replies.>", answers)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	for i := range n {
		if err := nc.PublishRequest(inferwire.Subject(hostileModel), "hostile.replies."+strconv.Itoa(i), body); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// Wait until the first image has been answered: the rest are queued
	// (jobs full, more pending on the subscription).
	var got []*nats.Msg
	select {
	case m := <-answers:
		got = append(got, m)
	case <-time.After(20 * time.Second):
		t.Fatal("no answer at all")
	}
	// A caller that keeps asking while the service stops: each of its
	// requests is answered too (boxes, 503, or the server's no responders).
	more := make(chan int, 1)
	stopping := make(chan struct{})
	go func() {
		sent := 0
		defer func() { more <- sent }()
		for {
			select {
			case <-stopping:
				return
			default:
			}
			if sent == 4000 {
				return
			}
			if nc.PublishRequest(inferwire.Subject(hostileModel), "hostile.replies.late."+strconv.Itoa(sent), body) != nil {
				return
			}
			sent++
			if sent%8 == 0 {
				_ = nc.Flush()
			}
		}
	}()
	stopped := make(chan error, 1)
	go func() { stopped <- s.Stop() }()
	select {
	case err := <-stopped:
		if err != nil {
			t.Errorf("Stop: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Stop hangs")
	}
	// What the drained subscription still delivers goes through the
	// handler after Stop: flush the service's connection, then give the
	// answers a moment on the wire.
	close(stopping)
	late := <-more
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	_ = svcConn.Drain()
	e2e.WaitFor(t, 10*time.Second, func() string { return "the service's connection to close" }, svcConn.IsClosed)
	deadline := time.After(5 * time.Second)
	for len(got) < n+late {
		select {
		case m := <-answers:
			got = append(got, m)
		case <-deadline:
			t.Fatalf("%d of %d requests sent before and during Stop got no answer at all (neither boxes nor 503 nor no responders): their callers wait out their timeout", n+late-len(got), n+late)
		}
	}
	codes := map[string]int{}
	seen := map[string]bool{}
	for _, m := range got {
		if seen[m.Subject] {
			t.Errorf("two answers on %s", m.Subject)
		}
		seen[m.Subject] = true
		code := m.Header.Get(micro.ErrorCodeHeader)
		if code == "" && m.Header.Get("Status") != "" {
			code = "no responders " + m.Header.Get("Status")
		}
		codes[code]++
	}
	t.Logf("answers by error code (\"\": boxes): %v", codes)
	if codes[""]+codes[inferwire.CodeStopping]+codes["no responders 503"] != n+late {
		t.Errorf("answers %v: want boxes or %s only", codes, inferwire.CodeStopping)
	}
	nc.Close()
	goleak.VerifyNone(t, leaks)
}

// TestServiceRepliesToTheRightCaller: 8 callers send 4 different images
// at once; the service batches them (max batch 8) and each caller gets
// the boxes of its own image, as it gets them alone.
func TestServiceRepliesToTheRightCaller(t *testing.T) {
	e2e.Long(t)
	url, nc := hostileBus(t)
	startHostileService(t, nc, 8, 50*time.Millisecond)
	var images [][]byte
	for _, clip := range []string{"book.mkv", "walk.mkv", "sister.mkv", "hungry.mkv"} {
		images = append(images, modelImages(t, rawFrames(t, clip, 640, 480, 1, "1"))...)
	}
	alone := make([][]envelope.Detection, len(images))
	for i, pix := range images {
		m, err := nc.Request(inferwire.Subject(hostileModel), goodRequest(t, pix), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		r, err := inferwire.UnmarshalReply(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		alone[i] = r.Boxes
	}
	distinct := 0
	for i := 1; i < len(alone); i++ {
		if !nearBoxes(alone[i], alone[0]) {
			distinct++
		}
	}
	if distinct == 0 {
		t.Fatal("the images give the same boxes: a mix-up would not show")
	}
	const callers, rounds = 8, 4
	var wg sync.WaitGroup
	errs := make(chan error, callers*rounds)
	for c := range callers {
		cc := hostileConn(t, url)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				i := (c + r) % len(images)
				m, err := cc.Request(inferwire.Subject(hostileModel), goodRequest(t, images[i]), 20*time.Second)
				if err != nil {
					errs <- err
					return
				}
				rep, err := inferwire.UnmarshalReply(m.Data)
				if err != nil {
					errs <- err
					return
				}
				if !nearBoxes(rep.Boxes, alone[i]) {
					errs <- fmt.Errorf("caller %d, image %d: got %+v, alone it gives %+v", c, i, rep.Boxes, alone[i])
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if st := stats(t, nc); st.MaxBatch < 2 {
		t.Errorf("stats %+v: the images never shared a model run, the test proves nothing about batches", st)
	}
}

func nearBoxes(a, b []envelope.Detection) bool {
	if len(a) != len(b) {
		return false
	}
	near := func(x, y float32) bool { return math.Abs(float64(x-y)) < 2e-3 }
	for i := range a {
		if !near(a[i].X1, b[i].X1) || !near(a[i].Y1, b[i].Y1) || !near(a[i].X2, b[i].X2) || !near(a[i].Y2, b[i].Y2) || !near(a[i].Score, b[i].Score) ||
			a[i].Label != b[i].Label || a[i].Model != b[i].Model {
			return false
		}
	}
	return true
}

// remoteInit is the Init of a remote infer stage on bus.
func remoteInit(bus *nats.Conn, live bool, params pipeline.Params) pipeline.Init {
	p := pipeline.Params{"model": hostileModel, "remote": true, "threshold": 0.0, "pad": 0.0, "scaler": "bilinear", "interval": 1,
		"timeout": 2 * time.Second, "on_timeout": "", "service_wait": 5 * time.Second, "threads": 1}
	for k, v := range params {
		p[k] = v
	}
	return pipeline.Init{Name: "faces", Pipeline: "hostile", Params: p, Bus: bus, Live: live, Log: slog.New(slog.DiscardHandler),
		Inputs: []pipeline.PortType{{Kind: envelope.KindFrame, Media: envelope.MediaVideo}}}
}

// newRemoteStage builds a remote infer stage, closed when the test ends.
func newRemoteStage(t *testing.T, in pipeline.Init) *Video {
	t.Helper()
	st, err := New(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	v := st.(*Video)
	t.Cleanup(func() { _ = v.Close() })
	if v.remote == nil {
		t.Fatal("remote: true made a local stage")
	}
	return v
}

// TestRemoteMatchesLocalWithPad: a 16:9 frame (letterboxed into the 4:3
// model input) with a mirrored border of 0.1: the boxes of the remote
// stage, mapped back to the frame by the caller, are those of a local
// infer stage with the same params.
func TestRemoteMatchesLocalWithPad(t *testing.T) {
	e2e.Long(t)
	_, nc := hostileBus(t)
	startHostileService(t, nc, 4, 0)
	frames := rawFrames(t, "walk.mkv", 640, 360, 6, "3")
	for _, pad := range []float64{0, 0.1} {
		t.Run(fmt.Sprintf("pad %g", pad), func(t *testing.T) {
			local, err := NewDetector(context.Background(), pipeline.Init{Name: "local", Params: pipeline.Params{"threads": 1, "optimization": "all"},
				Log: slog.New(slog.DiscardHandler)}, hostileModel, DetectorOptions{Pad: pad})
			if err != nil {
				t.Fatal(err)
			}
			defer local.Close()
			rv := newRemoteStage(t, remoteInit(nc, false, pipeline.Params{"pad": pad}))
			streams := make([]string, len(frames))
			got, err := rv.remote.detect(context.Background(), frames, streams)
			if err != nil {
				t.Fatal(err)
			}
			faces := 0
			for i, f := range frames {
				want, err := local.Detect(f)
				if err != nil {
					t.Fatal(err)
				}
				rv.label(got[i])
				faces += len(want)
				if !nearBoxes(got[i], want) {
					t.Errorf("frame %d: remote %+v, local %+v", i, got[i], want)
				}
			}
			if faces == 0 {
				t.Fatal("no face in the frames: the comparison proves nothing")
			}
		})
	}
}

// bogusService registers a service under the model's micro name whose
// detect endpoint answers with answer (nil: no answer at all).
func bogusService(t *testing.T, nc *nats.Conn, answer func(micro.Request)) {
	t.Helper()
	svc, err := micro.AddService(nc, micro.Config{Name: inferwire.ServiceName(hostileModel), Version: "6.6.6", Metadata: map[string]string{"instance": "bogus"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	handler := func(req micro.Request) {
		if answer != nil {
			answer(req)
		}
	}
	if err := svc.AddEndpoint("detect", micro.HandlerFunc(handler), micro.WithEndpointSubject(inferwire.Subject(hostileModel))); err != nil {
		t.Fatal(err)
	}
}

func replyWith(boxes ...envelope.Detection) func(micro.Request) {
	return func(req micro.Request) {
		r := inferwire.Reply{Boxes: boxes}
		b, _ := r.Marshal()
		_ = req.Respond(b)
	}
}

// TestRemoteAgainstABogusService: a service that registers under the
// model's name and answers garbage, forged boxes, an error or nothing:
// the remote stage fails with one clear error, skips or holds as its
// on_timeout says, and never panics or passes on a box outside the frame.
func TestRemoteAgainstABogusService(t *testing.T) {
	e2e.Long(t)
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	face := envelope.Detection{X1: 0.4, Y1: 0.3, X2: 0.6, Y2: 0.7, Score: 0.9, Class: 1}
	tests := []struct {
		name    string
		answer  func(micro.Request)
		policy  string
		wantErr string // "" : no error
		check   func(t *testing.T, dets []box)
	}{
		{name: "garbage", policy: PolicyHold, answer: func(r micro.Request) { _ = r.Respond([]byte("\xc1garbage")) },
			wantErr: "a reply of service avflow-infer-ultraface-rfb-320: inferwire: malformed message"},
		{name: "a reply of version 0", policy: PolicyHold, answer: func(r micro.Request) { b, _ := msgpack.Marshal(map[string]any{"boxes": []any{}}); _ = r.Respond(b) },
			wantErr: "version 0"},
		{name: "boxes as a string", policy: PolicyHold, answer: func(r micro.Request) { b, _ := msgpack.Marshal(map[string]any{"v": 1, "boxes": "x"}); _ = r.Respond(b) },
			wantErr: "malformed"},
		{name: "a 400 refusal", policy: PolicyHold, answer: func(r micro.Request) { _ = r.Error(inferwire.CodeBadRequest, "wrong image size", nil) },
			wantErr: "service avflow-infer-ultraface-rfb-320 refused a"},
		{name: "NaN, infinite and inverted boxes", policy: PolicyFail,
			answer: replyWith(envelope.Detection{X1: nan, Y1: nan, X2: nan, Y2: nan, Score: 0.9}, envelope.Detection{X1: -inf, Y1: -inf, X2: inf, Y2: inf, Score: 0.9},
				envelope.Detection{X1: 0.9, Y1: 0.9, X2: 0.1, Y2: 0.1, Score: 0.9}, envelope.Detection{X1: 5, Y1: 5, X2: 9, Y2: 9, Score: 0.9}, face),
			check: func(t *testing.T, dets []box) {
				for _, d := range dets {
					for _, v := range []float32{d.X1, d.Y1, d.X2, d.Y2} {
						if !(v >= 0 && v <= 1) {
							t.Errorf("a box outside the frame passed on: %+v", d)
						}
					}
					if !(d.X2 > d.X1 && d.Y2 > d.Y1) {
						t.Errorf("an empty or inverted box passed on: %+v", d)
					}
				}
			}},
		{name: "a class beyond the labels", policy: PolicyFail, answer: replyWith(envelope.Detection{X1: 0.4, Y1: 0.3, X2: 0.6, Y2: 0.7, Score: 0.9, Class: 1 << 30, Label: "forged"}),
			check: func(t *testing.T, dets []box) {
				if len(dets) != 1 || dets[0].Model != hostileModel {
					t.Errorf("boxes %+v: want one, of model %s", dets, hostileModel)
				}
			}},
		{name: "20000 boxes", policy: PolicyFail, answer: replyWith(func() []envelope.Detection {
			out := make([]envelope.Detection, 20000)
			for i := range out {
				out[i] = face
			}
			return out
		}()...), check: func(t *testing.T, dets []box) {
			if len(dets) != 20000 {
				t.Errorf("%d boxes, want the 20000 the service sent", len(dets))
			}
		}},
		{name: "no answer, hold", policy: PolicyHold, check: func(t *testing.T, dets []box) {
			if len(dets) != 0 {
				t.Errorf("held %+v before any answer came", dets)
			}
		}},
		{name: "no answer, skip", policy: PolicySkip, check: func(t *testing.T, dets []box) {
			if len(dets) != 0 {
				t.Errorf("skipped frame with boxes %+v", dets)
			}
		}},
		{name: "no answer, fail", policy: PolicyFail, wantErr: "no answer from service avflow-infer-ultraface-rfb-320 within 300ms (on_timeout: fail)"},
		// A service that stops answers what it has queued with 503: that
		// is the service going away, not a disagreement about the model,
		// and on_timeout applies (docs/infer-service.md: SIGTERM answers
		// the queued requests with 503).
		{name: "503 stopping, hold", policy: PolicyHold, answer: func(r micro.Request) { _ = r.Error(inferwire.CodeStopping, "the service is stopping", nil) },
			check: func(t *testing.T, dets []box) {}},
		{name: "503 stopping, skip", policy: PolicySkip, answer: func(r micro.Request) { _ = r.Error(inferwire.CodeStopping, "the service is stopping", nil) },
			check: func(t *testing.T, dets []box) {}},
	}
	frames := rawFrames(t, "book.mkv", 640, 480, 1, "1")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, nc := hostileBus(t)
			bogusService(t, nc, tt.answer)
			timeout := 10 * time.Second // an answer comes: time enough under -race
			if tt.answer == nil {
				timeout = 300 * time.Millisecond
			}
			rv := newRemoteStage(t, remoteInit(nc, tt.policy == PolicyHold, pipeline.Params{"on_timeout": tt.policy, "timeout": timeout}))
			var dets [][]box
			var err error
			func() {
				defer func() {
					if p := recover(); p != nil {
						t.Fatalf("the remote stage panicked: %v", p)
					}
				}()
				dets, err = rv.remote.detect(context.Background(), frames, []string{"s0"})
				if err == nil {
					rv.label(dets[0]) // as inferRemote does
				}
			}()
			switch {
			case tt.wantErr != "" && (err == nil || !errors.Is(err, ErrRemote) || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error %v, want ErrRemote containing %q", err, tt.wantErr)
			case tt.wantErr == "" && err != nil:
				t.Fatalf("error %v, want on_timeout %s to apply", err, tt.policy)
			case tt.wantErr == "":
				tt.check(t, dets[0])
			}
			if err == nil && tt.answer == nil || strings.HasPrefix(tt.name, "503") {
				c := rv.remote.counts()
				if c["remote_timeouts"] != 1 || (tt.policy == PolicyHold) != (c["remote_held"] == 1) || (tt.policy == PolicySkip) != (c["remote_skipped"] == 1) {
					t.Errorf("counts %v: want one timeout, %s", c, tt.policy)
				}
			}
		})
	}
}

// TestRemoteStageOnATextRecognizer: remote: true with a model that does
// not take video frames (the PP-OCR recognizer) is refused with one
// clear error, not a panic (the remote detector has no session to close).
func TestRemoteStageOnATextRecognizer(t *testing.T) {
	_, nc := hostileBus(t)
	defer func() {
		if p := recover(); p != nil {
			t.Fatalf("New panicked: %v", p)
		}
	}()
	st, err := New(context.Background(), remoteInit(nc, false, pipeline.Params{"model": "ppocr-v4-rec"}))
	if err == nil {
		_ = st.Close()
		t.Fatal("remote: true on a recognizer: no error")
	}
	if !errors.Is(err, ErrInfer) || !strings.Contains(err.Error(), "ppocr-v4-rec") {
		t.Errorf("error %v: want ErrInfer naming the model", err)
	}
}

// TestInferwireBoundedAllocation: a few bytes claiming a huge pixel
// buffer or box list make the reader allocate no more than the bounds
// allow. msgpack's []byte decoding allocates what the header claims (a
// 10-byte request makes the service allocate, and on reuse zero, 4 GB),
// and its slice decoding makes a slice of the claimed length (a 16-byte
// reply makes the caller ask for 377 GB: fatal error: runtime: out of
// memory, which no recover catches: the whole run dies).
func TestInferwireBoundedAllocation(t *testing.T) {
	tests := []struct {
		name  string
		read  func([]byte) error
		body  []byte
		limit uint64
		was   string // what the code before envelope.CheckLengths did
	}{
		{"a request whose px claims 4 GB", func(b []byte) error { _, err := inferwire.UnmarshalRequest(b); return err },
			[]byte{0x81, 0xa2, 'p', 'x', 0xc6, 0xff, 0xff, 0xff, 0xff, 0x00}, 2 * inferwire.MaxPixels,
			"inferwire.UnmarshalRequest lets msgpack allocate the px length a request claims (4 GB for 10 bytes)"},
		{"a reply whose boxes claim 4 billion", func(b []byte) error { _, err := inferwire.UnmarshalReply(b); return err },
			[]byte{0x82, 0xa1, 'v', 0x01, 0xa5, 'b', 'o', 'x', 'e', 's', 0xdd, 0xff, 0xff, 0xff, 0xff, 0x80}, 16 << 20,
			"inferwire.UnmarshalReply makes a slice of the box count a reply claims: a 16-byte reply kills the caller (fatal out of memory, the test binary too)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			err := tt.read(tt.body)
			runtime.ReadMemStats(&after)
			if !errors.Is(err, inferwire.ErrMalformed) {
				t.Errorf("error %v, want ErrMalformed", err)
			}
			if grew := after.TotalAlloc - before.TotalAlloc; grew > tt.limit {
				t.Errorf("reading %d bytes allocated %d MB (at most %d MB)", len(tt.body), grew>>20, tt.limit>>20)
			}
		})
	}
}
