package codecs

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
)

// videoFrame is a w x h yuv420p frame: luma 235 on the left half, 16 on
// the right, grey chroma.
func videoFrame(t *testing.T, w, h int, pts int64) *astiav.Frame {
	t.Helper()
	f := astiav.AllocFrame()
	t.Cleanup(f.Free)
	f.SetWidth(w)
	f.SetHeight(h)
	f.SetPixelFormat(astiav.PixelFormatYuv420P)
	f.SetPts(pts)
	if err := f.AllocBuffer(0); err != nil {
		t.Fatal(err)
	}
	planes, strides, err := YUVPlanes(f)
	if err != nil {
		t.Fatal(err)
	}
	for y := range h {
		for x := range w {
			v := byte(16)
			if x < w/2 {
				v = 235
			}
			planes[0][y*strides[0]+x] = v
		}
	}
	for p := 1; p < 3; p++ {
		for i := range planes[p] {
			planes[p][i] = 128
		}
	}
	return f
}

// audioFrame is n samples of silence in format sf (of bytes a sample) at
// rate, with layout l, built from a zeroed payload.
func audioFrame(t *testing.T, sf astiav.SampleFormat, bytes, rate int, l astiav.ChannelLayout, n int, pts int64) *astiav.Frame {
	t.Helper()
	e := &stage.Msg{Envelope: envelope.Envelope{Kind: envelope.KindFrame, Media: envelope.MediaAudio, PTS: pts, Audio: &envelope.AudioFormat{SampleFmt: sf.Name(), SampleRate: int32(rate), Channels: int32(l.NbChannels()), Samples: int32(n)}, Payload: make([]byte, n*l.NbChannels()*bytes)}}
	f, err := FrameOf(e)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Release)
	return f
}

// TestGraphConfiguresAgainOnANewFormat: a graph whose filters depend on
// the input format (crop by iw/ih; a resampler to a fixed layout) gets
// frames of a new size, or a new rate, format and layout, mid-stream: it
// is configured again (one log line each time), so its output is what a
// graph built for the new format makes, and no frame is lost.
func TestGraphConfiguresAgainOnANewFormat(t *testing.T) {
	v := envelope.MediaVideo
	a := envelope.MediaAudio
	tests := []struct {
		name   string
		spec   string
		media  envelope.Media
		frames func(t *testing.T) []*astiav.Frame
		want   []string // the formats that come out, in order, one per run of frames
	}{
		{"video up and down", "crop=iw/2:ih/2:0:0", v, func(t *testing.T) []*astiav.Frame {
			return []*astiav.Frame{videoFrame(t, 320, 240, 0), videoFrame(t, 320, 240, 1), videoFrame(t, 640, 480, 2), videoFrame(t, 160, 120, 3)}
		}, []string{"160x120 yuv420p", "160x120 yuv420p", "320x240 yuv420p", "80x60 yuv420p"}},
		{"pixel format", "crop=iw/2:ih/2:0:0", v, func(t *testing.T) []*astiav.Frame {
			f := videoFrame(t, 320, 240, 1)
			g := astiav.AllocFrame()
			t.Cleanup(g.Free)
			g.SetWidth(320)
			g.SetHeight(240)
			g.SetPixelFormat(astiav.PixelFormatYuv444P)
			g.SetPts(2)
			if err := g.AllocBuffer(0); err != nil {
				t.Fatal(err)
			}
			return []*astiav.Frame{videoFrame(t, 320, 240, 0), f, g}
		}, []string{"160x120 yuv420p", "160x120 yuv420p", "160x120 yuv444p"}},
		{"audio rate, format and layout", "aformat=channel_layouts=stereo", a, func(t *testing.T) []*astiav.Frame {
			return []*astiav.Frame{
				audioFrame(t, astiav.SampleFormatFltp, 4, 48000, astiav.ChannelLayoutStereo, 1024, 0),
				audioFrame(t, astiav.SampleFormatS16, 2, 44100, astiav.ChannelLayoutMono, 1024, 1024),
			}
		}, []string{"48000 Hz fltp stereo", "44100 Hz s16 stereo"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logs := &bytes.Buffer{}
			g := NewGraph(tt.spec, 1)
			g.Log = slog.New(slog.NewTextHandler(logs, nil))
			defer g.Close()
			frames := tt.frames(t)
			var got []string
			var last FrameFormat
			collect := func(out []*stage.Msg) {
				for _, e := range out {
					f, err := FrameOf(e)
					if err != nil {
						t.Fatal(err)
					}
					got = append(got, FormatOf(f, tt.media).String())
					e.Release()
				}
			}
			changes := 0
			for i, f := range frames {
				if in := FormatOf(f, tt.media); i > 0 && in != last {
					changes++
				}
				last = FormatOf(f, tt.media)
				out, err := g.Push(f, tt.media, astiav.NewRational(1, 25), astiav.NewRational(25, 1))
				if err != nil {
					t.Fatal(err)
				}
				collect(out)
			}
			out, err := g.Push(nil, tt.media, astiav.NewRational(1, 25), astiav.NewRational(25, 1))
			if err != nil {
				t.Fatal(err)
			}
			collect(out)
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("frames out: %v, want %v", got, tt.want)
			}
			if n := strings.Count(logs.String(), "filter graph configured again"); n != changes {
				t.Errorf("%d log lines for %d changes of format:\n%s", n, changes, logs)
			}
		})
	}
}

