package codecs

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
)

// TestAstiavLayout checks what ccPtr, devRef, filterPtr and graphPtr rely
// on: go-astiav keeps the C pointer as the first field of those types.
func TestAstiavLayout(t *testing.T) {
	for _, v := range []any{astiav.CodecContext{}, astiav.HardwareDeviceContext{}, astiav.FilterContext{}, astiav.FilterGraph{}} {
		typ := reflect.TypeOf(v)
		if f := typ.Field(0); f.Name != "c" || f.Type.Kind() != reflect.Pointer || f.Offset != 0 {
			t.Fatalf("%s: first field is %s %s at %d; ccPtr/devRef need updating for this go-astiav", typ, f.Name, f.Type, f.Offset)
		}
	}
	cc := astiav.AllocCodecContext(astiav.FindEncoderByName("rawvideo"))
	defer cc.Free()
	cc.SetWidth(1234)
	if got := int(avfCCWidth(cc)); got != 1234 {
		t.Fatalf("width through ccPtr = %d, want 1234", got)
	}
}

func TestHardwareHelpersRefuseSoftwareFrames(t *testing.T) {
	cc := astiav.AllocCodecContext(astiav.FindEncoderByName("rawvideo"))
	defer cc.Free()
	f := astiav.AllocFrame()
	defer f.Free()
	f.SetWidth(16)
	f.SetHeight(16)
	f.SetPixelFormat(astiav.PixelFormatYuv420P)
	if err := f.AllocBuffer(0); err != nil {
		t.Fatal(err)
	}
	if OnDevice(f, nil) {
		t.Fatal("a system-memory frame is on no device")
	}
	if err := TakeDeviceFrames(cc, f); err == nil {
		t.Fatal("TakeDeviceFrames accepted a system-memory frame")
	}
	dst := astiav.AllocFrame()
	defer dst.Free()
	if err := Upload(cc, dst, f); err == nil {
		t.Fatal("Upload without a frame pool succeeded")
	}
}

// vulkan opens a Vulkan device, which Mesa's lavapipe provides on any
// machine (make setup installs mesa-vulkan-drivers): a real FFmpeg
// hardware device for the device-memory paths on a machine with no GPU.
func vulkan(t *testing.T) *astiav.HardwareDeviceContext {
	t.Helper()
	dev, err := astiav.CreateHardwareDeviceContext(astiav.HardwareDeviceTypeVulkan, "", nil)
	if err != nil {
		t.Skipf("no Vulkan device (install mesa-vulkan-drivers): %v", err)
	}
	return dev
}

// pattern returns an nv12 frame whose bytes are a function of position.
func pattern(t *testing.T, w, h int) (*astiav.Frame, []byte) {
	t.Helper()
	buf := make([]byte, w*h*3/2)
	for i := range buf { // smooth gradients, so that scalers agree
		x, y := i%w, i/w
		if i < w*h {
			buf[i] = byte((x*255/w + y*255/h) / 2)
		} else {
			buf[i] = byte(96 + x*64/w)
		}
	}
	e := &stage.Msg{Envelope: envelope.Envelope{Kind: envelope.KindFrame, Media: envelope.MediaVideo, TimeBase: envelope.Rational{Num: 1, Den: 25}, PTS: 42, Video: &envelope.VideoFormat{PixFmt: "nv12", Width: int32(w), Height: int32(h)}, Payload: buf}}
	f, err := FrameOf(e)
	if err != nil {
		t.Fatal(err)
	}
	return f, buf
}

// TestUploadIntoDevicePool: a frame uploaded into an encoder's device
// pool is on that device (and no other), keeps its timing, and comes back
// byte for byte; a second codec context takes such frames as they are.
func TestUploadIntoDevicePool(t *testing.T) {
	dev, other := vulkan(t), vulkan(t)
	const w, h = 320, 240
	cc := astiav.AllocCodecContext(astiav.FindEncoderByName("rawvideo"))
	defer cc.Free()
	if err := UploadPool(cc, dev, astiav.PixelFormatNv12, w, h); err != nil {
		t.Fatal(err)
	}
	if !IsHardwarePixelFormat(cc.PixelFormat()) {
		t.Fatalf("encoder pixel format %s, want the device's", cc.PixelFormat().Name())
	}
	src, want := pattern(t, w, h)
	defer src.Free()
	onDev := astiav.AllocFrame()
	defer onDev.Free()
	for range 3 { // the pool hands out frames again after Unref
		onDev.Unref()
		if err := Upload(cc, onDev, src); err != nil {
			t.Fatal(err)
		}
	}
	if !IsHardwarePixelFormat(onDev.PixelFormat()) || onDev.Pts() != 42 {
		t.Fatalf("uploaded frame: %s pts %d", onDev.PixelFormat().Name(), onDev.Pts())
	}
	if !OnDevice(onDev, dev) || OnDevice(onDev, other) || OnDevice(src, dev) {
		t.Fatal("OnDevice does not tell the frame's device apart")
	}
	d := NewDownloader(true)
	defer d.Close()
	back, err := d.Download(onDev)
	if err != nil {
		t.Fatal(err)
	}
	defer back.Free()
	got := make([]byte, len(want))
	if err := (&Frame{F: back}).WritePayload(got); err != nil {
		t.Fatal(err)
	}
	if back.PixelFormat() != astiav.PixelFormatNv12 || !bytes.Equal(got, want) || back.Pts() != 42 {
		t.Fatalf("round trip: %s pts %d, equal bytes %v", back.PixelFormat().Name(), back.Pts(), bytes.Equal(got, want))
	}
	taker := astiav.AllocCodecContext(astiav.FindEncoderByName("rawvideo"))
	defer taker.Free()
	if err := TakeDeviceFrames(taker, onDev); err != nil {
		t.Fatal(err)
	}
	if taker.PixelFormat() != onDev.PixelFormat() {
		t.Fatalf("taker pixel format %s, want %s", taker.PixelFormat().Name(), onDev.PixelFormat().Name())
	}
}

