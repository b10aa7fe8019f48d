package decode_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/avflow/avflow/accelerators"
	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/pipeline/stage"
	_ "github.com/avflow/avflow/stages/all"
)

// planes keeps a copy of each decoded picture's Y, U and V planes.
type planes struct {
	stage.Base
	mu     sync.Mutex
	w, h   int
	format string
	pics   [][3][]byte
}

func (p *planes) Process(_ context.Context, in stage.Batch) (stage.Batch, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range in {
		f, err := codecs.FrameOf(e)
		if err != nil {
			return nil, err
		}
		pl, st, err := codecs.YUVPlanes(f)
		if err != nil {
			return nil, err
		}
		p.w, p.h, p.format = f.Width(), f.Height(), f.PixelFormat().Name()
		var pic [3][]byte
		for i := range pl {
			w, h := p.w, p.h
			if i > 0 {
				w, h = (w+1)/2, (h+1)/2
			}
			for y := range h {
				pic[i] = append(pic[i], pl[i][y*st[i]:y*st[i]+w]...)
			}
		}
		p.pics = append(p.pics, pic)
		e.Release()
	}
	return nil, nil
}

// decodeAll decodes a clip's video on the given accelerator and returns its
// pictures, and how long the run took.
func decodeAll(t *testing.T, clip, accel string, strict bool) (*planes, time.Duration, error) {
	t.Helper()
	p := &planes{}
	env := pipeline.Default.Clone()
	if err := env.Register(pipeline.Spec{Kind: "keep", MinInputs: 1, MaxInputs: 1,
		Ports: func(pipeline.Params, []pipeline.PortType) ([]pipeline.Port, error) { return nil, nil },
		New:   func(context.Context, pipeline.Init) (stage.Stage, error) { return p, nil }}); err != nil {
		t.Fatal(err)
	}
	cfg, err := pipeline.Parse(fmt.Appendf(nil, `name: hwdec
stages:
  - {name: src, kind: source, params: {url: %q}}
  - {name: dec, kind: decode, inputs: [src.video], accelerator: %s, strict: %t}
  - {name: keep, kind: keep, inputs: [dec]}
`, clip, accel, strict), "hwdec.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Validate(cfg); err != nil {
		t.Fatal(err)
	}
	r, err := pipeline.NewRunner(env, cfg, pipeline.Options{Log: slog.New(slog.DiscardHandler), Transport: "local"})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = r.Run(context.Background())
	return p, time.Since(start), err
}

// TestGPUDecodeMatchesCPU decodes an H.264 clip with the GPU (NVDEC or
// VA-API, through FFmpeg's device context) and on the CPU: the same number
// of frames, the same size and format, every plane of every frame above
// 40 dB PSNR. Machines without a usable GPU skip it, saying why; the GPU
// check (scripts/gpu-check.sh) runs it on one.
func TestGPUDecodeMatchesCPU(t *testing.T) {
	e2e.Long(t)
	inv := accelerators.Machine("")
	if len(inv.Usable(accelerators.GPU)) == 0 {
		t.Skipf("no usable GPU here: %s", inv.Why(accelerators.GPU))
	}
	clip := e2e.Media(t, "car-detection.mp4")
	cpu, cpuTime, err := decodeAll(t, clip, "cpu", true)
	if err != nil {
		t.Fatal(err)
	}
	gpu, gpuTime, err := decodeAll(t, clip, "gpu", true)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("device %s: %d frames on the GPU in %v, %d on the CPU in %v", inv.Usable(accelerators.GPU)[0].ID, len(gpu.pics), gpuTime, len(cpu.pics), cpuTime)
	if len(cpu.pics) == 0 || len(gpu.pics) != len(cpu.pics) {
		t.Fatalf("frame count: GPU %d, CPU %d", len(gpu.pics), len(cpu.pics))
	}
	if gpu.w != cpu.w || gpu.h != cpu.h || gpu.format != cpu.format {
		t.Fatalf("GPU frames %dx%d %s, CPU frames %dx%d %s", gpu.w, gpu.h, gpu.format, cpu.w, cpu.h, cpu.format)
	}
	worst := math.Inf(1)
	for i := range cpu.pics {
		for c := range 3 {
			if v := codecs.PSNR(gpu.pics[i][c], cpu.pics[i][c]); v < worst {
				worst = v
			}
			if v := codecs.PSNR(gpu.pics[i][c], cpu.pics[i][c]); v < 40 {
				t.Fatalf("frame %d plane %d: PSNR %.1f dB, want above 40", i, c, v)
			}
		}
	}
	t.Logf("lowest PSNR over %d frames x 3 planes: %.1f dB", len(cpu.pics), worst)
	// A second GPU decoder in the same process, after the first closed,
	// shares the process's device context (go-astiav's own device
	// attaching released it with the first decoder).
	again, _, err := decodeAll(t, clip, "gpu", true)
	if err != nil || len(again.pics) != len(cpu.pics) {
		t.Fatalf("second GPU decode: %d frames, %v", len(again.pics), err)
	}
}

// TestGPUDecodeStrictWithoutGPU: on a machine without a usable GPU, a
// decoder bound strictly to the GPU refuses to start, naming the stage and
// why; without strict it decodes on the CPU.
func TestGPUDecodeStrictWithoutGPU(t *testing.T) {
	e2e.Long(t)
	inv := accelerators.Machine("")
	if len(inv.Usable(accelerators.GPU)) > 0 {
		t.Skip("this machine has a usable GPU")
	}
	clip := e2e.Media(t, "car-detection.mp4")
	_, _, err := decodeAll(t, clip, "gpu", true)
	if !errors.Is(err, accelerators.ErrUnavailable) {
		t.Fatalf("want ErrUnavailable, got %v", err)
	}
	p, _, err := decodeAll(t, clip, "gpu", false)
	if err != nil || len(p.pics) != 377 || p.format != "yuv420p" {
		t.Fatalf("fallback decode: %v, %d frames (want 377) in %q", err, len(p.pics), p.format)
	}
}
