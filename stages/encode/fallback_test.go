package encode_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/accelerators"
	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/pipelinetest"
	_ "github.com/avflow/avflow/stages/all"
)

// encodeOn runs one second of test video through an encode stage bound to
// the GPU of a made-up inventory (enc is the rest of the stage's line) into out.
func encodeOn(t *testing.T, inv accelerators.Inventory, enc, out string) (*pipeline.Runner, string, error) {
	t.Helper()
	return pipelinetest.Run(t, &inv, "gpuenc.yaml", fmt.Sprintf(`name: gpuenc
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2=size=320x240:rate=25:duration=1"}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: enc, kind: encode, inputs: [dec], accelerator: gpu, %s}
  - {name: out, kind: sink, inputs: [enc], params: {path: %q}}
`, enc, out))
}

// TestHardwareEncoderThatWillNotOpenFallsBack: a GPU that claims a
// hardware encoder that does not open (here: no NVIDIA driver, no render
// node at all) leaves the stage encoding with the software encoder, with
// a warning; the file is good and the metrics say cpu:0 from then on.
// With strict it fails naming the encoder, and leaves no output file.
func TestHardwareEncoderThatWillNotOpenFallsBack(t *testing.T) {
	if astiav.FindEncoderByName("libx264") == nil {
		t.Skip("needs FFmpeg with libx264")
	}
	tests := []struct {
		encoder string
		gpu     accelerators.Device
		absent  string // the device file whose absence makes it fail
	}{
		{"h264_nvenc", accelerators.Device{Kind: accelerators.GPU, ID: "cuda:0", Name: "NVIDIA L4 (pretend)", Caps: []string{"nvenc"}, Usable: true}, "/dev/nvidia0"},
		{"h264_vaapi", accelerators.Device{Kind: accelerators.GPU, ID: "vaapi:/dev/dri/renderD128", Name: "render node renderD128 (pretend)", Caps: []string{"vaapi", "vaapi-encode"}, Usable: true}, "/dev/dri/renderD128"},
	}
	for _, tt := range tests {
		if astiav.FindEncoderByName(tt.encoder) == nil {
			t.Logf("this FFmpeg has no %s", tt.encoder)
			continue
		}
		if _, err := os.Stat(tt.absent); err == nil {
			t.Logf("this machine has %s: %s may open", tt.absent, tt.encoder)
			continue
		}
		inv := accelerators.Inventory{Devices: []accelerators.Device{{Kind: accelerators.CPU, ID: "cpu:0", Usable: true}, tt.gpu}}
		for _, strict := range []bool{false, true} {
			t.Run(fmt.Sprint(tt.encoder, "/strict=", strict), func(t *testing.T) {
				out := filepath.Join(t.TempDir(), "out.mp4")
				r, logs, err := encodeOn(t, inv, fmt.Sprintf("strict: %t, params: {codec: libx264, preset: veryfast, crf: 23}", strict), out)
				if strict {
					if err == nil || !strings.Contains(err.Error(), tt.encoder) {
						t.Fatalf("strict: want an error naming %s, got %v", tt.encoder, err)
					}
					if _, serr := os.Stat(out); serr == nil {
						t.Fatal("strict failure left an output file")
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(logs, "hardware encoder did not open") || !strings.Contains(logs, "encoder=libx264") {
					t.Errorf("no fallback warning:\n%s", logs)
				}
				for _, st := range r.Metrics().Snapshot() {
					if st.Name == "enc" && st.Device != "cpu:0" {
						t.Errorf("enc reported on %s after falling back, want cpu:0", st.Device)
					}
				}
				probe, err := exec.Command("ffprobe", "-v", "error", "-select_streams", "v", "-count_frames",
					"-show_entries", "stream=codec_name,nb_read_frames", "-of", "csv=p=0", out).Output()
				if err != nil || strings.TrimSpace(string(probe)) != "h264,25" {
					t.Fatalf("ffprobe: %q %v", probe, err)
				}
			})
		}
	}
}

// TestEncodeOnGPUWithoutNVENC: an H100-like GPU (usable, no NVENC) is
// passed over at binding: the stage runs on the CPU, says why, and the
// metrics carry cpu:0.
func TestEncodeOnGPUWithoutNVENC(t *testing.T) {
	inv := accelerators.Inventory{Devices: []accelerators.Device{
		{Kind: accelerators.CPU, ID: "cpu:0", Usable: true},
		{Kind: accelerators.GPU, ID: "cuda:0", Name: "NVIDIA H100 80GB HBM3 (pretend)", Caps: []string{"nvdec", "cuda"}, Usable: true},
	}}
	r, logs, err := encodeOn(t, inv, "params: {codec: libx264, preset: ultrafast}", filepath.Join(t.TempDir(), "out.mkv"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs, "accelerator fallback") || !strings.Contains(logs, "has no NVENC") {
		t.Errorf("no fallback warning naming NVENC:\n%s", logs)
	}
	for _, st := range r.Metrics().Snapshot() {
		if st.Name == "enc" && st.Device != "cpu:0" {
			t.Errorf("enc reported on %s, want cpu:0", st.Device)
		}
	}
}

// TestNamedVAAPIEncoderNeedsARenderNode: h264_vaapi named in the file
// cannot run on the CPU; with no render node the stage fails at start
// with the fix in the message (nothing is written).
func TestNamedVAAPIEncoderNeedsARenderNode(t *testing.T) {
	if astiav.FindEncoderByName("h264_vaapi") == nil {
		t.Skip("this FFmpeg has no h264_vaapi")
	}
	inv := accelerators.Inventory{Devices: []accelerators.Device{{Kind: accelerators.CPU, ID: "cpu:0", Usable: true}}}
	out := filepath.Join(t.TempDir(), "out.mp4")
	_, _, err := encodeOn(t, inv, "params: {codec: h264_vaapi}", out)
	if err == nil || !strings.Contains(err.Error(), "h264_vaapi encodes on a VA-API render node") || !strings.Contains(err.Error(), "accelerator: gpu") {
		t.Fatalf("want an error saying h264_vaapi needs a render node, got %v", err)
	}
	if _, serr := os.Stat(out); serr == nil {
		t.Fatal("a failed start left an output file")
	}
}
