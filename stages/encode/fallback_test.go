package encode_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/accelerators"
	"github.com/avflow/avflow/pipeline"
	_ "github.com/avflow/avflow/stages/all"
)

// encodeOn runs one second of test video through an encode stage bound to
// the GPU of a made-up inventory (enc is the rest of the stage's line) into out.
func encodeOn(t *testing.T, inv accelerators.Inventory, enc, out string) (*pipeline.Runner, *bytes.Buffer, error) {
	t.Helper()
	cfg, err := pipeline.Parse(fmt.Appendf(nil, `name: gpuenc
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2=size=320x240:rate=25:duration=1"}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: enc, kind: encode, inputs: [dec], accelerator: gpu, %s}
  - {name: out, kind: sink, inputs: [enc], params: {path: %q}}
`, enc, out), "gpuenc.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := pipeline.Default.Validate(cfg); err != nil {
		t.Fatal(err)
	}
	logs := &bytes.Buffer{}
	r, err := pipeline.NewRunner(pipeline.Default, cfg, pipeline.Options{Devices: &inv, Transport: "local",
		Log: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return r, logs, r.Run(context.Background())
}

// TestNVENCThatWillNotOpenFallsBack: a GPU that claims NVENC but whose
// encoder does not open (here: no NVIDIA driver at all) leaves the stage
// encoding with the software encoder, with a warning, and the file is good.
// With strict it fails naming the encoder.
func TestNVENCThatWillNotOpenFallsBack(t *testing.T) {
	if astiav.FindEncoderByName("h264_nvenc") == nil || astiav.FindEncoderByName("libx264") == nil {
		t.Skip("needs FFmpeg with h264_nvenc and libx264")
	}
	if _, err := os.Stat("/dev/nvidia0"); err == nil {
		t.Skip("this machine has an NVIDIA GPU: NVENC may open")
	}
	inv := accelerators.Inventory{Devices: []accelerators.Device{
		{Kind: accelerators.CPU, ID: "cpu:0", Usable: true},
		{Kind: accelerators.GPU, ID: "cuda:0", Name: "NVIDIA L4 (pretend)", Caps: []string{"nvenc"}, Usable: true},
	}}
	for _, strict := range []bool{false, true} {
		t.Run(fmt.Sprint("strict=", strict), func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out.mp4")
			_, logs, err := encodeOn(t, inv, fmt.Sprintf("strict: %t, params: {codec: libx264, preset: veryfast, crf: 23}", strict), out)
			if strict {
				if err == nil || !strings.Contains(err.Error(), "h264_nvenc") {
					t.Fatalf("strict: want an error naming h264_nvenc, got %v", err)
				}
				if _, serr := os.Stat(out); serr == nil {
					t.Fatal("strict failure left an output file")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(logs.String(), "hardware encoder did not open") || !strings.Contains(logs.String(), "encoder=libx264") {
				t.Errorf("no fallback warning:\n%s", logs.String())
			}
			probe, err := exec.Command("ffprobe", "-v", "error", "-select_streams", "v", "-count_frames",
				"-show_entries", "stream=codec_name,nb_read_frames", "-of", "csv=p=0", out).Output()
			if err != nil || strings.TrimSpace(string(probe)) != "h264,25" {
				t.Fatalf("ffprobe: %q %v", probe, err)
			}
		})
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
	if !strings.Contains(logs.String(), "accelerator fallback") || !strings.Contains(logs.String(), "has no NVENC") {
		t.Errorf("no fallback warning naming NVENC:\n%s", logs.String())
	}
	for _, st := range r.Metrics().Snapshot() {
		if st.Name == "enc" && st.Device != "cpu:0" {
			t.Errorf("enc reported on %s, want cpu:0", st.Device)
		}
	}
}
