package sink_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/asticode/go-astiav"
	"go.uber.org/goleak"

	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/stages/sink"
)

func TestMain(m *testing.M) {
	astiav.SetLogLevel(astiav.LogLevelError) // FFmpeg's notes would drown the test output
	code := m.Run()
	if clipDir != "" {
		_ = os.RemoveAll(clipDir)
	}
	if code == 0 {
		// Every run, stalled and cancelled ones included, leaves no goroutine behind.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// TestFaststart: MP4 and MOV files have their index (moov) before the media
// data (mdat) by default, so a browser starts playing without fetching the
// end; faststart: false or movflags -faststart leave it at the end; the
// option `avflow stages` gives as an example works.
func TestFaststart(t *testing.T) {
	cases := []struct {
		name, file, params string
		moovFirst          bool
	}{
		{"mp4 default", "out.mp4", "", true},
		{"mov default", "out.mov", "", true},
		{"faststart false", "out.mp4", "faststart: false", false},
		{"movflags +faststart", "out.mp4", "options: {movflags: +faststart}", true},
		{"movflags -faststart", "out.mp4", "options: {movflags: -faststart}", false},
		{"movflags +faststart with faststart false", "out.mp4", "faststart: false, options: {movflags: +faststart}", true},
		{"other movflags keep faststart", "out.mp4", "options: {movflags: +write_colr}", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			out := filepath.Join(dir, c.file)
			params := fmt.Sprintf("path: %q", out)
			if c.params != "" {
				params += ", " + c.params
			}
			logs := &e2e.Buffer{}
			if _, err := run(context.Background(), t, encoded("block", "max_frames: 60", 30, params), logs); err != nil {
				t.Fatalf("%v\n%s", err, logs)
			}
			boxes := topBoxes(t, out)
			moov, mdat := indexOf(boxes, "moov"), indexOf(boxes, "mdat")
			if moov < 0 || mdat < 0 {
				t.Fatalf("top-level boxes %v: want a moov and an mdat", boxes)
			}
			if got := moov < mdat; got != c.moovFirst {
				t.Errorf("top-level boxes %v: moov before mdat is %v, want %v", boxes, got, c.moovFirst)
			}
			if n := e2e.VideoPackets(t, out); n != 60 {
				t.Errorf("ffprobe reads %d video packets, want 60", n)
			}
			if p := partialFiles(t, dir); len(p) != 0 {
				t.Errorf("left %v", p)
			}
		})
	}
}

// TestFullDisk: a sink that runs out of space fails the run, naming the file
// and the cause, and leaves nothing that looks finished.
func TestFullDisk(t *testing.T) {
	for _, name := range []string{"live.m3u8", "out.mp4", "out.mkv", "out.ts"} {
		t.Run(name, func(t *testing.T) {
			dir := smallDisk(t, 256<<10)
			out := filepath.Join(dir, name)
			logs := &e2e.Buffer{}
			_, err := run(context.Background(), t, encoded("block", "max_frames: 300", 30, fmt.Sprintf("path: %q, hls_time: 1s", out)), logs)
			if err == nil {
				t.Fatalf("the run succeeded on a full disk; left %v\n%s", listDir(t, dir), logs)
			}
			t.Logf("error: %v; left %v", err, listDir(t, dir))
			if !errors.Is(err, syscall.ENOSPC) || !errors.Is(err, sink.ErrWrite) || !strings.Contains(err.Error(), dir+"/") {
				t.Errorf("error %q: want ErrWrite and ENOSPC, naming the file in %s", err, dir)
			}
			if strings.Contains(logs.String(), "output finished") {
				t.Errorf("the sink logged its output finished:\n%s", logs)
			}
			for _, n := range listDir(t, dir) {
				if n == name && name != "live.m3u8" || strings.HasSuffix(n, sink.PartialSuffix) {
					t.Errorf("%s left behind", n)
				}
			}
		})
	}
}

// TestHLSUnwritable: a segment or playlist that cannot be written (a
// directory in the way) fails the run, naming it. Unlike TestFullDisk this
// needs no right to mount.
func TestHLSUnwritable(t *testing.T) {
	for _, name := range []string{"live2.ts", "live2.ts.tmp", "live.m3u8.tmp"} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
				t.Fatal(err)
			}
			logs := &e2e.Buffer{}
			_, err := run(context.Background(), t, encoded("block", "max_frames: 120", 15, fmt.Sprintf("path: %q, hls_time: 500ms", filepath.Join(dir, "live.m3u8"))), logs)
			if err == nil {
				t.Fatalf("the run succeeded; left %v\n%s", listDir(t, dir), logs)
			}
			t.Logf("error: %v", err)
			if !errors.Is(err, sink.ErrWrite) || !errors.Is(err, syscall.EISDIR) || !strings.Contains(err.Error(), filepath.Join(dir, name)) {
				t.Errorf("error %q: want ErrWrite naming %s", err, name)
			}
		})
	}
}

