package sink_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/stages/sink"
)

const oldContent = "an older output"

// TestFileRules drives a sink writing an MP4 through the ways a run ends,
// with what may already be at the output's names, and checks the rules:
// the output is written as name.partial and takes its real name only once
// complete; a run that fails or aborts leaves neither, and an older output
// is replaced only by a complete one; no link is ever written through.
func TestFileRules(t *testing.T) {
	pkts := clipPackets(t)
	type setup func(t *testing.T, dir, out string) (target string)
	symlinkAt := func(name string) setup {
		return func(t *testing.T, dir, out string) string {
			target := filepath.Join(dir, "precious")
			writeFile(t, target, oldContent)
			if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
			return target
		}
	}
	cases := []struct {
		name  string
		setup setup
		// end: "finish" (every packet, then Flush), "abort" (some packets,
		// then Close), "cancel" (every packet, then Flush as the run is
		// cancelled), "fail" (Flush with no packet: an error), "none" (Close
		// at once).
		end          string
		wantOut      bool // a complete output at the real name
		wantOldKept  bool // the older output is still there
		wantLinkKept string
	}{
		{name: "finished", end: "finish", wantOut: true},
		{name: "aborted mid-run", end: "abort"},
		{name: "failed", end: "fail"},
		{name: "cancelled while finishing", end: "cancel"},
		{name: "closed before any packet", end: "none"},
		{name: "older output replaced when finished", end: "finish", wantOut: true,
			setup: func(t *testing.T, dir, out string) string { writeFile(t, out, oldContent); return "" }},
		{name: "older output kept when aborted", end: "abort", wantOldKept: true,
			setup: func(t *testing.T, dir, out string) string { writeFile(t, out, oldContent); return "" }},
		{name: "older output kept when failed", end: "fail", wantOldKept: true,
			setup: func(t *testing.T, dir, out string) string { writeFile(t, out, oldContent); return "" }},
		{name: "older output kept when cancelled while finishing", end: "cancel", wantOldKept: true,
			setup: func(t *testing.T, dir, out string) string { writeFile(t, out, oldContent); return "" }},
		{name: "symlink at the partial name", end: "finish", wantOut: true, setup: symlinkAt("out.mp4.partial"), wantLinkKept: "out.mp4.partial"},
		{name: "symlink at the partial name, aborted", end: "abort", setup: symlinkAt("out.mp4.partial"), wantLinkKept: "out.mp4.partial"},
		{name: "dangling symlink at the partial name", end: "finish", wantOut: true, wantLinkKept: "out.mp4.partial",
			setup: func(t *testing.T, dir, out string) string {
				target := filepath.Join(dir, "not-there")
				if err := os.Symlink(target, out+".partial"); err != nil {
					t.Fatal(err)
				}
				return target
			}},
		{name: "stale partial file", end: "finish", wantOut: true,
			setup: func(t *testing.T, dir, out string) string {
				writeFile(t, out+".partial", oldContent)
				return out + ".partial"
			}},
		{name: "symlink at the output name", end: "finish", wantOut: true, setup: symlinkAt("out.mp4")},
		{name: "symlink at the output name, aborted", end: "abort", setup: symlinkAt("out.mp4"), wantLinkKept: "out.mp4"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			out := filepath.Join(dir, "out.mp4")
			var target string
			if c.setup != nil {
				target = c.setup(t, dir, out)
			}
			planted := map[string]bool{}
			for _, p := range partialFiles(t, dir) {
				planted[p] = true
			}
			var before string
			if target != "" {
				before, _ = readMaybe(target)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			logs := &e2e.Buffer{}
			st, err := newSink(ctx, t, params(t, fmt.Sprintf("path: %q", out)), logs)
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			switch c.end {
			case "finish", "abort", "cancel":
				n := len(pkts)
				if c.end == "abort" {
					n = 20
				}
				if err := feed(ctx, t, st, pkts[:n]); err != nil {
					t.Fatal(err)
				}
				var partials []string
				for _, p := range partialFiles(t, dir) {
					if !planted[p] {
						partials = append(partials, p)
					}
				}
				if len(partials) != 1 {
					t.Fatalf("while writing, new partial files %v, want exactly one", partials)
				}
				if len(planted) == 0 && partials[0] != "out.mp4.partial" {
					t.Errorf("the output is written as %s, want out.mp4.partial", partials[0])
				}
				switch c.end {
				case "finish":
					if _, err := st.Flush(ctx); err != nil {
						t.Fatalf("Flush: %v\n%s", err, logs)
					}
				case "cancel":
					cancel()
					if _, err := st.Flush(ctx); !errors.Is(err, context.Canceled) {
						t.Fatalf("Flush of a cancelled run: %v, want context.Canceled", err)
					}
				}
			case "fail":
				if _, err := st.Flush(ctx); err == nil {
					t.Fatal("Flush with no packet did not fail")
				}
			}
			if err := st.Close(); err != nil {
				t.Fatal(err)
			}

			fi, err := os.Lstat(out)
			switch {
			case c.wantOut:
				if err != nil || !fi.Mode().IsRegular() {
					t.Fatalf("no complete output at %s (%v, %v)", out, fi, err)
				}
				if boxes := topBoxes(t, out); indexOf(boxes, "moov") < 0 {
					t.Errorf("output boxes %v: no moov", boxes)
				}
				if n := e2e.VideoPackets(t, out); n != len(pkts) {
					t.Errorf("output holds %d packets, want %d", n, len(pkts))
				}
			case c.wantOldKept:
				if got := readFile(t, out); got != oldContent {
					t.Errorf("the older output was changed by a run that did not finish")
				}
			case c.wantLinkKept == "out.mp4":
			default:
				if err == nil {
					t.Errorf("%s exists after a run that did not finish", out)
				}
			}
			for _, p := range partialFiles(t, dir) {
				if !planted[p] {
					t.Errorf("%s left behind", p)
				}
			}
			if c.wantLinkKept != "" {
				if fi, err := os.Lstat(filepath.Join(dir, c.wantLinkKept)); err != nil || fi.Mode()&os.ModeSymlink == 0 {
					t.Errorf("the link %s was not left alone (%v)", c.wantLinkKept, err)
				}
			}
			if target != "" {
				if after, _ := readMaybe(target); after != before {
					t.Errorf("%s was changed through a link or in the way: %q, was %q", target, trim(after), trim(before))
				}
			}
		})
	}
}

