package infer_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/e2e"
)

// TestOCRReadsDrawnText draws a scoreboard into a lavfi frame with
// drawtext, then PP-OCR det + rec must read it back.
func TestOCRReadsDrawnText(t *testing.T) {
	e2e.Long(t)
	for _, text := range []string{"SCORE 1234", "LAP 3 OF 12"} {
		t.Run(text, func(t *testing.T) {
			c := &collector{}
			src := fmt.Sprintf("lavfi:color=c=white:s=640x240:r=5,drawtext=text='%s':fontsize=56:fontcolor=black:x=60:y=90", text)
			cfg, err := pipeline.Parse([]byte(fmt.Sprintf(`name: ocr
stages:
  - {name: src, kind: source, params: {url: %q, max_frames: 2}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: ocr, kind: infer, inputs: [dec], params: {model: ppocr-v4-det, recognizer: ppocr-v4-rec}}
  - {name: c, kind: collect, inputs: [ocr]}
`, src)), "ocr.yaml")
			if err != nil {
				t.Fatal(err)
			}
			run(t, envWithCollector(t, c), cfg)
			if c.frames != 2 {
				t.Fatalf("%d frames", c.frames)
			}
			for i, dets := range c.dets {
				var got []string
				for _, d := range dets {
					got = append(got, d.Text)
				}
				if strings.Join(got, " ") != text {
					t.Errorf("frame %d: read %q, want %q (boxes %+v)", i, got, text, dets)
				}
			}
		})
	}
}
