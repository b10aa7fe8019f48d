package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/asticode/go-astiav"
	"go.uber.org/goleak"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/pipelinetest"
	"github.com/avflow/avflow/pipeline/secret"
)

func TestIsLocalFile(t *testing.T) {
	tests := []struct {
		url, format string
		want        bool
	}{
		{"clip.mp4", "", true},
		{"../media/clip.mkv", "", true},
		{"/abs/clip.ts", "", true},
		{"in.fifo", "", true},
		{"lavfi:testsrc2", "", false},
		{"testsrc2", "lavfi", false}, // a forced format takes the url as it is
		{"/dev/video0", "v4l2", false},
		{"http://host/clip.mp4", "", false},
		{"rtsp://cam/stream", "", false},
		{"srt://host:9000?mode=caller", "", false},
	}
	for _, tt := range tests {
		if got := isLocalFile(tt.url, tt.format); got != tt.want {
			t.Errorf("isLocalFile(%q, %q) = %v, want %v", tt.url, tt.format, got, tt.want)
		}
	}
}

// params are the source's params with the spec's defaults, as validation
// gives them to New.
func params(t testing.TB, set map[string]any) pipeline.Params {
	t.Helper()
	spec, err := pipeline.Default.Lookup("source")
	if err != nil {
		t.Fatal(err)
	}
	p := pipeline.Params{}
	for _, prm := range spec.Params {
		if prm.Default != nil {
			p[prm.Name] = prm.Default
		}
	}
	for k, v := range set {
		p[k] = v
	}
	return p
}

func TestResolve(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "in.fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		url, format         string
		wantURL, wantFormat string
	}{
		{"lavfi:testsrc2=size=320x240", "", "testsrc2=size=320x240", "lavfi"},
		{"clip.mp4", "", "/pipelines/clip.mp4", ""},
		{"../media/clip.mp4", "", "/media/clip.mp4", ""},
		{"/abs/clip.mp4", "", "/abs/clip.mp4", ""},
		{"/dev/video0", "v4l2", "/dev/video0", "v4l2"},
		{"http://host/a.ts", "", "http://host/a.ts", ""},
		{"udp://0.0.0.0:5000", "mpegts", "udp://0.0.0.0:5000", "mpegts"},
		// Pipes and FIFOs are read as FIFOs, never by FFmpeg's blocking pipe:/file: protocols.
		{"-", "mpegts", "/dev/fd/0", "mpegts"},
		{"pipe:", "mpegts", "/dev/fd/0", "mpegts"},
		{"pipe:3", "mpegts", "/dev/fd/3", "mpegts"},
		{"file://" + fifo, "mpegts", fifo, "mpegts"},
		{"file:" + fifo, "", fifo, ""},
		{"file:/abs/clip.mp4", "", "file:/abs/clip.mp4", ""},
	}
	for _, tt := range tests {
		in := pipeline.Init{Dir: "/pipelines", Params: params(t, map[string]any{"url": tt.url, "format": tt.format})}
		if url, format := resolve(in); url != tt.wantURL || format != tt.wantFormat {
			t.Errorf("resolve(%q, %q) = %q, %q; want %q, %q", tt.url, tt.format, url, format, tt.wantURL, tt.wantFormat)
		}
	}
}