// TestDirectoryAtOutputPath: a directory where the output goes is an error
// when the stage is built, naming the path, not after the whole run.
func TestDirectoryAtOutputPath(t *testing.T) {
	for _, name := range []string{"out.mp4", "out.mkv", "live.m3u8"} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			out := filepath.Join(dir, name)
			if err := os.Mkdir(out, 0o755); err != nil {
				t.Fatal(err)
			}
			st, err := newSink(context.Background(), t, params(t, fmt.Sprintf("path: %q", out)), &e2e.Buffer{})
			if err == nil {
				_ = st.Close()
				t.Fatal("New accepted a directory as the output")
			}
			if !errors.Is(err, sink.ErrOpen) || !errors.Is(err, syscall.EISDIR) || !strings.Contains(err.Error(), out) {
				t.Errorf("error %q: want ErrOpen and EISDIR, naming %s", err, out)
			}
			if p := partialFiles(t, dir); len(p) != 0 {
				t.Errorf("left %v", p)
			}
		})
	}
}

// TestHLSNeverWritesThroughLinks: links at the names the HLS muxer writes
// (a segment, the playlist's temporary file) are replaced, their targets
// untouched, and the playlist and segments come out whole.
func TestHLSNeverWritesThroughLinks(t *testing.T) {
	pkts := clipPackets(t)
	for _, name := range []string{"live0.ts", "live1.ts.tmp", "live.m3u8.tmp", "live.m3u8"} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			target := filepath.Join(dir, "precious")
			writeFile(t, target, oldContent)
			if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			logs := &e2e.Buffer{}
			st, err := newSink(ctx, t, params(t, fmt.Sprintf("path: %q, hls_time: 300ms, hls_list_size: 0", filepath.Join(dir, "live.m3u8"))), logs)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if err := feed(ctx, t, st, pkts); err != nil {
				t.Fatal(err)
			}
			if _, err := st.Flush(ctx); err != nil {
				t.Fatalf("Flush: %v\n%s", err, logs)
			}
			if got := readFile(t, target); got != oldContent {
				t.Fatalf("the link's target was written through: %q", trim(got))
			}
			playlist := readFile(t, filepath.Join(dir, "live.m3u8"))
			segs := 0
			for _, l := range strings.Split(playlist, "\n") {
				if strings.HasSuffix(l, ".ts") {
					segs++
					if fi, err := os.Lstat(filepath.Join(dir, l)); err != nil || !fi.Mode().IsRegular() || fi.Size() == 0 {
						t.Errorf("segment %s: %v %v", l, fi, err)
					}
				}
			}
			if segs < 3 || !strings.Contains(playlist, "#EXT-X-ENDLIST") {
				t.Errorf("playlist with %d segments:\n%s", segs, playlist)
			}
			for _, n := range listDir(t, dir) {
				if strings.HasSuffix(n, ".tmp") && n != name {
					t.Errorf("temporary file %s left behind", n)
				}
			}
		})
	}
}

func partialFiles(t *testing.T, dir string) []string {
	var p []string
	for _, n := range listDir(t, dir) {
		if strings.HasSuffix(n, sink.PartialSuffix) {
			p = append(p, n)
		}
	}
	return p
}

func readMaybe(path string) (string, error) {
	b, err := os.ReadFile(path)
	return string(b), err
}

func trim(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}