// TestDeviceGraphConfiguresAgainOnANewPool: device frames of a new size
// come from a new frame pool (a GPU decoder reallocates its pool when the
// stream's size changes): the graph is configured again for the new pool
// and size, as the ffmpeg CLI does, and its frames stay on the device.
func TestDeviceGraphConfiguresAgainOnANewPool(t *testing.T) {
	vk := vulkan(t)
	g := NewDeviceGraph("scale_vulkan=w=iw/2:h=ih/2", 0, vk, "hwupload")
	defer g.Close()
	for _, s := range [][2]int{{320, 240}, {640, 480}, {320, 240}} {
		src, _ := pattern(t, s[0], s[1])
		cc := astiav.AllocCodecContext(astiav.FindEncoderByName("rawvideo"))
		t.Cleanup(cc.Free)
		if err := UploadPool(cc, vk, astiav.PixelFormatNv12, s[0], s[1]); err != nil {
			t.Fatal(err)
		}
		onDev := astiav.AllocFrame()
		t.Cleanup(onDev.Free)
		if err := Upload(cc, onDev, src); err != nil {
			t.Fatal(err)
		}
		out, err := g.Push(onDev, envelope.MediaVideo, astiav.NewRational(1, 25), astiav.NewRational(25, 1))
		if err != nil || len(out) != 1 {
			t.Fatalf("%dx%d: %d frames, %v", s[0], s[1], len(out), err)
		}
		f := out[0].Local.(*Frame).F
		if !IsHardwarePixelFormat(f.PixelFormat()) || !g.OnDevice {
			t.Errorf("%dx%d: frames did not stay on the device", s[0], s[1])
		}
		if f.Width() != s[0]/2 || f.Height() != s[1]/2 {
			t.Errorf("%dx%d in, %dx%d out, want half", s[0], s[1], f.Width(), f.Height())
		}
		out[0].Release()
	}
}

// TestGraphMaxPixels: a graph configured to make frames over MaxPixels
// fails with ErrTooLarge, also when a new input size configures it again.
func TestGraphMaxPixels(t *testing.T) {
	g := NewGraph("scale=iw*2:ih*2", 1)
	g.MaxPixels = 640 * 480
	defer g.Close()
	for _, s := range []struct {
		w, h int
		want bool // fails
	}{{320, 240, false}, {160, 120, false}, {640, 480, true}} {
		out, err := g.Push(videoFrame(t, s.w, s.h, 0), envelope.MediaVideo, astiav.NewRational(1, 25), astiav.NewRational(25, 1))
		for _, e := range out {
			e.Release()
		}
		if got := errors.Is(err, ErrTooLarge); got != s.want {
			t.Fatalf("%dx%d in: %v, want ErrTooLarge: %v", s.w, s.h, err, s.want)
		}
		if s.want && !strings.Contains(err.Error(), "1280x960 yuv420p frames from 640x480") {
			t.Errorf("error %q does not say which frames", err)
		}
	}
}
