package infer

import (
	"context"
	"log/slog"
	"math"
	"testing"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/e2e"
)

// stripes makes a white yuv420p frame with dark bars: text-like blocks for DBNet.
func stripes(t *testing.T, shift int) *astiav.Frame {
	f := astiav.AllocFrame()
	f.SetWidth(640)
	f.SetHeight(256)
	f.SetPixelFormat(astiav.PixelFormatYuv420P)
	if err := f.AllocBuffer(0); err != nil {
		t.Fatal(err)
	}
	pl, st, err := codecs.YUVPlanes(f)
	if err != nil {
		t.Fatal(err)
	}
	for y := 0; y < 256; y++ {
		for x := 0; x < 640; x++ {
			v := byte(235)
			inLine := (y >= 60+shift && y < 100+shift) || (y >= 150 && y < 190)
			if inLine && x >= 40 && x < 600 && (x/12)%2 == 0 {
				v = 16
			}
			pl[0][y*st[0]+x] = v
		}
	}
	for p := 1; p < 3; p++ {
		for i := range pl[p] {
			pl[p][i] = 128
		}
	}
	return f
}

// TestDetectBatchMatchesSingle: frames run together through a model with a
// dynamic batch give what they give one by one.
func TestDetectBatchMatchesSingle(t *testing.T) {
	e2e.Long(t) // the PP-OCR model
	in := pipeline.Init{Name: "t", Params: pipeline.Params{"threads": 1, "optimization": "all"}, Log: slog.New(slog.DiscardHandler)}
	d, err := NewDetector(context.Background(), in, "ppocr-v4-det", DetectorOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if !d.Batchable() {
		t.Fatal("ppocr-v4-det has a dynamic batch dimension")
	}
	frames := []*astiav.Frame{stripes(t, 0), stripes(t, 20), stripes(t, 40)}
	defer func() {
		for _, f := range frames {
			f.Free()
		}
	}()
	batch, err := d.DetectBatch(frames)
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for i, f := range frames {
		single, err := d.Detect(f)
		if err != nil {
			t.Fatal(err)
		}
		if len(single) != len(batch[i]) {
			t.Fatalf("frame %d: %d boxes alone, %d in a batch", i, len(single), len(batch[i]))
		}
		for j := range single {
			a, b := single[j], batch[i][j]
			if math.Abs(float64(a.Y1-b.Y1)) > 1e-3 || math.Abs(float64(a.X2-b.X2)) > 1e-3 {
				t.Fatalf("frame %d box %d: %+v alone, %+v in a batch", i, j, a, b)
			}
		}
		found += len(single)
	}
	if found == 0 {
		t.Fatal("no text boxes found on any frame: the comparison proves nothing")
	}
}
