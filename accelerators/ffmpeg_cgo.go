//go:build cgo

package accelerators

import (
	"fmt"
	"strings"
	"sync"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/codecs"
)

// go-astiav v0.16 cannot free a device context, so each device is opened
// once per process and kept for the stages that bind to it.
var (
	ctxMu sync.Mutex
	ctxs  = map[string]*astiav.HardwareDeviceContext{}
)

// deviceTypes are the FFmpeg device types avflow binds stages to. Vulkan
// runs FFmpeg's *_vulkan filters; discovery does not list Vulkan devices
// (on a machine without a GPU the only one is Mesa's software lavapipe),
// so a stage binds to one only through a placement or inventory that
// names it, as the tests of device-memory paths do.
var deviceTypes = map[string]astiav.HardwareDeviceType{
	"cuda":   astiav.HardwareDeviceTypeCUDA,
	"vaapi":  astiav.HardwareDeviceTypeVAAPI,
	"vulkan": astiav.HardwareDeviceTypeVulkan,
}

// FFmpegDevice splits a device ID into FFmpeg's device kind and name
// ("cuda:0" -> "cuda", "0"; "vaapi:/dev/dri/renderD128" -> "vaapi",
// "/dev/dri/renderD128") and gives FFmpeg's type for it; ok is false for
// devices FFmpeg does not open (cpu:0, npu:0, ort:...).
func FFmpegDevice(id string) (kind, name string, t astiav.HardwareDeviceType, ok bool) {
	kind, name, _ = strings.Cut(id, ":")
	t, ok = deviceTypes[kind]
	return kind, name, t, ok
}

// DeviceContext returns the process's context for a device, opening it once.
func DeviceContext(kind, device string) (*astiav.HardwareDeviceContext, error) {
	ctxMu.Lock()
	defer ctxMu.Unlock()
	if c, ok := ctxs[kind+":"+device]; ok {
		return c, nil
	}
	t, ok := deviceTypes[kind]
	if !ok {
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

// ProbeEncoder opens a hardware H.264 encoder on a device for a small
// picture and closes it again: h264_nvenc on a CUDA GPU (FFmpeg says
// "unsupported device" on GPUs without NVENC), h264_vaapi on a VA-API
// render node (with a pool of device frames, as the encode stage uses).
func ProbeEncoder(kind, device string) error {
	name := map[string]string{"cuda": "h264_nvenc", "vaapi": "h264_vaapi"}[kind]
	if name == "" {
		return fmt.Errorf("no hardware encoder on %s devices", kind)
	}
	c := astiav.FindEncoderByName(name)
	if c == nil {
		return fmt.Errorf("this FFmpeg has no %s", name)
	}
	cc := astiav.AllocCodecContext(c)
	if cc == nil {
		return fmt.Errorf("allocating %s failed", name)
	}
	defer cc.Free()
	cc.SetWidth(256)
	cc.SetHeight(256)
	cc.SetPixelFormat(astiav.PixelFormatYuv420P)
	cc.SetTimeBase(astiav.NewRational(1, 30))
	d := astiav.NewDictionary()
	defer d.Free()
	// A device without the encoder is an answer here, not an error to log.
	lvl := astiav.GetLogLevel()
	astiav.SetLogLevel(astiav.LogLevelQuiet)
	defer astiav.SetLogLevel(lvl)
	switch kind {
	case "cuda":
		_ = d.Set("gpu", device, 0)
	case "vaapi":
		dev, err := DeviceContext(kind, device)
		if err != nil {
			return err
		}
		if err := codecs.UploadPool(cc, dev, astiav.PixelFormatNv12, 256, 256); err != nil {
			return err
		}
	}
	if err := cc.Open(c, d); err != nil {
		return fmt.Errorf("%s did not open on %s:%s: %w", name, kind, device, err)
	}
	return nil
}
