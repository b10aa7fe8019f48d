package encode

import (
	"fmt"
	"slices"
	"strings"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/accelerators"
)

// nvencByCodec names NVIDIA's encoder for each codec.
var nvencByCodec = map[string]string{"h264": "h264_nvenc", "hevc": "hevc_nvenc", "av1": "av1_nvenc"}

// hardwareEncoder returns the encoder that does sw's job on dev, or why
// there is none (the stage then encodes on the CPU, or fails when strict).
// NVENC takes frames from system memory, so it needs no upload step.
func hardwareEncoder(sw *astiav.Codec, dev accelerators.Device) (*astiav.Codec, string) {
	kind, _, _, ok := accelerators.FFmpegDevice(dev.ID)
	switch {
	case !ok:
		return nil, fmt.Sprintf("%s cannot encode video", dev.ID)
	case kind != "cuda":
		return nil, fmt.Sprintf("encoding on %s (VA-API/QSV) is not built yet", dev.ID)
	case !slices.Contains(dev.Caps, "nvenc"):
		return nil, fmt.Sprintf("%s (%s) has no NVENC encoder", dev.ID, dev.Name)
	}
	if strings.HasSuffix(sw.Name(), "_nvenc") {
		return sw, ""
	}
	name, ok := nvencByCodec[sw.ID().Name()]
	if !ok {
		return nil, fmt.Sprintf("NVENC cannot encode %s", sw.ID().Name())
	}
	hw := astiav.FindEncoderByName(name)
	if hw == nil {
		return nil, fmt.Sprintf("this FFmpeg build has no %s", name)
	}
	return hw, ""
}

// nvencPresets maps x264-style presets to NVENC's p1 (fastest) .. p7 (best).
var nvencPresets = map[string]string{
	"ultrafast": "p1", "superfast": "p2", "veryfast": "p3", "faster": "p3", "fast": "p4",
	"medium": "p4", "slow": "p5", "slower": "p6", "veryslow": "p7",
}

// nvencOptions rewrites the stage's software-encoder settings for NVENC:
// presets by speed, zerolatency as NVENC's ultra-low-latency tune, crf as
// constant quality (cq), and the GPU index the stage is bound to. Options
// meant for x264 and friends are dropped, each named in the returned list.
func nvencOptions(opts map[string]string, device string) (dropped []string) {
	if p, ok := opts["preset"]; ok {
		if q, ok := nvencPresets[p]; ok {
			opts["preset"] = q
		}
	}
	if t, ok := opts["tune"]; ok {
		switch t {
		case "zerolatency":
			opts["tune"] = "ull"
		case "hq", "ll", "ull", "lossless":
		default:
			delete(opts, "tune")
			dropped = append(dropped, "tune="+t)
		}
	}
	if v, ok := opts["crf"]; ok {
		delete(opts, "crf")
		opts["cq"] = v
	}
	for _, k := range []string{"x264-params", "x265-params", "svtav1-params"} {
		if v, ok := opts[k]; ok {
			delete(opts, k)
			dropped = append(dropped, k+"="+v)
		}
	}
	if _, idx, _, ok := accelerators.FFmpegDevice(device); ok {
		opts["gpu"] = idx
	}
	slices.Sort(dropped)
	return dropped
}
