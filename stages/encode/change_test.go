package encode

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
)

// newEncoder builds an encode stage with the spec's defaults and the given
// params, logging into the returned buffer.
func newEncoder(t *testing.T, params pipeline.Params, live bool) (*Encoder, *bytes.Buffer) {
	t.Helper()
	spec, err := pipeline.Default.Lookup("encode")
	if err != nil {
		t.Fatal(err)
	}
	p := pipeline.Params{}
	for _, sp := range spec.Params {
		if sp.Default != nil {
			p[sp.Name] = sp.Default
		}
	}
	for k, v := range params {
		p[k] = v
	}
	logs := &bytes.Buffer{}
	st, err := New(context.Background(), pipeline.Init{Name: "enc", Params: p, Live: live, Log: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st.(*Encoder), logs
}

// halves is a w x h yuv420p frame, luma 235 on the left half and 16 on
// the right: any crop of it that keeps the top-left corner is all 235 on
// the left of the encoder's frame.
func halves(t *testing.T, w, h int, pts int64) *stage.Msg {
	t.Helper()
	f := astiav.AllocFrame()
	f.SetWidth(w)
	f.SetHeight(h)
	f.SetPixelFormat(astiav.PixelFormatYuv420P)
	f.SetPts(pts)
	if err := f.AllocBuffer(0); err != nil {
		f.Free()
		t.Fatal(err)
	}
	planes, strides, err := codecs.YUVPlanes(f)
	if err != nil {
		f.Free()
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
	e := codecs.FrameMsg(f, envelope.MediaVideo, astiav.NewRational(1, 25), astiav.NewRational(25, 1))
	t.Cleanup(e.Release)
	return e
}

// decodeAll decodes H.264 packets (headers in-band) into frames, which it
// hands to check.
func decodeAll(t *testing.T, pkts stage.Batch, check func(f *astiav.Frame)) int {
	t.Helper()
	cc := astiav.AllocCodecContext(astiav.FindDecoder(astiav.CodecIDH264))
	defer cc.Free()
	if err := cc.Open(astiav.FindDecoder(astiav.CodecIDH264), nil); err != nil {
		t.Fatal(err)
	}
	f := astiav.AllocFrame()
	defer f.Free()
	n := 0
	receive := func() {
		for {
			if err := cc.ReceiveFrame(f); err != nil {
				if errors.Is(err, astiav.ErrEagain) || errors.Is(err, astiav.ErrEof) {
					return
				}
				t.Fatal(err)
			}
			check(f)
			n++
			f.Unref()
		}
	}
	for _, e := range pkts {
		p, err := codecs.PacketOf(e)
		if err != nil {
			t.Fatal(err)
		}
		if err := cc.SendPacket(p); err != nil {
			t.Fatal(err)
		}
		receive()
		e.Release()
	}
	if err := cc.SendPacket(nil); err != nil {
		t.Fatal(err)
	}
	receive()
	return n
}

// meanLuma is the mean of the luma samples in columns [x0, x1).
func meanLuma(f *astiav.Frame, x0, x1 int) float64 {
	y, stride := codecs.Plane(f, 0, f.Height())
	var sum float64
	for r := range f.Height() {
		for x := x0; x < x1; x++ {
			sum += float64(y[r*stride+x])
		}
	}
	return sum / float64((x1-x0)*f.Height())
}

// TestEncoderScalesAFrameOfAnotherSize: an encoder opened on 320x240
// frames gets 640x480 and 160x120 ones: it encodes each at 320x240, the
// whole picture scaled (not its top-left corner, not an x264 error), with
// one warning.
func TestEncoderScalesAFrameOfAnotherSize(t *testing.T) {
	if astiav.FindEncoderByName("libx264") == nil {
		t.Skip("needs FFmpeg with libx264")
	}
	enc, logs := newEncoder(t, pipeline.Params{"codec": "libx264", "preset": "ultrafast", "crf": 10, "global_header": false}, false)
	sizes := [][2]int{{320, 240}, {320, 240}, {640, 480}, {640, 480}, {160, 120}, {320, 240}, {1280, 720}}
	var pkts stage.Batch
	for i, s := range sizes {
		out, err := enc.Process(context.Background(), stage.Batch{halves(t, s[0], s[1], int64(i))})
		if err != nil {
			t.Fatalf("frame %d (%dx%d): %v", i, s[0], s[1], err)
		}
		pkts = append(pkts, out...)
	}
	out, err := enc.Flush(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	pkts = append(pkts, out...)
	i := 0
	n := decodeAll(t, pkts, func(f *astiav.Frame) {
		if f.Width() != 320 || f.Height() != 240 {
			t.Errorf("frame %d (was %dx%d) encoded at %dx%d, want 320x240", i, sizes[i][0], sizes[i][1], f.Width(), f.Height())
		} else if left, right := meanLuma(f, 0, 150), meanLuma(f, 170, 320); left < 225 || right > 26 {
			t.Errorf("frame %d (was %dx%d): mean luma %.0f on the left, %.0f on the right; want ~235 and ~16, the whole picture", i, sizes[i][0], sizes[i][1], left, right)
		}
		i++
	})
	if n != len(sizes) {
		t.Errorf("%d frames decoded, want %d", n, len(sizes))
	}
	if c := strings.Count(logs.String(), "changed mid-stream"); c != 1 {
		t.Errorf("%d warnings about the size change, want 1:\n%s", c, logs)
	}
}

// sampleBytes is the size of a sample in the formats the tests use.
var sampleBytes = map[astiav.SampleFormat]int{astiav.SampleFormatFltp: 4, astiav.SampleFormatS16: 2}

// silence is n samples of silence, built from a zeroed payload.
func silence(t *testing.T, sf astiav.SampleFormat, rate int, l astiav.ChannelLayout, n int, pts int64) *stage.Msg {
	t.Helper()
	e := &stage.Msg{Envelope: envelope.Envelope{Kind: envelope.KindFrame, Media: envelope.MediaAudio, PTS: pts, TimeBase: envelope.Rational{Num: 1, Den: int32(rate)}, Audio: &envelope.AudioFormat{SampleFmt: sf.Name(), SampleRate: int32(rate), Channels: int32(l.NbChannels()), Samples: int32(n)}, Payload: make([]byte, n*l.NbChannels()*sampleBytes[sf])}}
	if _, err := codecs.FrameOf(e); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Release)
	return e
}

// TestEncoderResamplesAudioOfAnotherFormat: an AAC encoder opened on 48 kHz
// stereo gets 44.1 kHz mono s16 mid-stream (and back): it resamples to
// what it opened on, with one warning, and every packet is a full AAC frame.
func TestEncoderResamplesAudioOfAnotherFormat(t *testing.T) {
	enc, logs := newEncoder(t, pipeline.Params{"codec": "aac"}, false)
	stereo, mono := astiav.ChannelLayoutStereo, astiav.ChannelLayoutMono
	in := []*stage.Msg{
		silence(t, astiav.SampleFormatFltp, 48000, stereo, 1000, 0),
		silence(t, astiav.SampleFormatFltp, 48000, stereo, 1000, 1000),
		silence(t, astiav.SampleFormatS16, 44100, mono, 1000, 1837),
		silence(t, astiav.SampleFormatS16, 44100, mono, 1000, 2756),
		silence(t, astiav.SampleFormatFltp, 48000, stereo, 1000, 4000),
	}
	var pkts stage.Batch
	for i, e := range in {
		out, err := enc.Process(context.Background(), stage.Batch{e})
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		pkts = append(pkts, out...)
	}
	out, err := enc.Flush(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	pkts = append(pkts, out...)
	if len(pkts) < 4 {
		t.Fatalf("%d packets for ~5000 samples, want at least 4", len(pkts))
	}
	for _, p := range pkts {
		p.Release()
	}
	if enc.cc.ChannelLayout().NbChannels() != 2 || enc.cc.SampleRate() != 48000 {
		t.Errorf("encoder at %d Hz %d channels, want 48000 Hz stereo", enc.cc.SampleRate(), enc.cc.ChannelLayout().NbChannels())
	}
	if c := strings.Count(logs.String(), "changed mid-stream"); c != 1 {
		t.Errorf("%d warnings about the format change, want 1:\n%s", c, logs)
	}
}
