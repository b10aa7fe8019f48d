package encode

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/accelerators"
)

func TestHardwareEncoder(t *testing.T) {
	l4 := accelerators.Device{Kind: accelerators.GPU, ID: "cuda:1", Name: "NVIDIA L4", Caps: []string{"nvdec", "cuda", "nvenc"}}
	h100 := accelerators.Device{Kind: accelerators.GPU, ID: "cuda:0", Name: "NVIDIA H100 80GB HBM3", Caps: []string{"nvdec", "cuda"}}
	vaapi := accelerators.Device{Kind: accelerators.GPU, ID: "vaapi:/dev/dri/renderD128", Caps: []string{"vaapi"}}
	tests := []struct {
		codec string
		dev   accelerators.Device
		want  string // encoder name, or a fragment of why not
	}{
		{"libx264", l4, "h264_nvenc"},
		{"libx265", l4, "hevc_nvenc"},
		{"h264_nvenc", l4, "h264_nvenc"},
		{"libvpx-vp9", l4, "NVENC cannot encode vp9"},
		{"libx264", h100, "has no NVENC"},
		{"libx264", vaapi, "not built yet"},
	}
	for _, tt := range tests {
		t.Run(tt.codec+"@"+tt.dev.ID, func(t *testing.T) {
			sw := astiav.FindEncoderByName(tt.codec)
			if sw == nil {
				t.Skipf("this FFmpeg has no %s", tt.codec)
			}
			hw, why := hardwareEncoder(sw, tt.dev)
			got := why
			if hw != nil {
				got = hw.Name()
			}
			if !strings.Contains(got, tt.want) {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestNVENCOptions(t *testing.T) {
	tests := []struct {
		in, want map[string]string
		dropped  []string
	}{
		{map[string]string{"preset": "veryfast", "tune": "zerolatency", "crf": "23"},
			map[string]string{"preset": "p3", "tune": "ull", "cq": "23", "gpu": "1"}, nil},
		{map[string]string{"preset": "p5", "tune": "film", "x264-params": "keyint=60"},
			map[string]string{"preset": "p5", "gpu": "1"}, []string{"tune=film", "x264-params=keyint=60"}},
	}
	for i, tt := range tests {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			opts := maps.Clone(tt.in)
			dropped := nvencOptions(opts, "cuda:1")
			if !maps.Equal(opts, tt.want) || !slices.Equal(dropped, tt.dropped) {
				t.Fatalf("got %v dropped %v, want %v dropped %v", opts, dropped, tt.want, tt.dropped)
			}
		})
	}
}
