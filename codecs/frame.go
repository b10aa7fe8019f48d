package codecs

/*
#include "bridge.h"
*/
import "C"

import (
	"fmt"
	"unsafe"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
)

// Frame is an FFmpeg frame travelling with a message (stage.Msg.Local) inside one process.
type Frame struct{ F *astiav.Frame }

// Clone returns a new reference to the same buffers.
func (f *Frame) Clone() (stage.Local, error) {
	c := f.F.Clone()
	if c == nil {
		return nil, fmt.Errorf("codecs: cloning frame failed")
	}
	return &Frame{F: c}, nil
}

// Free releases the reference.
func (f *Frame) Free() { f.F.Free() }

// FrameMsg wraps a frame in a message, taking ownership of f.
// tb is the frame's time base; frameRate may be zero for audio.
func FrameMsg(f *astiav.Frame, media envelope.Media, tb, frameRate astiav.Rational) *stage.Msg {
	e := stage.New(envelope.Envelope{
		Kind: envelope.KindFrame, Media: media, PTS: f.Pts(), DTS: f.Pts(),
		TimeBase: Rat(tb), Key: f.KeyFrame(),
	}, &Frame{F: f})
	if media == envelope.MediaVideo {
		e.Video = videoFormat(f, Rat(frameRate))
	} else {
		l := f.ChannelLayout()
		e.Audio = &envelope.AudioFormat{SampleFmt: f.SampleFormat().Name(), SampleRate: int32(f.SampleRate()),
			Channels: int32(l.NbChannels()), ChannelMask: channelMask(l), Samples: int32(f.NbSamples())}
		if f.SampleRate() > 0 {
			e.Duration = astiav.RescaleQ(int64(f.NbSamples()), astiav.NewRational(1, f.SampleRate()), tb)
		}
	}
	return e
}

// videoFormat describes a video frame for the envelope header.
func videoFormat(f *astiav.Frame, frameRate envelope.Rational) *envelope.VideoFormat {
	var ls [4]C.int
	C.avf_linesizes(C.int(f.PixelFormat()), C.int(f.Width()), &ls[0])
	strides := []int32{}
	for _, l := range ls {
		if l > 0 {
			strides = append(strides, int32(l))
		}
	}
	return &envelope.VideoFormat{PixFmt: f.PixelFormat().Name(), Width: int32(f.Width()), Height: int32(f.Height()),
		Strides: strides, SAR: Rat(f.SampleAspectRatio()), FrameRate: frameRate}
}

// FrameOf returns the message's frame in system memory: the in-process
// one (a GPU frame is copied off the device first, see ToHost), or one
// rebuilt from the payload (then kept as e.Local, so releasing e frees it).
// The frame belongs to the message.
func FrameOf(e *stage.Msg) (*astiav.Frame, error) {
	if l, ok := e.Local.(*Frame); ok {
		if err := l.ToHost(e); err != nil {
			return nil, err
		}
		return l.F, nil
	}
	if e.Kind != envelope.KindFrame {
		return nil, fmt.Errorf("%w: got a %s, want a frame", ErrNoMedia, e.Kind)
	}
	f := astiav.AllocFrame()
	video := 0
	switch {
	case e.Video != nil:
		video = 1
		pf, err := PixelFormat(e.Video.PixFmt)
		if err != nil {
			f.Free()
			return nil, err
		}
		f.SetPixelFormat(pf)
		f.SetWidth(int(e.Video.Width))
		f.SetHeight(int(e.Video.Height))
		f.SetSampleAspectRatio(AVRat(e.Video.SAR))
	case e.Audio != nil:
		sf, err := SampleFormat(e.Audio.SampleFmt)
		if err != nil {
			f.Free()
			return nil, err
		}
		f.SetSampleFormat(sf)
		f.SetSampleRate(int(e.Audio.SampleRate))
		f.SetNbSamples(int(e.Audio.Samples))
		if err := setLayout(f, e.Audio.ChannelMask, int(e.Audio.Channels)); err != nil {
			f.Free()
			return nil, err
		}
	default:
		f.Free()
		return nil, ErrNoMedia
	}
	var src *C.uint8_t
	if len(e.Payload) > 0 {
		src = (*C.uint8_t)(unsafe.Pointer(&e.Payload[0]))
	}
	if ret := C.avf_frame_from_buffer(cframe(f), C.int(video), src, C.int(len(e.Payload))); ret < 0 {
		f.Free()
		return nil, fmt.Errorf("%w: %d bytes: %w", ErrPayload, len(e.Payload), astiav.Error(ret))
	}
	f.SetPts(e.PTS)
	f.SetKeyFrame(e.Key)
	e.Payload = nil
	e.Local = &Frame{F: f}
	return f, nil
}

// Plane returns plane i of a software frame in place (no copy): rows lines
// of stride bytes. It is valid until the frame is freed or unreferenced.
// rows is the plane's height (the frame's height for luma, less for
// subsampled chroma).
func Plane(f *astiav.Frame, i, rows int) (data []byte, stride int) {
	cf := cframe(f)
	if i < 0 || i >= 4 || cf.data[i] == nil || cf.linesize[i] <= 0 || rows <= 0 {
		return nil, 0
	}
	stride = int(cf.linesize[i])
	return unsafe.Slice((*byte)(unsafe.Pointer(cf.data[i])), stride*rows), stride
}

func (f *Frame) video() C.int {
	if f.F.Width() > 0 && f.F.Height() > 0 {
		return 1
	}
	return 0
}

// PayloadSize is the size of the tightly packed planes.
func (f *Frame) PayloadSize() (int, error) {
	size := C.avf_frame_size(cframe(f.F), f.video())
	if size < 0 {
		return 0, fmt.Errorf("%w: %w", ErrFormat, astiav.Error(size))
	}
	return int(size), nil
}

// WritePayload copies the planes into dst.
func (f *Frame) WritePayload(dst []byte) error {
	if len(dst) == 0 {
		return nil
	}
	if n := C.avf_frame_to_buffer(cframe(f.F), f.video(), (*C.uint8_t)(unsafe.Pointer(&dst[0])), C.int(len(dst))); n < 0 {
		return fmt.Errorf("%w: copying frame failed: %w", ErrFormat, astiav.Error(n))
	}
	return nil
}

// MakeWritable makes sure f's buffers are its own (copying them if another
// reference shares them), so a stage may draw on it.
func MakeWritable(f *astiav.Frame) error {
	if ret := C.avf_make_writable(cframe(f)); ret < 0 {
		return fmt.Errorf("codecs: making frame writable failed: %w", astiav.Error(ret))
	}
	return nil
}

// YUVPlanes returns the three planes of a planar YUV 4:2:0 frame (yuv420p,
// yuvj420p) with their strides and the chroma subsampling shift, or
// ErrFormat for other formats.
func YUVPlanes(f *astiav.Frame) (planes [3][]byte, strides [3]int, err error) {
	switch f.PixelFormat() {
	case astiav.PixelFormatYuv420P, astiav.PixelFormatYuvj420P:
	default:
		return planes, strides, fmt.Errorf("%w: %s (want yuv420p: add a filter stage with format=yuv420p)", ErrFormat, f.PixelFormat().Name())
	}
	h := f.Height()
	planes[0], strides[0] = Plane(f, 0, h)
	planes[1], strides[1] = Plane(f, 1, (h+1)/2)
	planes[2], strides[2] = Plane(f, 2, (h+1)/2)
	return planes, strides, nil
}