// TestLiveHLSDeletesOldSegments: in a live run (flow drop-oldest) the
// segments that left the playlist are deleted, so the folder holds about
// hls_list_size of them; a file job keeps every segment.
func TestLiveHLSDeletesOldSegments(t *testing.T) {
	const listSize = 3
	for _, flow := range []string{"drop-oldest", "block"} {
		t.Run(flow, func(t *testing.T) {
			dir := t.TempDir()
			logs := &e2e.Buffer{}
			// 8 s of video (at its own pace, as a live input comes) in
			// segments of 0.3 s: 26 segments.
			src := "max_frames: 240"
			if flow == "drop-oldest" {
				src += ", realtime: true"
			}
			_, err := run(context.Background(), t, encoded(flow, src, 9,
				fmt.Sprintf("path: %q, hls_time: 300ms, hls_list_size: %d", filepath.Join(dir, "live.m3u8"), listSize)), logs)
			if err != nil {
				t.Fatalf("%v\n%s", err, logs)
			}
			playlist := readFile(t, filepath.Join(dir, "live.m3u8"))
			listed := regexp.MustCompile(`(?m)^live\d+\.ts$`).FindAllString(playlist, -1)
			m := regexp.MustCompile(`#EXT-X-MEDIA-SEQUENCE:(\d+)`).FindStringSubmatch(playlist)
			if len(listed) != listSize || m == nil {
				t.Fatalf("playlist:\n%s", playlist)
			}
			seq, _ := strconv.Atoi(m[1])
			made := seq + len(listed)
			if made < 15 {
				t.Fatalf("only %d segments made; the test needs more than the list holds:\n%s", made, playlist)
			}
			var files []string
			for _, n := range listDir(t, dir) {
				if strings.HasSuffix(n, ".ts") {
					files = append(files, n)
				}
			}
			for _, l := range listed {
				if indexOf(files, l) < 0 {
					t.Errorf("listed segment %s is not in the folder", l)
				}
			}
			if flow == "block" {
				if len(files) != made {
					t.Errorf("a file job kept %d of its %d segments", len(files), made)
				}
				return
			}
			// The muxer keeps hls_delete_threshold (1) segment beyond the list.
			if len(files) > listSize+2 {
				t.Errorf("%d segments in the folder after %d made, want at most %d: %v", len(files), made, listSize+2, files)
			}
		})
	}
}

// stalledReceiver listens on a free loopback port (its address is handed
// over, never guessed) with a tiny receive buffer, accepts connections and
// never reads them.
func stalledReceiver(t *testing.T) string {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		if err != nil {
			return err
		}
		return serr
	}}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return ln.Addr().String()
}

// TestStalledTCPOutput: a tcp:// output whose reader stops fails the run
// within the sink's timeout, naming the URL, after a warning; in both flow
// modes.
func TestStalledTCPOutput(t *testing.T) {
	for _, flow := range []string{"block", "drop-oldest"} {
		t.Run(flow, func(t *testing.T) {
			url := "tcp://" + stalledReceiver(t)
			logs := &e2e.Buffer{}
			start := time.Now()
			err := runWithin(context.Background(), t, 60*time.Second,
				encoded(flow, "max_frames: 1000000", 30, fmt.Sprintf("path: %q, timeout: 2s, options: {send_buffer_size: \"4096\"}", url)), logs)
			if err == nil {
				t.Fatalf("the run succeeded\n%s", logs)
			}
			t.Logf("error: %v", err)
			if !errors.Is(err, sink.ErrStalled) || !strings.Contains(err.Error(), url) || !strings.Contains(err.Error(), `stage "out"`) {
				t.Errorf("error %q: want ErrStalled naming stage out and %s", err, url)
			}
			if took := time.Since(start); took > 30*time.Second {
				t.Errorf("the stall was reported after %s", took)
			}
			warning := regexp.MustCompile(`level=WARN msg="output stalled.*stage=out.*url=` + regexp.QuoteMeta(url) + `.*`).FindString(logs.String())
			if warning == "" {
				t.Errorf("no warning naming the stage and the URL:\n%s", logs)
			}
			t.Logf("warning: %s", warning)
		})
	}
}

// TestCancelUnblocksWrite: a write blocked on a receiver that stopped
// reading returns as soon as the run is cancelled (no timeout set).
func TestCancelUnblocksWrite(t *testing.T) {
	url := "tcp://" + stalledReceiver(t)
	logs := &e2e.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go runIn(ctx, build(t, encoded("block", "max_frames: 1000000", 30, fmt.Sprintf("path: %q, timeout: 0s, options: {send_buffer_size: \"4096\"}", url)), logs), done)
	waitFor(t, 60*time.Second, "the stall warning", func() bool { return strings.Contains(logs.String(), "output stalled") })
	cancel()
	start := time.Now()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a cancelled run returned no error")
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("the run took %s to return after the cancel", took)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("a cancelled run is still blocked in a write after 15s:\n%s", logs)
	}
}

// TestRTMPCredentialsRedacted: an RTMP output that cannot connect fails
// naming the server, without its password or stream key.
func TestRTMPCredentialsRedacted(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close() // nothing listens there now: the connect is refused
	logs := &e2e.Buffer{}
	// FFmpeg's own lines too, as avflow run logs them.
	codecs.RouteLogs(logs.Logger(), astiav.LogLevelVerbose)
	t.Cleanup(func() {
		astiav.ResetLogCallback()
		astiav.SetLogLevel(astiav.LogLevelError)
	})
	url := "rtmp://alice:s3cretpw@" + addr + "/live/streamkey42"
	err = runWithin(context.Background(), t, 60*time.Second, encoded("block", "max_frames: 30", 30, fmt.Sprintf("path: %q", url)), logs)
	if err == nil {
		t.Fatal("the run succeeded with nothing to connect to")
	}
	if !strings.Contains(err.Error(), addr) || !errors.Is(err, sink.ErrOpen) {
		t.Errorf("error %q: want ErrOpen naming %s", err, addr)
	}
	for _, secret := range []string{"s3cretpw", "streamkey42"} {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("the error shows %q: %v", secret, err)
		}
		if strings.Contains(logs.String(), secret) {
			t.Errorf("the logs show %q:\n%s", secret, logs)
		}
	}
}