func TestOpenOptions(t *testing.T) {
	def := micros(ioTimeout)
	tests := []struct {
		url  string
		user map[string]string
		want map[string]string
	}{
		{"/media/clip.mp4", nil, map[string]string{}},
		{"testsrc2", nil, map[string]string{}},
		{"http://host/a.ts", nil, map[string]string{"rw_timeout": def}},
		{"HTTPS://host/a.m3u8", nil, map[string]string{"rw_timeout": def}},
		{"tcp://host:9000", nil, map[string]string{"rw_timeout": def}},
		{"tls://host:9000", nil, map[string]string{"rw_timeout": def}},
		// rtmp's own "timeout" would make it listen: rw_timeout it is.
		{"rtmp://host/live/key", nil, map[string]string{"rw_timeout": def}},
		{"rtmps://host/live/key", nil, map[string]string{"rw_timeout": def}},
		{"rtsp://cam/stream", nil, map[string]string{"timeout": def}},
		{"rtsps://cam/stream", nil, map[string]string{"timeout": def}},
		{"srt://host:9000?mode=caller", nil, map[string]string{"timeout": def}},
		{"rist://host:9000", nil, map[string]string{"timeout": def}},
		// Connectionless inputs wait for a sender.
		{"udp://0.0.0.0:5000", nil, map[string]string{}},
		{"rtp://0.0.0.0:5004", nil, map[string]string{}},
		// The user's options win, also to wait for ever.
		{"http://host/a.ts", map[string]string{"rw_timeout": "2000000"}, map[string]string{"rw_timeout": "2000000"}},
		{"rtsp://cam/stream", map[string]string{"timeout": "0", "rtsp_transport": "tcp"}, map[string]string{"timeout": "0", "rtsp_transport": "tcp"}},
		{"srt://host:9000", map[string]string{"passphrase": "x"}, map[string]string{"timeout": def, "passphrase": "x"}},
	}
	for _, tt := range tests {
		got := openOptions(tt.url, tt.user)
		if fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("openOptions(%q, %v) = %v, want %v", tt.url, tt.user, got, tt.want)
		}
	}
}

func TestCheckLocal(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "clip.mp4")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	fifoPath := filepath.Join(dir, "in.fifo")
	if err := syscall.Mkfifo(fifoPath, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path string
		want error
		text string
	}{
		{file, nil, ""},
		{fifoPath, nil, ""},
		{filepath.Join(dir, "missing.mp4"), ErrNoInput, "missing.mp4"},
		{dir, ErrNotFile, "is a directory"},
		{"/dev/null", ErrNotFile, "is a character device: name its format"},
	}
	for _, tt := range tests {
		err := checkLocal(tt.path)
		if !errors.Is(err, tt.want) || (tt.want != nil && !strings.Contains(err.Error(), tt.text)) {
			t.Errorf("checkLocal(%s) = %v, want %v with %q", tt.path, err, tt.want, tt.text)
		}
	}
	if !isFIFO(fifoPath) || isFIFO(file) || isFIFO("http://host/in.fifo") {
		t.Errorf("isFIFO tells FIFOs from the rest wrongly")
	}
}

func TestCheckMaxFrames(t *testing.T) {
	spec, err := pipeline.Default.Lookup("source")
	if err != nil {
		t.Fatal(err)
	}
	if err := spec.Check(params(t, map[string]any{"url": "lavfi:testsrc2", "max_frames": -1}), "."); err == nil {
		t.Errorf("a negative max_frames is accepted")
	}
}

// open runs New as the runner would, with a discarding log unless one is given.
func open(ctx context.Context, t testing.TB, set map[string]any, consumers map[string][]string) (*Source, error) {
	t.Helper()
	in := pipeline.Init{Name: "src", Dir: t.TempDir(), Params: params(t, set), Log: slog.New(slog.DiscardHandler), Consumers: consumers}
	st, err := New(ctx, in)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = st.Close() })
	return st.(*Source), nil
}

// silentServer accepts connections and never answers; it returns the
// address. Connections are closed when the test ends.
func silentServer(t testing.TB) string {
	l := e2e.Listen(t)
	e2e.Serve(t, l, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	return l.Addr().String()
}

// TestSilentServerTimesOut: network inputs that connect and then get no
// answer fail within their timeout, naming the URL with its credentials
// hidden and saying which option sets the limit.
func TestSilentServerTimesOut(t *testing.T) {
	leakCheck(t)
	addr := silentServer(t)
	tests := []struct {
		url, option string
	}{
		{"http://u:s3cret@" + addr + "/clip.ts?token=t0k3n", "rw_timeout"},
		{"rtmp://" + addr + "/live/streamkey", "rw_timeout"},
		{"tcp://" + addr, "rw_timeout"},
		{"rtsp://u:s3cret@" + addr + "/cam", "timeout"},
	}
	for _, tt := range tests {
		t.Run(scheme(tt.url), func(t *testing.T) {
			start := time.Now()
			_, err := open(context.Background(), t, map[string]any{"url": tt.url, "options": map[string]string{tt.option: "300000"}}, nil)
			took := time.Since(start)
			if !errors.Is(err, ErrOpen) || !strings.Contains(err.Error(), secret.URL(tt.url)) {
				t.Fatalf("error %v, want ErrOpen naming %s", err, secret.URL(tt.url))
			}
			for _, secret := range []string{"s3cret", "t0k3n", "streamkey"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("the error shows a secret: %v", err)
				}
			}
			if took > 5*time.Second {
				t.Errorf("a 0.3 s timeout took %s", took)
			}
			t.Logf("%s: %v after %s", tt.url, err, took.Round(time.Millisecond))
		})
	}
}