// TestSetDeviceKeepsTheSharedContext: codec contexts bound with SetDevice
// and freed leave the process's device context usable. go-astiav's own
// SetHardwareDeviceContext does not (its Free releases and clears the
// shared reference), which is why SetDevice exists: if this second half
// starts failing, go-astiav has fixed it.
func TestSetDeviceKeepsTheSharedContext(t *testing.T) {
	dev := vulkan(t)
	for range 3 {
		cc := astiav.AllocCodecContext(astiav.FindDecoder(astiav.CodecIDH264))
		if err := SetDevice(cc, dev); err != nil {
			t.Fatal(err)
		}
		cc.Free()
	}
	if devRef(dev) == nil {
		t.Fatal("the shared device context lost its reference")
	}
	cc := astiav.AllocCodecContext(astiav.FindEncoderByName("rawvideo"))
	defer cc.Free()
	if err := UploadPool(cc, dev, astiav.PixelFormatNv12, 64, 64); err != nil {
		t.Fatalf("the device context no longer works after its users were freed: %v", err)
	}

	theirs := vulkan(t)
	cc2 := astiav.AllocCodecContext(astiav.FindDecoder(astiav.CodecIDH264))
	cc2.SetHardwareDeviceContext(theirs)
	cc2.Free()
	if devRef(theirs) != nil {
		t.Fatal("go-astiav's Free no longer clears the shared device reference: SetDevice could go")
	}
}

// TestDeviceGraph runs FFmpeg's Vulkan filters on a real (software)
// Vulkan device: frames already on the device go in as they are, frames in
// system memory are uploaded first, and the result matches the CPU's
// scale filter on the same picture.
func TestDeviceGraph(t *testing.T) {
	vk := vulkan(t)
	const w, h = 320, 240
	src, _ := pattern(t, w, h)
	defer src.Free()
	cc := astiav.AllocCodecContext(astiav.FindEncoderByName("rawvideo"))
	defer cc.Free()
	if err := UploadPool(cc, vk, astiav.PixelFormatNv12, w, h); err != nil {
		t.Fatal(err)
	}
	onDev := astiav.AllocFrame()
	defer onDev.Free()
	if err := Upload(cc, onDev, src); err != nil {
		t.Fatal(err)
	}
	cpu := NewGraph("scale=160:120:flags=bilinear", 0)
	defer cpu.Close()
	want := firstFrame(t, cpu, src, false)
	tests := []struct {
		name     string
		in       *astiav.Frame
		onDevice bool
	}{
		{"device frames in", onDev, true},
		{"system frames uploaded", src, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewDeviceGraph("scale_vulkan=160:120", 0, vk, "hwupload")
			defer g.Close()
			got := firstFrame(t, g, tt.in, true)
			if g.OnDevice != tt.onDevice {
				t.Errorf("OnDevice = %v, want %v", g.OnDevice, tt.onDevice)
			}
			if p := PSNR(got, want); p < 30 {
				t.Errorf("Vulkan scale vs CPU scale: PSNR %.1f dB, want >= 30", p)
			}
		})
	}
	other := NewDeviceGraph("scale_vulkan=160:120", 0, vulkan(t), "hwupload")
	defer other.Close()
	if _, err := other.Push(onDev, envelope.MediaVideo, astiav.NewRational(1, 25), astiav.NewRational(25, 1)); err == nil || !strings.Contains(err.Error(), "another device") {
		t.Fatalf("frames of another device: %v", err)
	}
}

// firstFrame pushes f through g and returns the luma plane of the first
// frame out, downloaded if it is on a device (which onDevice expects).
func firstFrame(t *testing.T, g *Graph, f *astiav.Frame, onDevice bool) []byte {
	t.Helper()
	out, err := g.Push(f, envelope.MediaVideo, astiav.NewRational(1, 25), astiav.NewRational(25, 1))
	if err != nil || len(out) == 0 {
		t.Fatalf("push: %d frames, %v", len(out), err)
	}
	defer func() {
		for _, e := range out {
			e.Release()
		}
	}()
	fr := out[0].Local.(*Frame)
	if IsHardwarePixelFormat(fr.F.PixelFormat()) != onDevice {
		t.Fatalf("graph output %s, on device: want %v", fr.F.PixelFormat().Name(), onDevice)
	}
	if err := fr.ToHost(nil); err != nil {
		t.Fatal(err)
	}
	if fr.F.Width() != 160 || fr.F.Height() != 120 {
		t.Fatalf("output %dx%d, want 160x120", fr.F.Width(), fr.F.Height())
	}
	y, stride := Plane(fr.F, 0, 120)
	luma := make([]byte, 0, 160*120)
	for r := range 120 {
		luma = append(luma, y[r*stride:r*stride+160]...)
	}
	return luma
}
