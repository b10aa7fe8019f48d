package filter_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/accelerators"
	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/pipeline/pipelinetest"
	_ "github.com/avflow/avflow/stages/all"
)

var (
	cpu = accelerators.Device{Kind: accelerators.CPU, ID: "cpu:0", Usable: true}
	// lavapipe is Mesa's software Vulkan device, which FFmpeg opens like
	// any GPU: the device-memory paths run for real on a machine without one.
	lavapipe = accelerators.Device{Kind: accelerators.GPU, ID: "vulkan:0", Name: "llvmpipe (Mesa lavapipe)", Usable: true}
)

// run runs testsrc2 (320x240, 25 frames) through the given filter stage
// lines into an MP4, on a made-up inventory.
func run(t *testing.T, inv accelerators.Inventory, filters, out string) (*pipeline.Runner, string, error) {
	t.Helper()
	return pipelinetest.Run(t, &inv, "gpufilter.yaml", fmt.Sprintf(`name: gpufilter
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2=size=320x240:rate=25:duration=1"}}
  - {name: dec, kind: decode, inputs: [src.video]}
%s
  - {name: enc, kind: encode, inputs: [last], params: {codec: libx264, preset: ultrafast, crf: 18}}
  - {name: out, kind: sink, inputs: [enc], params: {path: %q}}
`, filters, out))
}

func vulkanOrSkip(t *testing.T) {
	t.Helper()
	if _, err := astiav.CreateHardwareDeviceContext(astiav.HardwareDeviceTypeVulkan, "0", nil); err != nil {
		t.Skipf("no Vulkan device (make setup installs mesa-vulkan-drivers): %v", err)
	}
}

// TestFilterOnDevice: two filter stages bound to a (Vulkan) device: the
// first uploads the decoder's frames and scales them there, the second
// flips them; the picture is the one the ffmpeg CLI makes with the same
// filters on the same device. (Vulkan frames are read back by the stage
// that made them, see New; device frames entering a graph as they are is
// TestDeviceGraph in codecs.)
func TestFilterOnDevice(t *testing.T) {
	vulkanOrSkip(t)
	dir := t.TempDir()
	gpuOut, cliOut := filepath.Join(dir, "gpu.mp4"), filepath.Join(dir, "cli.mp4")
	inv := accelerators.Inventory{Devices: []accelerators.Device{cpu, lavapipe}}
	r, logs, err := run(t, inv, `  - {name: scale, kind: filter, inputs: [dec], accelerator: gpu, strict: true, params: {graph: "scale_vulkan=160:120"}}
  - {name: last, kind: filter, inputs: [scale], accelerator: gpu, strict: true, params: {graph: "hflip_vulkan"}}`, gpuOut)
	if err != nil {
		t.Fatalf("%v\n%s", err, logs)
	}
	for _, st := range r.Metrics().Snapshot() {
		if (st.Name == "scale" || st.Name == "last") && st.Device != "vulkan:0" {
			t.Errorf("%s ran on %s, want vulkan:0", st.Name, st.Device)
		}
	}
	if !regexp.MustCompile(`msg="filter graph on the GPU".*stage=scale.*input="uploaded from system memory"`).MatchString(logs) {
		t.Errorf("no log saying the frames were uploaded:\n%s", logs)
	}
	// The peer: the ffmpeg CLI running the same Vulkan filters on the same device.
	cli := exec.Command("ffmpeg", "-v", "error", "-y", "-init_hw_device", "vulkan=vk:0", "-filter_hw_device", "vk",
		"-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=1",
		"-vf", "hwupload,scale_vulkan=160:120,hflip_vulkan,hwdownload,format=yuv420p", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", cliOut)
	if out, err := cli.CombinedOutput(); err != nil {
		t.Fatalf("ffmpeg: %v\n%s", err, out)
	}
	probe, err := exec.Command("ffprobe", "-v", "error", "-select_streams", "v", "-count_frames",
		"-show_entries", "stream=width,height,nb_read_frames", "-of", "csv=p=0", gpuOut).Output()
	if err != nil || strings.TrimSpace(string(probe)) != "160,120,25" {
		t.Fatalf("ffprobe of the GPU output: %q %v", probe, err)
	}
	if p := psnr(t, gpuOut, cliOut); p < 60 {
		t.Errorf("avflow's Vulkan filters vs the ffmpeg CLI's: PSNR %.1f dB, want the same pictures (>= 60)", p)
	}
}

// TestGPUGraphWithoutTheGPU: a graph of CUDA filters on a machine where
// CUDA will not open falls back to cpu_graph with a warning and a cpu:0
// label; without cpu_graph, or strict, it fails naming the device; and on
// the CPU from the start it fails saying what to do.
func TestGPUGraphWithoutTheGPU(t *testing.T) {
	if _, err := os.Stat("/dev/nvidia0"); err == nil {
		t.Skip("this machine has an NVIDIA GPU")
	}
	fake := accelerators.Device{Kind: accelerators.GPU, ID: "cuda:0", Name: "NVIDIA L4 (pretend)", Usable: true}
	tests := []struct {
		name, line string
		inv        []accelerators.Device
		wantErr    string // "" : runs, on the CPU
	}{
		{"fallback", `accelerator: gpu, params: {graph: "scale_cuda=160:120", cpu_graph: "scale=160:120"}`, []accelerators.Device{cpu, fake}, ""},
		{"no cpu_graph", `accelerator: gpu, params: {graph: "scale_cuda=160:120"}`, []accelerators.Device{cpu, fake}, "cuda:0"},
		{"strict", `accelerator: gpu, strict: true, params: {graph: "scale_cuda=160:120", cpu_graph: "scale=160:120"}`, []accelerators.Device{cpu, fake}, "cuda:0"},
		{"on the CPU", `params: {graph: "scale_cuda=160:120"}`, []accelerators.Device{cpu}, "bind it to a GPU (accelerator: gpu) or give cpu_graph"},
		{"cpu graph stays", `accelerator: auto, params: {graph: "scale=160:120"}`, []accelerators.Device{cpu, fake}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out.mp4")
			r, logs, err := run(t, accelerators.Inventory{Devices: tt.inv}, "  - {name: last, kind: filter, inputs: [dec], "+tt.line+"}", out)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("want an error with %q, got %v", tt.wantErr, err)
				}
				if _, serr := os.Stat(out); serr == nil {
					t.Fatal("a failed start left an output file")
				}
				return
			}
			if err != nil {
				t.Fatalf("%v\n%s", err, logs)
			}
			for _, st := range r.Metrics().Snapshot() {
				if st.Name == "last" && st.Device != "cpu:0" {
					t.Errorf("filter reported on %s, want cpu:0", st.Device)
				}
			}
			probe, err := exec.Command("ffprobe", "-v", "error", "-select_streams", "v",
				"-show_entries", "stream=width,height", "-of", "csv=p=0", out).Output()
			if err != nil || strings.TrimSpace(string(probe)) != "160,120" {
				t.Fatalf("ffprobe: %q %v", probe, err)
			}
		})
	}
}

