package filter

import (
	"slices"
	"testing"
)

func TestDeviceKinds(t *testing.T) {
	tests := []struct {
		graph string
		want  []string
	}{
		{"scale=1280:720", nil},
		{"scale_cuda=1280:720", []string{"cuda"}},
		{"hwupload_cuda,scale_npp=640:360", []string{"cuda"}},
		{"[in]scale_vaapi=w=1280:h=720[a];[a]transpose_vaapi=dir=clock", []string{"vaapi"}},
		{"fps=30, scale_vulkan=640:360 ,hflip_vulkan", []string{"vulkan"}},
		{"drawtext=text='a, scale_cuda':fontsize=20", nil},
		{"scale_cuda=640:360,hwdownload,format=nv12,scale_vulkan", []string{"cuda", "vulkan"}},
	}
	for _, tt := range tests {
		if got := deviceKinds(tt.graph); !slices.Equal(got, tt.want) {
			t.Errorf("deviceKinds(%q) = %v, want %v", tt.graph, got, tt.want)
		}
	}
}
