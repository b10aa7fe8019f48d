package codecs

/*
#include "bridge.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"sync"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/pipeline/stage"
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

// hostDownloaders keeps a few Downloaders for ToHost, so stages taking
// GPU frames do not build a converter for every frame. (Not a sync.Pool:
// a Downloader holds C memory that must be freed, not dropped.)
var hostDownloaders downloaderList

type downloaderList struct {
	mu   sync.Mutex
	free []*Downloader
}

func (l *downloaderList) get() *Downloader {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := len(l.free); n > 0 {
		d := l.free[n-1]
		l.free = l.free[:n-1]
		return d
	}
	return NewDownloader(false)
}

func (l *downloaderList) put(d *Downloader) {
	l.mu.Lock()
	if len(l.free) < 4 {
		l.free = append(l.free, d)
		l.mu.Unlock()
		return
	}
	l.mu.Unlock()
	d.Close()
}

// ToHost replaces a frame in device memory by a system-memory copy, in the
// planar format a CPU decoder would give, and updates e's video format
// (stage.Hoster). Frames already in system memory are left alone. Stages
// that run on the CPU get their frames through FrameOf, which calls it, so
// a GPU decoder may hand device frames to any stage.
func (f *Frame) ToHost(e *stage.Msg) error {
	if f.F == nil || !IsHardwarePixelFormat(f.F.PixelFormat()) {
		return nil
	}
	d := hostDownloaders.get()
	sw, err := d.Download(f.F)
	hostDownloaders.put(d)
	if err != nil {
		return err
	}
	f.F.Free()
	f.F = sw
	if e != nil && e.Video != nil {
		e.Video = videoFormat(sw, e.Video.FrameRate)
	}
	return nil
}

// FrameOn returns the message's frame the way a stage bound to dev takes
// it: a frame in dev's memory as it is, anything else in system memory
// (copied off its device if need be). dev nil: always system memory.
func FrameOn(e *stage.Msg, dev *astiav.HardwareDeviceContext) (*astiav.Frame, error) {
	if dev == nil {
		return FrameOf(e)
	}
	f, err := DeviceFrameOf(e)
	if err != nil || !IsHardwarePixelFormat(f.PixelFormat()) || OnDevice(f, dev) {
		return f, err
	}
	return FrameOf(e)
}

// DeviceFrameOf returns the message's in-process frame as it is, in
// device memory if it is a GPU frame, for stages that take those (an NVENC
// encoder on the same GPU); anything else goes through FrameOf.
func DeviceFrameOf(e *stage.Msg) (*astiav.Frame, error) {
	if l, ok := e.Local.(*Frame); ok {
		return l.F, nil
	}
	return FrameOf(e)
}
