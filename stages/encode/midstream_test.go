package encode_test

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/pipeline/pipelinetest"
)

// ffmpeg runs the ffmpeg CLI, failing the test with its output.
func ffmpeg(t *testing.T, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(e2e.Tool(t, "ffmpeg"), append([]string{"-v", "error", "-y"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ffmpeg %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// switchingTS is what an RTMP streamer switching scenes produces, as one
// MPEG-TS: a second of one facecam clip at the first size, then a second
// of another at the second size (one clean TS, timestamps running on).
func switchingTS(t *testing.T, dir string, first, second string) string {
	t.Helper()
	var list strings.Builder
	for i, c := range []struct{ clip, size string }{{"facecam/book.mkv", first}, {"facecam/walk.mkv", second}} {
		part := filepath.Join(dir, fmt.Sprintf("part%d.ts", i))
		ffmpeg(t, "-i", e2e.Media(t, c.clip), "-t", "1", "-vf", "scale="+c.size, "-c:v", "libx264", "-preset", "ultrafast", "-g", "10", "-f", "mpegts", part)
		fmt.Fprintf(&list, "file '%s'\n", part)
	}
	listFile := filepath.Join(dir, "parts.txt")
	if err := os.WriteFile(listFile, []byte(list.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "switch.ts")
	ffmpeg(t, "-f", "concat", "-safe", "0", "-i", listFile, "-c", "copy", "-f", "mpegts", out)
	return out
}

// frameSizes lists each video frame's WxH as ffprobe decodes them.
func frameSizes(t *testing.T, path string) []string {
	t.Helper()
	out, err := exec.Command(e2e.Tool(t, "ffprobe"), "-v", "error", "-select_streams", "v", "-show_entries", "frame=width,height",
		"-of", "csv=p=0", path).Output()
	if err != nil {
		t.Fatalf("ffprobe %s: %v", path, err)
	}
	var sizes []string
	for _, l := range strings.Split(string(out), "\n") {
		if l = strings.Trim(strings.TrimSpace(l), ","); l != "" {
			sizes = append(sizes, strings.Replace(l, ",", "x", 1))
		}
	}
	return sizes
}

// TestResolutionChangeMidStream: a TS switching from 640x480 to 1280x720
// (and the other way) goes source -> decode -> filter -> encode -> sink.
// The filter graph (a crop by the input's size) is configured again for
// the new size, the encoder scales what it gets to the size it opened
// with, with one warning, and the output is one size throughout, every
// frame there, each the whole picture: the same as the ffmpeg CLI makes of
// the same input with the same filter (which configures its graph again
// and scales to the first size too, its -autoscale).
func TestResolutionChangeMidStream(t *testing.T) {
	e2e.Long(t)
	tests := []struct{ name, first, second, want string }{
		{"up", "640:480", "1280:720", "320x240"},
		{"down", "1280:720", "640:480", "640x360"},
	}
	const graph = "crop=iw/2:ih/2:0:0"
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			in := switchingTS(t, dir, tt.first, tt.second)
			inFrames := len(frameSizes(t, in))
			out := filepath.Join(dir, "out.mp4")
			_, logs, err := pipelinetest.Run(t, nil, "switch.yaml", fmt.Sprintf(`name: switch
stages:
  - {name: src, kind: source, params: {url: %q}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: crop, kind: filter, inputs: [dec], params: {graph: %q}}
  - {name: enc, kind: encode, inputs: [crop], params: {codec: libx264, preset: ultrafast, crf: 12}}
  - {name: out, kind: sink, inputs: [enc], params: {path: %q}}
`, in, graph, out))
			if err != nil {
				t.Fatalf("%v\n%s", err, logs)
			}
			sizes := frameSizes(t, out)
			if len(sizes) != inFrames || inFrames < 50 {
				t.Fatalf("%d frames out, %d in", len(sizes), inFrames)
			}
			for i, s := range sizes {
				if s != tt.want {
					t.Fatalf("frame %d is %s, want %s throughout", i, s, tt.want)
				}
			}
			if n := strings.Count(logs, "filter graph configured again"); n != 1 {
				t.Errorf("%d log lines about the filter graph configured again, want 1:\n%s", n, logs)
			}
			if n := strings.Count(logs, "level=WARN msg=\"the input's picture size or pixel format changed mid-stream"); n != 1 {
				t.Errorf("%d warnings from the encoder, want 1:\n%s", n, logs)
			}
			// The peer: the ffmpeg CLI, the same filter, lossless.
			ref := filepath.Join(dir, "ref.mkv")
			ffmpeg(t, "-i", in, "-vf", graph, "-c:v", "ffv1", ref)
			got, want := ffmpeg(t, "-i", out, "-f", "rawvideo", "-pix_fmt", "yuv420p", "-"), ffmpeg(t, "-i", ref, "-f", "rawvideo", "-pix_fmt", "yuv420p", "-")
			w, h := dims(t, tt.want)
			size := w * h * 3 / 2
			if len(got) != len(want) || len(got) != size*inFrames {
				t.Fatalf("raw pictures: %d bytes from avflow, %d from the CLI, want %d", len(got), len(want), size*inFrames)
			}
			worst := math.Inf(1)
			for i := 0; i < inFrames; i++ {
				p := codecs.PSNR(got[i*size:(i+1)*size], want[i*size:(i+1)*size])
				if p < 32 {
					t.Errorf("frame %d: PSNR %.1f dB against the ffmpeg CLI's, want >= 32 (the whole picture, scaled)", i, p)
				}
				worst = min(worst, p)
			}
			t.Logf("worst frame against the ffmpeg CLI's: PSNR %.1f dB", worst)
		})
	}
}

func dims(t *testing.T, wxh string) (int, int) {
	t.Helper()
	a, b, _ := strings.Cut(wxh, "x")
	w, err1 := strconv.Atoi(a)
	h, err2 := strconv.Atoi(b)
	if err1 != nil || err2 != nil {
		t.Fatalf("bad size %q", wxh)
	}
	return w, h
}
