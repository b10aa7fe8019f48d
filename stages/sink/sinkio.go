package sink

/*
#cgo pkg-config: libavformat libavutil
#include <stdlib.h>
#include "sinkio.h"
*/
import "C"

import (
	"errors"
	"syscall"
	"unsafe"

	"github.com/asticode/go-astiav"
)

// go-astiav v0.16 gives no C pointer for a format context or a dictionary;
// each keeps it as its first field (checked by TestAstiavLayout).
func fcPtr(fc *astiav.FormatContext) *C.AVFormatContext {
	return *(**C.AVFormatContext)(unsafe.Pointer(fc))
}

func dictPtr(d *astiav.Dictionary) **C.AVDictionary {
	return (**C.AVDictionary)(unsafe.Pointer(d))
}

// ffError is FFmpeg's error code as a Go error: a system error (no space
// left on device, connection refused, ...) as its syscall.Errno, so that
// errors.Is finds it; anything else as FFmpeg names it.
func ffError(code int) error {
	if code < 0 && code > -4096 {
		return syscall.Errno(-code)
	}
	return astiav.Error(code)
}

// muxIO routes a muxer's file and network I/O through sinkio.c: local
// files are opened without following links and every write and close is
// checked; network URLs get the run's interrupt callback and default
// timeouts. The first failure is kept, with the file or URL it hit.
type muxIO struct{ c *C.AvfSinkIO }

func newMuxIO() (*muxIO, error) {
	c := C.avf_sink_io_new()
	if c == nil {
		return nil, errors.New("sink: allocating I/O state failed")
	}
	return &muxIO{c: c}, nil
}

func (m *muxIO) free() {
	if m != nil && m.c != nil {
		C.avf_sink_io_free(m.c)
		m.c = nil
	}
}

// install makes fc (and the muxers it nests) do its I/O through m.
func (m *muxIO) install(fc *astiav.FormatContext) { C.avf_sink_install(fcPtr(fc), m.c) }

// setNetOption sets a protocol option every network open gets.
func (m *muxIO) setNetOption(key, value string) error {
	k, v := C.CString(key), C.CString(value)
	defer C.free(unsafe.Pointer(k))
	defer C.free(unsafe.Pointer(v))
	if ret := C.avf_sink_io_set_net_opt(m.c, k, v); ret < 0 {
		return ffError(int(ret))
	}
	return nil
}

// ioError is the first I/O failure: what was done, on which file or URL
// (as given to FFmpeg: the caller redacts it), and the cause.
type ioError struct {
	Op, URL string
	Err     error
}

func (e *ioError) Error() string { return e.Op + " " + e.URL + ": " + e.Err.Error() }
func (e *ioError) Unwrap() error { return e.Err }

// failure returns the first I/O failure, or nil.
func (m *muxIO) failure() *ioError {
	if m == nil || m.c == nil || m.c.err == 0 {
		return nil
	}
	return &ioError{Op: C.GoString(&m.c.err_op[0]), URL: C.GoString(&m.c.err_url[0]), Err: ffError(int(m.c.err))}
}

// setURL changes the name fc knows its output by (the MP4 muxer reopens
// it by that name to move the index to the front).
func setURL(fc *astiav.FormatContext, url string) error {
	u := C.CString(url)
	defer C.free(unsafe.Pointer(u))
	if ret := C.avf_sink_set_url(fcPtr(fc), u); ret < 0 {
		return ffError(int(ret))
	}
	return nil
}

// openFD gives fc a main output writing to fd, which fc then owns (even
// when this fails).
func openFD(fc *astiav.FormatContext, fd int, path string) error {
	p := C.CString(path)
	defer C.free(unsafe.Pointer(p))
	if ret := C.avf_sink_open_fd(fcPtr(fc), C.int(fd), p); ret < 0 {
		return ffError(int(ret))
	}
	return nil
}

// openURL opens fc's main output on a URL; the protocol takes the options
// of d it knows and leaves the others in d.
func openURL(fc *astiav.FormatContext, url string, d *astiav.Dictionary) error {
	u := C.CString(url)
	defer C.free(unsafe.Pointer(u))
	if ret := C.avf_sink_open_url(fcPtr(fc), u, dictPtr(d)); ret < 0 {
		return ffError(int(ret))
	}
	return nil
}

// closePB closes fc's main output, if it has one open.
func closePB(fc *astiav.FormatContext) error {
	if ret := C.avf_sink_close_pb(fcPtr(fc)); ret < 0 {
		return ffError(int(ret))
	}
	return nil
}

func hasPB(fc *astiav.FormatContext) bool { return C.avf_sink_has_pb(fcPtr(fc)) != 0 }

func dictCount(d *astiav.Dictionary) int { return int(C.avf_dict_count(*dictPtr(d))) }
