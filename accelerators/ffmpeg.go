package accelerators

import (
	"fmt"
	"sync"

	"github.com/asticode/go-astiav"
)

// go-astiav v0.16 cannot free a device context, so each device is opened
// once per process and kept for the stages that bind to it.
var (
	ctxMu sync.Mutex
	ctxs  = map[string]*astiav.HardwareDeviceContext{}
)

// DeviceContext returns the process's context for a device, opening it once.
func DeviceContext(kind, device string) (*astiav.HardwareDeviceContext, error) {
	ctxMu.Lock()
	defer ctxMu.Unlock()
	if c, ok := ctxs[kind+":"+device]; ok {
		return c, nil
	}
	var t astiav.HardwareDeviceType
	switch kind {
	case "cuda":
		t = astiav.HardwareDeviceTypeCUDA
	case "vaapi":
		t = astiav.HardwareDeviceTypeVAAPI
	default:
		return nil, fmt.Errorf("unknown device kind %q", kind)
	}
	c, err := astiav.CreateHardwareDeviceContext(t, device, nil)
	if err != nil {
		return nil, fmt.Errorf("FFmpeg cannot open %s device %q: %w", kind, device, err)
	}
	ctxs[kind+":"+device] = c
	return c, nil
}

// ProbeFFmpeg opens an FFmpeg hardware device context, the way a decoder
// or encoder bound to the device would (see go-astiav's
// examples/hardware_decoding): kind "cuda" with a GPU index, or "vaapi"
// with a render node path.
func ProbeFFmpeg(kind, device string) error {
	_, err := DeviceContext(kind, device)
	return err
}
