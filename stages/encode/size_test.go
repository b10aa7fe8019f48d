package encode

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
)

// black is a black w x h frame in pf.
func black(t *testing.T, w, h int, pf astiav.PixelFormat) *stage.Msg {
	t.Helper()
	f := astiav.AllocFrame()
	f.SetWidth(w)
	f.SetHeight(h)
	f.SetPixelFormat(pf)
	if err := f.AllocBuffer(0); err != nil {
		f.Free()
		t.Fatal(err)
	}
	if err := f.ImageFillBlack(); err != nil {
		f.Free()
		t.Fatal(err)
	}
	e := codecs.FrameMsg(f, envelope.MediaVideo, astiav.NewRational(1, 25), astiav.NewRational(25, 1))
	t.Cleanup(e.Release)
	return e
}

// TestPictureSizeAgainstChroma: a picture whose size does not fit its
// chroma subsampling (641x481 in 4:2:0) fails at open naming the cause and
// the filter that fixes it, for the encoders that refuse it (checked
// before they open, or added to the error they fail with); encoders
// that take it (libvpx-vp9), and sizes that fit, encode.
func TestPictureSizeAgainstChroma(t *testing.T) {
	tests := []struct {
		codec, pixfmt string
		w, h          int
		want          string // "" : it encodes
	}{
		{"libx264", "yuv420p", 641, 481, `libx264 cannot encode 641x481 yuv420p: its chroma is subsampled (4:2:0), so the width must be a multiple of 2 and the height of 2; scale to such a size first, e.g. a filter stage before the encoder with graph: "scale=trunc(iw/2)*2:trunc(ih/2)*2"`},
		{"libx264", "yuv420p", 640, 481, "640x481 yuv420p"},
		{"libx264", "yuv422p", 641, 480, `(4:2:2), so the width must be a multiple of 2 and the height of 1; scale to such a size first, e.g. a filter stage before the encoder with graph: "scale=trunc(iw/2)*2:ih"`},
		{"libx264", "yuv422p", 640, 481, ""},
		{"libx264", "yuv444p", 641, 481, ""},
		{"libx265", "yuv420p", 641, 481, "libx265 cannot encode 641x481 yuv420p"},
		{"libsvtav1", "yuv420p", 641, 481, "libsvtav1 cannot encode 641x481 yuv420p"},
		{"libvpx-vp9", "yuv420p", 641, 481, ""},
		// Not checked ahead: its failure to open gets the cause added.
		{"libxvid", "yuv420p", 641, 481, "libxvid cannot encode 641x481 yuv420p"},
		{"libxvid", "yuv420p", 640, 480, ""},
	}
	for _, tt := range tests {
		t.Run(tt.codec+"/"+tt.pixfmt, func(t *testing.T) {
			if astiav.FindEncoderByName(tt.codec) == nil {
				t.Skipf("this FFmpeg has no %s", tt.codec)
			}
			pf, err := codecs.PixelFormat(tt.pixfmt)
			if err != nil {
				t.Fatal(err)
			}
			enc, _ := newEncoder(t, pipeline.Params{"codec": tt.codec, "pixel_format": tt.pixfmt, "preset": presets[tt.codec]}, false)
			_, err = enc.Process(context.Background(), stage.Batch{black(t, tt.w, tt.h, pf)})
			if tt.want == "" {
				if err != nil {
					t.Fatalf("%dx%d %s: %v", tt.w, tt.h, tt.pixfmt, err)
				}
				return
			}
			if !errors.Is(err, ErrChromaSize) || !errors.Is(err, ErrOpen) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v\nwant an ErrChromaSize containing %s", err, tt.want)
			}
		})
	}
}

// presets keep the encoders quick.
var presets = map[string]string{"libx264": "ultrafast", "libx265": "ultrafast", "libsvtav1": "12"}
