package codecs

/*
#include "bridge.h"
*/
import "C"

import (
	"errors"
	"fmt"

	"github.com/asticode/go-astiav"
)

// ErrDownload reports a hardware frame that could not be copied to system memory.
var ErrDownload = errors.New("codecs: copying a hardware frame to system memory failed")

// planar maps the semi-planar formats that hardware decoders hand back to
// the planar formats software decoders give for the same streams, so stages
// after a GPU decoder see what they would see after a CPU one.
var planar = map[string]string{
	"nv12":   "yuv420p",
	"p010le": "yuv420p10le",
	"p016le": "yuv420p16le",
	"nv16":   "yuv422p",
	"nv24":   "yuv444p",
}

// Downloader copies hardware frames (CUDA, VA-API) to system memory. It
// reuses its staging frame and converter between calls; it is not safe for
// concurrent use.
type Downloader struct {
	// Native keeps the device's own layout (nv12, p010le) instead of
	// converting to the planar format a software decoder would give.
	Native bool
	tmp    *astiav.Frame
	sws    *astiav.SoftwareScaleContext
	key    [4]int // source w, h, format and destination format of sws
}

// NewDownloader returns a Downloader; Close frees it.
func NewDownloader(native bool) *Downloader {
	return &Downloader{Native: native, tmp: astiav.AllocFrame()}
}

// Download returns a new system-memory frame with src's picture and properties.
func (d *Downloader) Download(src *astiav.Frame) (*astiav.Frame, error) {
	d.tmp.Unref()
	if ret := C.avf_hw_download(cframe(d.tmp), cframe(src)); ret < 0 {
		return nil, fmt.Errorf("%w: %s frame: %w", ErrDownload, src.PixelFormat().Name(), astiav.Error(ret))
	}
	out := astiav.AllocFrame()
	name, ok := planar[d.tmp.PixelFormat().Name()]
	if d.Native || !ok {
		out.MoveRef(d.tmp)
		return out, nil
	}
	dst, err := PixelFormat(name)
	if err != nil {
		out.Free()
		return nil, err
	}
	w, h, sf := d.tmp.Width(), d.tmp.Height(), d.tmp.PixelFormat()
	if key := [4]int{w, h, int(sf), int(dst)}; d.sws == nil || key != d.key {
		if d.sws != nil {
			d.sws.Free()
		}
		if d.sws, err = astiav.CreateSoftwareScaleContext(w, h, sf, w, h, dst, astiav.SoftwareScaleContextFlags(astiav.SoftwareScaleContextFlagPoint)); err != nil {
			d.sws = nil
			out.Free()
			return nil, fmt.Errorf("%w: converter %s->%s: %w", ErrDownload, sf.Name(), name, err)
		}
		d.key = key
	}
	out.SetWidth(w)
	out.SetHeight(h)
	out.SetPixelFormat(dst)
	if err := d.sws.ScaleFrame(d.tmp, out); err != nil {
		out.Free()
		return nil, fmt.Errorf("%w: converting %s->%s: %w", ErrDownload, sf.Name(), name, err)
	}
	if ret := C.avf_frame_copy_props(cframe(out), cframe(d.tmp)); ret < 0 {
		out.Free()
		return nil, fmt.Errorf("%w: %w", ErrDownload, astiav.Error(ret))
	}
	return out, nil
}

// Close frees the staging frame and converter.
func (d *Downloader) Close() {
	if d.sws != nil {
		d.sws.Free()
		d.sws = nil
	}
	if d.tmp != nil {
		d.tmp.Free()
		d.tmp = nil
	}
}
