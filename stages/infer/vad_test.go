package infer_test

import (
	"encoding/binary"
	"fmt"
	"math"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/e2e"
)

// speechExtent returns where the audible part of a file starts and ends (s),
// by a 10 ms RMS gate on the decoded samples.
func speechExtent(t *testing.T, path string) (float64, float64) {
	raw, err := exec.Command("ffmpeg", "-v", "error", "-i", path, "-ac", "1", "-ar", "16000", "-f", "f32le", "-").Output()
	if err != nil {
		t.Fatal(err)
	}
	const win = 160
	first, last := -1, -1
	for w := 0; (w+1)*win*4 <= len(raw); w++ {
		var sum float64
		for i := 0; i < win; i++ {
			v := float64(math.Float32frombits(binary.LittleEndian.Uint32(raw[(w*win+i)*4:])))
			sum += v * v
		}
		if math.Sqrt(sum/win) > 0.01 {
			if first < 0 {
				first = w
			}
			last = w
		}
	}
	if first < 0 {
		t.Fatal("no audible samples")
	}
	return float64(first) * 0.01, float64(last+1) * 0.01
}

// TestVADFindsSpeech puts espeak-ng speech between 1.5 s of silence on
// each side: Silero VAD must find it, with both boundaries within 100 ms.
func TestVADFindsSpeech(t *testing.T) {
	e2e.Long(t)
	dir := t.TempDir()
	speech := filepath.Join(dir, "speech.wav")
	if out, err := exec.Command("espeak-ng", "-w", speech, "The quick brown fox jumps over the lazy dog near the river bank").CombinedOutput(); err != nil {
		t.Fatalf("espeak-ng: %v\n%s", err, out)
	}
	clip := filepath.Join(dir, "clip.m4a")
	if out, err := exec.Command("ffmpeg", "-v", "error", "-i", speech, "-af", "adelay=1500:all=1,apad=pad_dur=1.5",
		"-ar", "48000", "-c:a", "aac", clip).CombinedOutput(); err != nil {
		t.Fatalf("ffmpeg: %v\n%s", err, out)
	}
	on, off := speechExtent(t, speech)
	wantStart, wantEnd := 1.5+on, 1.5+off
	c := &collector{}
	cfg, err := pipeline.Parse([]byte(fmt.Sprintf(`name: vad
stages:
  - {name: src, kind: source, params: {url: %q}}
  - {name: dec, kind: decode, inputs: [src.audio]}
  - {name: vad, kind: infer, inputs: [dec], params: {model: silero-vad}}
  - {name: c, kind: collect, inputs: [vad.meta]}
`, clip)), "vad.yaml")
	if err != nil {
		t.Fatal(err)
	}
	run(t, envWithCollector(t, c), cfg)
	if len(c.segs) == 0 {
		t.Fatal("no speech found")
	}
	start, end := c.segs[0].Start, c.segs[len(c.segs)-1].End
	t.Logf("speech placed at %.3f-%.3f s; VAD found %d segment(s), %.3f-%.3f s", wantStart, wantEnd, len(c.segs), start, end)
	if math.Abs(start-wantStart) > 0.1 || math.Abs(end-wantEnd) > 0.1 {
		t.Errorf("boundaries %.3f-%.3f s, want %.3f-%.3f s within 100 ms (segments %+v)", start, end, wantStart, wantEnd, c.segs)
	}
}