// TestSilentServerDefaultTimeout: without options, an HTTP input that
// never answers fails after the default timeout, saying so.
func TestSilentServerDefaultTimeout(t *testing.T) {
	e2e.Long(t)
	addr := silentServer(t)
	start := time.Now()
	_, err := open(context.Background(), t, map[string]any{"url": "http://" + addr + "/clip.ts"}, nil)
	took := time.Since(start)
	if !errors.Is(err, astiav.ErrEtimedout) || !strings.Contains(err.Error(), "nothing received for 10s (options: {rw_timeout: 10000000}") {
		t.Fatalf("error %v, want a timeout naming rw_timeout", err)
	}
	if took < ioTimeout-time.Second || took > ioTimeout+5*time.Second {
		t.Errorf("timed out after %s, want about %s", took, ioTimeout)
	}
}

// TestCancelWhileOpening: the run's context interrupts an input still
// opening, a server that never answers or a FIFO nobody writes to.
func TestCancelWhileOpening(t *testing.T) {
	leakCheck(t)
	fifoPath := filepath.Join(t.TempDir(), "in.fifo")
	if err := syscall.Mkfifo(fifoPath, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, url := range []string{"http://" + silentServer(t) + "/clip.ts", fifoPath} {
		t.Run(filepath.Base(url), func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(300*time.Millisecond, cancel)
			start := time.Now()
			_, err := open(ctx, t, map[string]any{"url": url}, nil)
			if !errors.Is(err, context.Canceled) || !errors.Is(err, ErrOpen) || !strings.Contains(err.Error(), url) {
				t.Fatalf("error %v, want ErrOpen and context.Canceled naming %s", err, url)
			}
			if took := time.Since(start); took > 3*time.Second {
				t.Errorf("cancelled after 0.3 s, returned after %s", took)
			}
		})
	}
}

// tsClip makes an MPEG-TS copy of the car clip (377 video frames) and
// returns its path.
func tsClip(t testing.TB) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "car.ts")
	cmd := exec.Command(e2e.Tool(t, "ffmpeg"), "-v", "error", "-i", e2e.Media(t, "car-detection.mp4"), "-c", "copy", "-f", "mpegts", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ffmpeg: %v\n%s", err, b)
	}
	return out
}