// psnr compares two videos with FFmpeg's psnr filter (average, dB).
func psnr(t *testing.T, a, b string) float64 {
	t.Helper()
	out, err := exec.Command("ffmpeg", "-hide_banner", "-nostats", "-i", a, "-i", b, "-lavfi", "psnr", "-f", "null", "-").CombinedOutput()
	if err != nil {
		t.Fatalf("ffmpeg psnr: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`average:([0-9.]+|inf)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no PSNR in:\n%s", out)
	}
	if string(m[1]) == "inf" {
		return 1000
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

// TestCUDAFilterMatchesCPU (GPU machines only): the clip decoded on NVDEC
// with its frames left on the GPU (hw_format auto: the next stage is on
// the same GPU), scaled by scale_cuda in a filter stage
// that takes them as they are, and copied off by the encoder, against the
// CPU decoding and scaling it. Scalers differ, so the bar is 30 dB.
func TestCUDAFilterMatchesCPU(t *testing.T) {
	e2e.Long(t)
	inv := accelerators.Machine("")
	var gpu bool
	for _, d := range inv.Usable(accelerators.GPU) {
		gpu = gpu || strings.HasPrefix(d.ID, "cuda:")
	}
	if !gpu {
		t.Skipf("no usable CUDA GPU here: %s", inv.Why(accelerators.GPU))
	}
	clip := e2e.Media(t, "car-detection.mp4")
	raw := func(name, dec, filter string) ([]byte, string) {
		out := filepath.Join(t.TempDir(), name+".yuv")
		_, logs, err := pipelinetest.Run(t, &inv, name+".yaml", fmt.Sprintf(`name: %s
stages:
  - {name: src, kind: source, params: {url: %q}}
  - {name: dec, kind: decode, inputs: [src.video], %s}
  - {name: scale, kind: filter, inputs: [dec], %s}
  - {name: enc, kind: encode, inputs: [scale], params: {codec: rawvideo}}
  - {name: out, kind: sink, inputs: [enc], params: {path: %q, format: rawvideo}}
`, name, clip, dec, filter, out))
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, logs)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		return b, logs
	}
	g, logs := raw("gpu", "accelerator: gpu, strict: true", `accelerator: gpu, strict: true, params: {graph: "scale_cuda=384:216"}`)
	c, _ := raw("cpu", "", `params: {graph: "scale=384:216"}`)
	if !strings.Contains(logs, `input="already on the device"`) {
		t.Errorf("the filter did not take the decoder's GPU frames as they are:\n%s", logs)
	}
	const frame = 384 * 216 * 3 / 2
	t.Logf("GPU %d bytes (%d frames), CPU %d bytes (%d frames)", len(g), len(g)/frame, len(c), len(c)/frame)
	if len(g) != len(c) || len(c) == 0 {
		t.Fatalf("GPU output %d bytes, CPU %d", len(g), len(c))
	}
	p := codecs.PSNR(g, c)
	t.Logf("scale_cuda vs scale: PSNR %.1f dB", p)
	if p < 30 {
		t.Errorf("scale_cuda vs scale: PSNR %.1f dB, want >= 30", p)
	}
}
