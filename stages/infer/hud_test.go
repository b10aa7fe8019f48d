package infer_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/e2e"
)

// hudRegions are where Extreme Tux Racer draws its HUD on the 960x540
// game clip (see ../shared/media/game/README.md): the examples'
// game-stream pipeline reads the same regions.
const hudRegions = `{time: "0.05,0.01,0.215,0.09", herring: "0.855,0.01,0.94,0.095", speed: "0.9,0.86,0.985,0.93"}`

// TestHUDRegionsReadTheGame: PP-OCR's recognizer, given the HUD's
// regions, reads what the game shows on frames labelled by looking at
// them (frame 90: 00:03, 000 herring, speed 037; 450: 00:15, 000, 058;
// 900: 00:30, 002, 038), and frames between reads carry the last text.
func TestHUDRegionsReadTheGame(t *testing.T) {
	e2e.Long(t)
	t.Setenv("AVFLOW_MODEL_MIRROR", e2e.Models(t))
	c := &collector{}
	cfg, err := pipeline.Parse([]byte(fmt.Sprintf(`name: hud
stages:
  - {name: src, kind: source, params: {url: %q, max_frames: 901}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: hud, kind: infer, inputs: [dec], params: {model: ppocr-v4-rec, interval: 90, regions: %s}}
  - {name: c, kind: collect, inputs: [hud]}
`, e2e.Media(t, "game/tuxracer-run1.mp4"), hudRegions)), "hud.yaml")
	if err != nil {
		t.Fatal(err)
	}
	run(t, envWithCollector(t, c), cfg)
	if c.frames != 901 {
		t.Fatalf("%d frames, want 901", c.frames)
	}
	labelled := map[int]map[string]string{
		90:  {"time": "00:03", "herring": "000", "speed": "037"},
		450: {"time": "00:15", "herring": "000", "speed": "058"},
		900: {"time": "00:30", "herring": "002", "speed": "038"},
	}
	for frame, want := range labelled {
		for _, at := range []int{frame, frame + 1} { // read, then carried
			if at >= c.frames {
				continue
			}
			got := map[string]string{}
			for _, d := range c.dets[at] {
				got[d.Label] = d.Text
			}
			for k, v := range want {
				if k == "time" { // read with spaces around the colon, and the hundredths after
					if !strings.HasPrefix(strings.ReplaceAll(got[k], " ", ""), v) {
						t.Errorf("frame %d: time read %q, want it to start %q (spaces aside)", at, got[k], v)
					}
					continue
				}
				if got[k] != v {
					t.Errorf("frame %d: %s read %q, want %q (all: %v)", at, k, got[k], v, got)
				}
			}
		}
	}
}