// readAll reads the source to its end and counts the packets of each port.
func readAll(t testing.TB, ctx context.Context, s *Source) (map[string]int, error) {
	t.Helper()
	n := map[string]int{}
	for {
		b, err := s.Process(ctx, nil)
		for _, e := range b {
			n[e.Port]++
			e.Release()
		}
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// TestFIFOInput: a FIFO is read as a stream once a writer sends data (the
// writer starts after the source, as it does when something pipes into
// avflow), to the writer's end.
func TestFIFOInput(t *testing.T) {
	e2e.Long(t)
	ts := tsClip(t)
	fifoPath := filepath.Join(t.TempDir(), "in.fifo")
	if err := syscall.Mkfifo(fifoPath, 0o644); err != nil {
		t.Fatal(err)
	}
	writer := make(chan error, 1)
	go func() {
		data, err := os.ReadFile(ts)
		if err != nil {
			writer <- err
			return
		}
		f, err := os.OpenFile(fifoPath, os.O_WRONLY, 0)
		if err != nil {
			writer <- err
			return
		}
		_, err = f.Write(data)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		writer <- err
	}()
	s, err := open(context.Background(), t, map[string]any{"url": fifoPath}, nil)
	if err != nil {
		t.Fatal(err)
	}
	n, err := readAll(t, context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-writer; err != nil {
		t.Fatal(err)
	}
	if n["video"] != 377 || n["audio"] == 0 {
		t.Errorf("read %v from the FIFO, want 377 video packets and audio", n)
	}
}

// stallingServer answers one HTTP request with the head of a file and then
// sends nothing more, holding the connection open.
func stallingServer(t testing.TB, data []byte) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 4096)
		if _, err := c.Read(buf); err != nil {
			return
		}
		_, _ = c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\n\r\n"))
		_, _ = c.Write(data)
		_, _ = io.Copy(io.Discard, c) // until the client hangs up
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return "http://" + l.Addr().String() + "/live.ts"
}

// runWithCounter runs a source feeding a counting stage on the local
// transport, and returns the runner, the counter and Run's result.
func runWithCounter(t testing.TB, source string) (*pipeline.Runner, *pipelinetest.Counter, <-chan error) {
	t.Helper()
	c := &pipelinetest.Counter{}
	env := pipelinetest.WithCounter(t, "count", c)
	cfg, err := pipeline.Parse([]byte(`name: src
transport: local
stages:
  - {name: src, kind: source, params: `+source+`}
  - {name: count, kind: count, inputs: [src.video]}
`), filepath.Join(t.TempDir(), "p.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Validate(cfg); err != nil {
		t.Fatal(err)
	}
	r, err := pipeline.NewRunner(env, cfg, pipeline.Options{Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	return r, c, done
}

// TestDrainWhileReading: a live input that stops sending mid-stream is
// stopped by Drain at once (the read in progress is interrupted), and the
// run ends cleanly.
func TestDrainWhileReading(t *testing.T) {
	e2e.Long(t)
	data, err := os.ReadFile(tsClip(t))
	if err != nil {
		t.Fatal(err)
	}
	head := data[:len(data)/3/188*188]
	// The source waits for data once it has read every video packet of
	// the head but the last two: the one cut short, and the one before,
	// which the demuxer holds until the next one starts (ffprobe, at the
	// end of the file, counts both).
	want := videoPackets(t, head) - 2
	url := stallingServer(t, head)
	r, c, done := runWithCounter(t, fmt.Sprintf(`{url: %q}`, url))
	deadline := time.Now().Add(20 * time.Second)
	for c.N.Load() < int64(want) {
		select {
		case err := <-done:
			t.Fatalf("run ended before the stall: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d packets arrived", c.N.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.Drain()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("drained run: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Drain did not stop a source waiting for data")
	}
}

// videoPackets counts the video packets ffprobe finds in a TS.
func videoPackets(t testing.TB, ts []byte) int {
	t.Helper()
	path := filepath.Join(t.TempDir(), "head.ts")
	if err := os.WriteFile(path, ts, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(e2e.Tool(t, "ffprobe"), "-v", "error", "-select_streams", "v:0", "-count_packets",
		"-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", path).Output()
	if err != nil {
		t.Fatalf("ffprobe: %v", err)
	}
	var n int
	if _, err := fmt.Sscan(string(out), &n); err != nil || n < 10 {
		t.Fatalf("ffprobe counted %q video packets", out)
	}
	return n
}

// leakCheck checks, once the test and its cleanups are done, that it left
// no goroutine behind.
func leakCheck(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

// logLines is a slog handler keeping the messages logged.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) Enabled(context.Context, slog.Level) bool { return true }
func (l *logLines) Handle(_ context.Context, r slog.Record) error {
	line := r.Level.String() + " " + r.Message
	r.Attrs(func(a slog.Attr) bool { line += " " + a.String(); return true })
	l.mu.Lock()
	l.lines = append(l.lines, line)
	l.mu.Unlock()
	return nil
}
func (l *logLines) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logLines) WithGroup(string) slog.Handler      { return l }
func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// audioOnly makes a one-second AAC file with no video.
func audioOnly(t testing.TB) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "tone.m4a")
	cmd := exec.Command(e2e.Tool(t, "ffmpeg"), "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ffmpeg: %v\n%s", err, b)
	}
	return out
}

// TestPortsAndReaders: the source reads the streams stages read, says at
// start when a stream a stage reads is missing (naming the stage), and
// leaves alone a stream nobody reads.
func TestPortsAndReaders(t *testing.T) {
	e2e.Long(t)
	car, face, tone := e2e.Media(t, "car-detection.mp4"), e2e.Media(t, "facecam/hungry.mkv"), audioOnly(t)
	tests := []struct {
		name      string
		url       string
		set       map[string]any
		consumers map[string][]string
		ports     string // the ports read, sorted
		err       string // the error New gives, if any
		log       string // a line the log must have
	}{
		{"both read", car, nil, map[string][]string{"video": {"dec"}, "audio": {"adec"}}, "audio video", "", ""},
		{"the runner does not say", car, nil, nil, "audio video", "", ""},
		{"audio nobody reads", car, nil, map[string][]string{"video": {"dec"}}, "video", "",
			"INFO the input's audio stream is not read: no stage reads src.audio"},
		{"video nobody reads", car, nil, map[string][]string{"audio": {"adec"}}, "audio", "",
			"INFO the input's video stream is not read: no stage reads src.video"},
		{"no video stream", tone, nil, map[string][]string{"video": {"dec", "thumbs"}}, "",
			"source: input has no usable stream: " + tone + " has no video stream, but stage dec, thumbs reads src.video", ""},
		{"video false but read", car, map[string]any{"video": false}, map[string][]string{"video": {"dec"}}, "",
			"source: input has no usable stream: video is false, but stage dec reads src.video", ""},
		{"no audio stream", face, nil, map[string][]string{"video": {"dec"}, "audio": {"adec"}}, "video", "",
			"INFO input has no audio stream: the audio port ends at once url=" + face + " readers=adec"},
		{"audio only", tone, nil, map[string][]string{"audio": {"adec"}}, "audio", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set := map[string]any{"url": tt.url}
			for k, v := range tt.set {
				set[k] = v
			}
			log := &logLines{}
			in := pipeline.Init{Name: "src", Dir: t.TempDir(), Params: params(t, set), Log: slog.New(log), Consumers: tt.consumers}
			st, err := New(context.Background(), in)
			if tt.err != "" {
				if !errors.Is(err, ErrNoStream) || err.Error() != tt.err {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			var ports []string
			for _, port := range []string{"audio", "video"} {
				if st.(*Source).has(map[string]envelope.Media{"audio": envelope.MediaAudio, "video": envelope.MediaVideo}[port]) {
					ports = append(ports, port)
				}
			}
			if got := strings.Join(ports, " "); got != tt.ports {
				t.Errorf("reads %q, want %q", got, tt.ports)
			}
			if !strings.Contains(log.String(), tt.log) {
				t.Errorf("log lacks %q:\n%s", tt.log, log)
			}
		})
	}
}

// TestUnreadPortWarnings: validation says the truth about a source port no
// stage reads: its stream is not read (warned), or not at all asked for
// (audio: false, quiet).
func TestUnreadPortWarnings(t *testing.T) {
	tests := []struct {
		params string
		want   string // in the warnings, "" for none about the audio port
	}{
		{`{url: "lavfi:testsrc2"}`, `port "audio" (audio packets) is read by no stage: the stage does not produce it (its stream is not read from the input)`},
		{`{url: "lavfi:testsrc2", audio: false}`, ""},
	}
	for _, tt := range tests {
		cfg, err := pipeline.Parse([]byte(`name: unread
stages:
  - {name: src, kind: source, params: `+tt.params+`}
  - {name: count, kind: count, inputs: [src.video]}
`), "p.yaml")
		if err != nil {
			t.Fatal(err)
		}
		env := pipelinetest.WithCounter(t, "count", &pipelinetest.Counter{})
		if err := env.Validate(cfg); err != nil {
			t.Fatal(err)
		}
		w := strings.Join(cfg.Warnings(), "\n")
		if tt.want == "" && strings.Contains(w, `"audio"`) || !strings.Contains(w, tt.want) {
			t.Errorf("%s: warnings\n%s\nwant %q", tt.params, w, tt.want)
		}
	}
}
