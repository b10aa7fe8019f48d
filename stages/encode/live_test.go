package encode_test

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/pipeline/pipelinetest"
)

// TestLiveHLSSegmentsKeepTheirLength: a live run (flow: drop-oldest, the
// source paced in real time) whose frames have holes (a select filter
// drops 15 of every 50, as drop-oldest does under load) into HLS with the
// sink's default 2 s segments: the encoder's keyframes come by time (2 s
// by default in live runs), so every segment is 2 s long, where keyframes
// every N frames would make them longer.
func TestLiveHLSSegmentsKeepTheirLength(t *testing.T) {
	e2e.Long(t)
	dir := t.TempDir()
	playlist := filepath.Join(dir, "live.m3u8")
	_, logs, err := pipelinetest.Run(t, nil, "live.yaml", fmt.Sprintf(`name: live
flow: drop-oldest
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2=size=320x240:rate=25:duration=6", realtime: true}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: drops, kind: filter, inputs: [dec], params: {graph: "select='not(between(mod(n,50),10,24))'"}}
  - {name: enc, kind: encode, inputs: [drops], params: {codec: libx264, preset: ultrafast}}
  - {name: out, kind: sink, inputs: [enc], params: {path: %q, hls_list_size: 0}}
`, playlist))
	if err != nil {
		t.Fatalf("%v\n%s", err, logs)
	}
	b, err := os.ReadFile(playlist)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^#EXT-X-TARGETDURATION:2$`).Match(b) {
		t.Errorf("target duration is not 2 s:\n%s", b)
	}
	// FFmpeg's HLS muxer gives the last segment the sum of its packets'
	// durations, shorter than its span where frames are missing.
	segs := regexp.MustCompile(`(?m)^#EXTINF:([0-9.]+),`).FindAllSubmatch(b, -1)
	if len(segs) != 3 {
		t.Fatalf("%d segments, want 3 of 2 s for 6 s:\n%s", len(segs), b)
	}
	for i, m := range segs {
		d, err := strconv.ParseFloat(string(m[1]), 64)
		if err != nil {
			t.Fatal(err)
		}
		if (i < len(segs)-1 && math.Abs(d-2) > 0.041) || d > 2.041 { // one frame
			t.Errorf("segment %d is %.3f s long, want 2 s:\n%s", i, d, b)
		}
	}
}
