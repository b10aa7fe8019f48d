package personalise_test

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/pipeline/pipelinetest"
	"github.com/avflow/avflow/pipeline/viewers"
)

// TestGameStreamBanner runs examples/game-stream on the Tux Racer clip: a
// viewer's banner says the herring count and speed that PP-OCR read off
// the game's HUD. The banner is read back from the viewer's rendition
// with the same recognizer: its numbers must be ones the game showed
// (the run collects 0 or 2 herring; the speed dial stays within 20..80
// km/h on this clip), so the overlay carries the HUD, not a constant.
func TestGameStreamBanner(t *testing.T) {
	e2e.Long(t)
	out := t.TempDir()
	t.Setenv("AVFLOW_MEDIA", e2e.MediaDir(t))
	t.Setenv("AVFLOW_OUT", out)
	t.Setenv("AVFLOW_FRAMES", "300")
	t.Setenv("AVFLOW_MODEL_MIRROR", e2e.Models(t))
	cfg, err := pipeline.Load("../../examples/game-stream/pipeline.yaml")
	if err != nil {
		t.Fatal(err)
	}
	lr := startLive(t, cfg, out)
	lr.put(t, viewers.Profile{ID: "ann", Overlays: []viewers.Overlay{{Text: "Herring {{.HUD.herring}} speed {{.HUD.speed}}", Position: "top"}}})
	m := lr.waitEntries(t, viewers.StateLive, "ann")
	if e := m["ann"]; e.Error != "" {
		t.Errorf("ann's entry says %q, want no template error (the HUD is read on every frame)", e.Error)
	}
	if err := <-lr.done; err != nil {
		t.Fatalf("run: %v\n%s", err, lr.logs)
	}
	lr.done <- nil
	banners := readBanners(t, filepath.Join(out, "game-stream", m["ann"].Variant, "index.m3u8"))
	re := regexp.MustCompile(`Herring (\d{3}) speed (\d{3})`)
	good := 0
	for _, b := range banners {
		mm := re.FindStringSubmatch(b)
		if mm == nil {
			t.Logf("banner read %q (OCR noise?)", b)
			continue
		}
		herring, _ := strconv.Atoi(mm[1])
		speed, _ := strconv.Atoi(mm[2])
		if (herring != 0 && herring != 2) || speed < 20 || speed > 80 {
			t.Errorf("banner %q: numbers the game did not show", b)
			continue
		}
		good++
	}
	if good == 0 || float64(good) < 0.8*float64(len(banners)) {
		t.Fatalf("%d of %d banners read back as Herring NNN speed NNN, want at least 80%%", good, len(banners))
	}
	t.Logf("%d banners read back from ann's rendition, e.g. %q", good, banners[0])
}

// readBanners reads the top banner of every 15th frame of a rendition.
func readBanners(t *testing.T, playlist string) []string {
	t.Helper()
	envs := pipelinetest.Record(t, "banner.yaml", fmt.Sprintf(`name: banner
stages:
  - {name: src, kind: source, params: {url: %q}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: read, kind: infer, inputs: [dec], params: {model: ppocr-v4-rec, interval: 15, regions: {banner: "0.2,0.01,0.8,0.13"}}}
  - {name: keep, kind: record, inputs: [read]}
`, playlist))
	var out []string
	for i, e := range envs {
		if i%15 != 0 {
			continue
		}
		for _, d := range e.Detections {
			if d.Label == "banner" {
				out = append(out, d.Text)
			}
		}
	}
	return out
}
