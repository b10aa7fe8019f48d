package codecs

/*
#include <libavutil/frame.h>
#include <libavutil/hwcontext.h>
#include <libavutil/pixdesc.h>

// avf_frames_pool identifies the device frame pool a frame comes from (NULL
// for a frame in system memory).
static const void *avf_frames_pool(const AVFrame *f) {
	return f->hw_frames_ctx ? (const void *)f->hw_frames_ctx->data : NULL;
}

// avf_frames_sw_format is the format of a device frame's pictures in
// system memory (its pool's sw_format), or the frame's own format.
static int avf_frames_sw_format(const AVFrame *f) {
	if (!f->hw_frames_ctx)
		return f->format;
	return ((const AVHWFramesContext *)f->hw_frames_ctx->data)->sw_format;
}

// avf_chroma_shift gives a pixel format's chroma subsampling (log2), or
// returns -1 for an unknown format.
static int avf_chroma_shift(int fmt, int *w, int *h) {
	const AVPixFmtDescriptor *d = av_pix_fmt_desc_get(fmt);
	if (!d)
		return -1;
	*w = d->log2_chroma_w;
	*h = d->log2_chroma_h;
	return 0;
}
*/
import "C"

import (
	"fmt"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/pipeline/envelope"
)

// FrameFormat is what a filter graph or an encoder is set up for: the
// size and pixel format of video frames (and the device pool they come
// from), or the sample format, rate and channel layout of audio frames.
// Two frames of the same stream with different FrameFormats mean the
// stream changed mid-way (a streamer switching scenes).
type FrameFormat struct {
	Media         envelope.Media
	Width, Height int
	PixelFormat   astiav.PixelFormat
	SampleFormat  astiav.SampleFormat
	SampleRate    int
	Layout        string // the channel layout, as FFmpeg names it ("stereo")
	pool          uintptr
}

// FormatOf returns f's format, as a stream of media carries it.
func FormatOf(f *astiav.Frame, media envelope.Media) FrameFormat {
	if media == envelope.MediaAudio {
		return FrameFormat{Media: media, SampleFormat: f.SampleFormat(), SampleRate: f.SampleRate(), Layout: f.ChannelLayout().String()}
	}
	return FrameFormat{Media: media, Width: f.Width(), Height: f.Height(), PixelFormat: f.PixelFormat(),
		pool: uintptr(C.avf_frames_pool(cframe(f)))}
}

// SameSize reports whether video frames of format o have the size and
// pixel format of those of ff (from whatever device pool).
func (ff FrameFormat) SameSize(o FrameFormat) bool {
	return ff.Width == o.Width && ff.Height == o.Height && ff.PixelFormat == o.PixelFormat
}

func (ff FrameFormat) String() string {
	if ff.Media == envelope.MediaAudio {
		return fmt.Sprintf("%d Hz %s %s", ff.SampleRate, ff.SampleFormat.Name(), ff.Layout)
	}
	return fmt.Sprintf("%dx%d %s", ff.Width, ff.Height, ff.PixelFormat.Name())
}

// SoftwareFormat is the pixel format of f's picture in system memory: for
// a frame on a device, its pool's (nv12 for most decoders); else f's own.
func SoftwareFormat(f *astiav.Frame) astiav.PixelFormat {
	return astiav.PixelFormat(C.avf_frames_sw_format(cframe(f)))
}

// ChromaShift is a pixel format's chroma subsampling as powers of two:
// 1, 1 for 4:2:0 (chroma at half the width and height), 1, 0 for 4:2:2,
// 0, 0 for 4:4:4 and formats without chroma; ok is false for an unknown
// format.
func ChromaShift(pf astiav.PixelFormat) (w, h int, ok bool) {
	var cw, ch C.int
	if C.avf_chroma_shift(C.int(pf), &cw, &ch) < 0 {
		return 0, 0, false
	}
	return int(cw), int(ch), true
}
