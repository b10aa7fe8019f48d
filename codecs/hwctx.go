package codecs

/*
#cgo pkg-config: libavfilter
#include "hwctx.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/asticode/go-astiav"
)

// ErrDevice reports a codec context that could not be bound to a device.
var ErrDevice = errors.New("codecs: binding a codec to a hardware device failed")

// go-astiav v0.16 gives no C pointer for a codec, device, filter or
// filter graph context; each keeps it as its first field (checked by
// TestAstiavLayout). Its own SetHardwareDeviceContext is not used: its
// Free unreferences the *shared* device context's reference and clears
// it, so the second decoder bound to a device would crash.
func ccPtr(cc *astiav.CodecContext) *C.AVCodecContext {
	return *(**C.AVCodecContext)(unsafe.Pointer(cc))
}

func devRef(h *astiav.HardwareDeviceContext) *C.AVBufferRef {
	return *(**C.AVBufferRef)(unsafe.Pointer(h))
}

func filterPtr(fc *astiav.FilterContext) *C.AVFilterContext {
	return *(**C.AVFilterContext)(unsafe.Pointer(fc))
}

func graphPtr(g *astiav.FilterGraph) *C.AVFilterGraph {
	return *(**C.AVFilterGraph)(unsafe.Pointer(g))
}

// SetDevice attaches a device to a codec context with a reference of the
// context's own, released when the codec context is freed.
func SetDevice(cc *astiav.CodecContext, dev *astiav.HardwareDeviceContext) error {
	if ret := C.avf_cc_set_device(ccPtr(cc), devRef(dev)); ret < 0 {
		return fmt.Errorf("%w: %w", ErrDevice, astiav.Error(ret))
	}
	return nil
}

// SetDerivedDevice attaches a device of another type made from dev (a QSV
// session on a VA-API render node).
func SetDerivedDevice(cc *astiav.CodecContext, dev *astiav.HardwareDeviceContext, t astiav.HardwareDeviceType) error {
	if ret := C.avf_cc_set_derived_device(ccPtr(cc), devRef(dev), C.int(t)); ret < 0 {
		return fmt.Errorf("%w: deriving a %s device: %w", ErrDevice, t, astiav.Error(ret))
	}
	return nil
}

// OnDevice reports whether f is a frame in the memory of dev (it comes
// from a frame pool made on that very device context).
func OnDevice(f *astiav.Frame, dev *astiav.HardwareDeviceContext) bool {
	return dev != nil && C.avf_frame_on_device(cframe(f), devRef(dev)) != 0
}

// TakeDeviceFrames makes an encoder take frames like f, which live on a
// device, as they are: it shares f's frame pool and pixel formats.
func TakeDeviceFrames(cc *astiav.CodecContext, f *astiav.Frame) error {
	if ret := C.avf_cc_take_frames(ccPtr(cc), cframe(f)); ret < 0 {
		return fmt.Errorf("%w: sharing the decoder's frame pool: %w", ErrDevice, astiav.Error(ret))
	}
	return nil
}

// UploadPool gives an encoder a pool of w x h frames on dev, holding
// pictures in the software format sw, for Upload to fill.
func UploadPool(cc *astiav.CodecContext, dev *astiav.HardwareDeviceContext, sw astiav.PixelFormat, w, h int) error {
	if ret := C.avf_cc_frames_pool(ccPtr(cc), devRef(dev), C.int(sw), C.int(w), C.int(h), 16); ret < 0 {
		return fmt.Errorf("%w: a pool of %dx%d %s frames: %w", ErrDevice, w, h, sw.Name(), astiav.Error(ret))
	}
	return nil
}

// Upload copies a system-memory frame into a frame from cc's pool (dst
// must be empty), with its timing and properties.
func Upload(cc *astiav.CodecContext, dst, src *astiav.Frame) error {
	if ret := C.avf_cc_upload(ccPtr(cc), cframe(dst), cframe(src)); ret < 0 {
		dst.Unref()
		return fmt.Errorf("%w: uploading a %s frame: %w", ErrDevice, src.PixelFormat().Name(), astiav.Error(ret))
	}
	return nil
}

func avfCCWidth(cc *astiav.CodecContext) C.int { return C.avf_cc_width(ccPtr(cc)) }
