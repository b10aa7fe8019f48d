// Package codecs moves FFmpeg packets and frames (go-astiav) in and out of
// avflow envelopes, and translates codec parameters both ways.
package codecs

/*
#cgo pkg-config: libavutil libavcodec
#include "bridge.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/pipeline/envelope"
)

// Sentinel errors.
var (
	ErrFormat       = errors.New("codecs: unknown or unsupported format")
	ErrPayload      = errors.New("codecs: payload does not match its format")
	ErrNoMedia      = errors.New("codecs: envelope carries no media")
	ErrUnknownCodec = errors.New("codecs: unknown codec")
)

func cframe(f *astiav.Frame) *C.AVFrame { return (*C.AVFrame)(f.UnsafePointer()) }

// CodecID returns FFmpeg's id for a codec name such as "h264".
func CodecID(name string) (astiav.CodecID, error) {
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	id := C.avf_codec_id(cs)
	if id < 0 {
		return 0, fmt.Errorf("%w %q", ErrUnknownCodec, name)
	}
	return astiav.CodecID(id), nil
}

// PixelFormat returns the pixel format of a name such as "yuv420p".
func PixelFormat(name string) (astiav.PixelFormat, error) {
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	v := C.avf_pix_fmt(cs)
	if v < 0 {
		return 0, fmt.Errorf("%w: pixel format %q", ErrFormat, name)
	}
	return astiav.PixelFormat(v), nil
}

// SampleFormat returns the sample format of a name such as "fltp".
func SampleFormat(name string) (astiav.SampleFormat, error) {
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	v := C.avf_sample_fmt(cs)
	if v < 0 {
		return 0, fmt.Errorf("%w: sample format %q", ErrFormat, name)
	}
	return astiav.SampleFormat(v), nil
}

// IsHardwarePixelFormat reports whether frames of this format live on a device.
func IsHardwarePixelFormat(f astiav.PixelFormat) bool { return C.avf_pix_fmt_hw(C.int(f)) != 0 }

// Rat converts to the envelope's rational.
func Rat(r astiav.Rational) envelope.Rational {
	return envelope.Rational{Num: int32(r.Num()), Den: int32(r.Den())}
}

// AVRat converts from the envelope's rational.
func AVRat(r envelope.Rational) astiav.Rational { return astiav.NewRational(int(r.Num), int(r.Den)) }

// channelMask reads the native channel mask of a layout (0 for other orders).
func channelMask(l astiav.ChannelLayout) uint64 {
	f := astiav.AllocFrame()
	defer f.Free()
	f.SetChannelLayout(l)
	return uint64(C.avf_layout_mask(cframe(f)))
}

// ChannelLayout builds a layout from a mask, or the default layout for n channels.
// The returned layout belongs to the given scratch frame; copy it before freeing.
func setLayout(f *astiav.Frame, mask uint64, n int) error {
	if ret := C.avf_set_layout(cframe(f), C.uint64_t(mask), C.int(n)); ret < 0 {
		return fmt.Errorf("%w: channel layout mask %#x, %d channels: %w", ErrFormat, mask, n, astiav.Error(ret))
	}
	return nil
}

// Depth returns the bits per component of a pixel format (8 for yuv420p,
// 10 for yuv420p10le), or 0 for an unknown one.
func Depth(f astiav.PixelFormat) int { return int(C.avf_pix_fmt_depth(C.int(f))) }
