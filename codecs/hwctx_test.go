package codecs

import (
	"reflect"
	"testing"

	"github.com/asticode/go-astiav"
)

// TestAstiavLayout checks what ccPtr and devRef rely on: go-astiav keeps
// the C pointer as the first field of its codec and device contexts.
func TestAstiavLayout(t *testing.T) {
	for _, v := range []any{astiav.CodecContext{}, astiav.HardwareDeviceContext{}} {
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
