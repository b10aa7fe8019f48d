package encode

import (
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
	amd := accelerators.Device{Kind: accelerators.GPU, ID: "vaapi:/dev/dri/renderD128", Name: "render node renderD128 (amdgpu)", Caps: []string{"vaapi", "vaapi-encode"}}
	intel := accelerators.Device{Kind: accelerators.GPU, ID: "vaapi:/dev/dri/renderD129", Name: "render node renderD129 (i915)", Caps: []string{"vaapi", "vaapi-encode", "qsv"}}
	decodeOnly := accelerators.Device{Kind: accelerators.GPU, ID: "vaapi:/dev/dri/renderD130", Name: "render node renderD130", Caps: []string{"vaapi"}}
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
		{"libx264", amd, "h264_vaapi"},
		{"libx265", intel, "hevc_vaapi"},
		{"libvpx-vp9", amd, "vp9_vaapi"},
		{"libsvtav1", amd, "VA-API encoding cannot encode av1"},
		{"h264_qsv", intel, "h264_qsv"},
		{"h264_qsv", amd, "has no Quick Sync"},
		{"h264_vaapi", l4, "h264_vaapi runs on vaapi devices, not on cuda:1"},
		{"h264_nvenc", intel, "runs on cuda devices"},
		{"libx264", decodeOnly, "has no VA-API encoding"},
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

func TestHardwareOptions(t *testing.T) {
	tests := []struct {
		encoder  string
		in, want map[string]string
		dropped  []string
	}{
		{"h264_nvenc", map[string]string{"preset": "veryfast", "tune": "zerolatency", "crf": "23"},
			map[string]string{"preset": "p3", "tune": "ull", "cq": "23", "gpu": "1"}, nil},
		{"hevc_nvenc", map[string]string{"preset": "p5", "tune": "film", "x264-params": "keyint=60"},
			map[string]string{"preset": "p5", "gpu": "1"}, []string{"tune=film", "x264-params=keyint=60"}},
		{"h264_vaapi", map[string]string{"preset": "veryfast", "tune": "zerolatency", "crf": "23", "g": "60"},
			map[string]string{"qp": "23", "rc_mode": "CQP", "g": "60"}, []string{"preset=veryfast", "tune=zerolatency"}},
		{"h264_qsv", map[string]string{"preset": "ultrafast", "tune": "zerolatency", "crf": "25"},
			map[string]string{"preset": "veryfast", "look_ahead": "0", "global_quality": "25"}, nil},
		{"hevc_qsv", map[string]string{"tune": "film", "x265-params": "a=b"},
			map[string]string{}, []string{"tune=film", "x265-params=a=b"}},
		{"libx264", map[string]string{"preset": "veryfast", "crf": "23"},
			map[string]string{"preset": "veryfast", "crf": "23"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.encoder, func(t *testing.T) {
			opts := maps.Clone(tt.in)
			dropped := hardwareOptions(opts, tt.encoder, "cuda:1")
			if !maps.Equal(opts, tt.want) || !slices.Equal(dropped, tt.dropped) {
				t.Fatalf("got %v dropped %v, want %v dropped %v", opts, dropped, tt.want, tt.dropped)
			}
		})
	}
}
