package encode

import (
	"fmt"
	"slices"
	"strings"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/accelerators"
)

// hwFamily is one family of FFmpeg hardware encoders.
type hwFamily struct {
	suffix string            // encoder name suffix: _nvenc, _vaapi, _qsv
	kind   string            // FFmpeg device kind they run on
	cap    string            // the device capability discovery records for them
	what   string            // for messages
	codecs map[string]string // codec -> encoder
}

// families are the hardware encoders a stage bound to a GPU can use. A
// software encoder bound to a CUDA GPU becomes NVENC, on a VA-API render
// node the VA-API encoder (Intel and AMD); QSV is used when named (h264_qsv).
var families = []hwFamily{
	{"_nvenc", "cuda", "nvenc", "NVENC",
		map[string]string{"h264": "h264_nvenc", "hevc": "hevc_nvenc", "av1": "av1_nvenc"}},
	{"_vaapi", "vaapi", "vaapi-encode", "VA-API encoding",
		map[string]string{"h264": "h264_vaapi", "hevc": "hevc_vaapi", "vp9": "vp9_vaapi", "vp8": "vp8_vaapi", "mjpeg": "mjpeg_vaapi", "mpeg2video": "mpeg2_vaapi"}},
	{"_qsv", "vaapi", "qsv", "Quick Sync (QSV)",
		map[string]string{"h264": "h264_qsv", "hevc": "hevc_qsv", "vp9": "vp9_qsv", "mjpeg": "mjpeg_qsv", "mpeg2video": "mpeg2_qsv"}},
}

// familyOf returns the hardware family of an encoder name, if it is one.
func familyOf(name string) (hwFamily, bool) {
	for _, f := range families {
		if strings.HasSuffix(name, f.suffix) {
			return f, true
		}
	}
	return hwFamily{}, false
}

// hardwareEncoder returns the encoder that does sw's job on dev, or why
// there is none (the stage then encodes on the CPU, or fails when strict).
// A hardware encoder named in the file (h264_vaapi) must match the device.
func hardwareEncoder(sw *astiav.Codec, dev accelerators.Device) (*astiav.Codec, string) {
	kind, _, _, ok := accelerators.FFmpegDevice(dev.ID)
	if !ok {
		return nil, fmt.Sprintf("%s cannot encode video", dev.ID)
	}
	fam, named := familyOf(sw.Name())
	if !named {
		for _, f := range families {
			if f.kind == kind && f.suffix != "_qsv" {
				fam = f
				break
			}
		}
	}
	switch {
	case fam.kind == "":
		return nil, fmt.Sprintf("FFmpeg has no hardware encoder on %s devices", kind)
	case fam.kind != kind:
		return nil, fmt.Sprintf("%s runs on %s devices, not on %s", sw.Name(), fam.kind, dev.ID)
	case !slices.Contains(dev.Caps, fam.cap):
		return nil, fmt.Sprintf("%s (%s) has no %s", dev.ID, dev.Name, fam.what)
	case named:
		return sw, ""
	}
	name, ok := fam.codecs[sw.ID().Name()]
	if !ok {
		return nil, fmt.Sprintf("%s cannot encode %s", fam.what, sw.ID().Name())
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

// hardwareOptions rewrites the stage's software-encoder settings for a
// hardware encoder. NVENC: presets by speed, zerolatency as its
// ultra-low-latency tune, crf as constant quality (cq), and the GPU index
// the stage is bound to. VA-API: crf as a constant QP (rate control CQP),
// no presets or tunes. QSV: presets by name, crf as global_quality (ICQ).
// Options meant for x264 and friends are dropped, each named in the
// returned list.
func hardwareOptions(opts map[string]string, encoder, device string) (dropped []string) {
	fam, ok := familyOf(encoder)
	if !ok {
		return nil
	}
	drop := func(k string) {
		if v, ok := opts[k]; ok {
			delete(opts, k)
			dropped = append(dropped, k+"="+v)
		}
	}
	switch fam.suffix {
	case "_nvenc":
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
				drop("tune")
			}
		}
		rename(opts, "crf", "cq")
		if _, idx, _, ok := accelerators.FFmpegDevice(device); ok {
			opts["gpu"] = idx
		}
	case "_vaapi":
		drop("preset")
		drop("tune")
		if _, ok := opts["crf"]; ok {
			rename(opts, "crf", "qp")
			opts["rc_mode"] = "CQP"
		}
	case "_qsv":
		if p := opts["preset"]; p == "ultrafast" || p == "superfast" {
			opts["preset"] = "veryfast" // QSV's fastest
		}
		if t, ok := opts["tune"]; ok && t != "zerolatency" {
			drop("tune")
		} else if ok {
			delete(opts, "tune")
			opts["look_ahead"] = "0"
		}
		rename(opts, "crf", "global_quality")
	}
	for _, k := range []string{"x264-params", "x265-params", "svtav1-params"} {
		drop(k)
	}
	slices.Sort(dropped)
	return dropped
}

func rename(opts map[string]string, from, to string) {
	if v, ok := opts[from]; ok {
		delete(opts, from)
		opts[to] = v
	}
}
