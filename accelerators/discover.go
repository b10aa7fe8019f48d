// Package accelerators discovers the devices a machine has (CPU, NVIDIA
// GPUs, VA-API render nodes, NPUs, ONNX Runtime execution providers), says
// for each absent one why, and binds pipeline stages to devices with a
// clear fallback.
package accelerators

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
)

// Kind is a class of device.
type Kind string

const (
	CPU Kind = "cpu"
	GPU Kind = "gpu"
	NPU Kind = "npu"
)

// CPUID is the ID discovery gives the machine's CPUs (one device for all cores).
const CPUID = "cpu:0"

// Device is one device (or one way to reach it), with what it can do.
type Device struct {
	Kind   Kind
	ID     string // cpu:0, cuda:0, vaapi:/dev/dri/renderD128, npu:0, ort:CUDAExecutionProvider
	Name   string
	Caps   []string // e.g. avx2, h264-decode, onnx
	Usable bool     // usable at run time by this build on this machine
	Reason string   // why not usable (or why absent)
}

// Inventory is what Discover found.
type Inventory struct {
	Devices []Device
	Absent  []Device // kinds looked for and not found, with the reason
}

// Options point discovery at another root (tests use fake /proc and /dev trees).
type Options struct {
	Root string // "" is /
	// Probe opens FFmpeg hardware device contexts to check usability; tests
	// with fake trees leave it nil, so nothing fake is ever reported usable.
	Probe func(kind, device string) error
	// ProbeEncoder opens an FFmpeg hardware encoder on a usable device
	// ("cuda", "0" -> h264_nvenc; "vaapi", "/dev/dri/renderD128" ->
	// h264_vaapi) to learn whether the device has one; nil falls back to
	// what an NVIDIA model name says, and to no VA-API encoding.
	ProbeEncoder func(kind, device string) error
	// ORTLibrary is the ONNX Runtime library whose execution providers are listed.
	ORTLibrary string
	// LookPath finds commands (nvidia-smi); nil uses exec.LookPath.
	LookPath func(string) (string, error)
}

func (o Options) path(p string) string { return filepath.Join(o.Root, p) }

// glob lists the paths matching pattern under the root, sorted.
func (o Options) glob(pattern string) []string {
	m, _ := filepath.Glob(o.path(pattern))
	sort.Strings(m)
	return m
}

// Discover looks at the machine.
func Discover(o Options) Inventory {
	var inv Inventory
	inv.Devices = append(inv.Devices, discoverCPU(o))
	gpus, why := discoverNVIDIA(o)
	inv.Devices = append(inv.Devices, gpus...)
	if len(gpus) == 0 {
		inv.Absent = append(inv.Absent, Device{Kind: GPU, ID: "cuda", Name: "NVIDIA GPU", Reason: why})
	}
	dri, why := discoverVAAPI(o)
	inv.Devices = append(inv.Devices, dri...)
	if len(dri) == 0 {
		inv.Absent = append(inv.Absent, Device{Kind: GPU, ID: "vaapi", Name: "VA-API / QSV render node", Reason: why})
	}
	npus, why := discoverNPU(o)
	inv.Devices = append(inv.Devices, npus...)
	if len(npus) == 0 {
		inv.Absent = append(inv.Absent, Device{Kind: NPU, ID: "npu", Name: "NPU (/dev/accel)", Reason: why})
	}
	eps, absent := discoverORT(o)
	nvidia := false
	for _, d := range gpus {
		nvidia = nvidia || d.Usable
	}
	for i, d := range eps {
		switch d.ID {
		case "ort:CUDAExecutionProvider", "ort:TensorrtExecutionProvider":
			if eps[i].Usable = nvidia; !nvidia {
				eps[i].Reason = "provider library present, but no usable NVIDIA GPU"
			}
		case "ort:OpenVINOExecutionProvider":
			eps[i].Usable = true // ONNX Runtime says at session start whether OpenVINO finds the device
		}
	}
	inv.Devices = append(inv.Devices, eps...)
	inv.Absent = append(inv.Absent, absent...)
	return inv
}

// Usable returns the usable devices of a kind.
func (inv Inventory) Usable(k Kind) []Device {
	var out []Device
	for _, d := range inv.Devices {
		if d.Kind == k && d.Usable {
			out = append(out, d)
		}
	}
	return out
}

// KindOf returns the kind of the device with this ID ("" if there is none).
func (inv Inventory) KindOf(id string) Kind {
	for _, d := range inv.Devices {
		if d.ID == id {
			return d.Kind
		}
	}
	return ""
}

// Why explains why no device of a kind is usable.
func (inv Inventory) Why(k Kind) string {
	var why []string
	for _, d := range inv.Devices {
		if d.Kind == k && !d.Usable {
			why = append(why, d.ID+": "+d.Reason)
		}
	}
	for _, d := range inv.Absent {
		if d.Kind == k {
			why = append(why, d.Name+": "+d.Reason)
		}
	}
	if len(why) == 0 {
		return "none found"
	}
	return strings.Join(why, "; ")
}

func discoverCPU(o Options) Device {
	d := Device{Kind: CPU, ID: CPUID, Usable: true, Name: runtime.GOARCH}
	f, err := os.Open(o.path("/proc/cpuinfo"))
	cores := 0
	flags := map[string]bool{}
	if err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<16), 1<<20)
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), ":")
			if !ok {
				continue
			}
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			switch k {
			case "model name":
				d.Name = v
			case "processor":
				cores++
			case "flags", "Features":
				for _, fl := range strings.Fields(v) {
					flags[fl] = true
				}
			}
		}
	}
	if cores == 0 {
		cores = runtime.NumCPU()
	}
	d.Caps = append(d.Caps, fmt.Sprintf("%d cores", cores))
	for _, isa := range []struct{ flag, name string }{
		{"sse4_2", "sse4.2"}, {"avx2", "avx2"}, {"fma", "fma"}, {"avx512f", "avx512"}, {"avx512_vnni", "avx512-vnni"},
		{"avx512_bf16", "avx512-bf16"}, {"amx_tile", "amx"}, {"neon", "neon"}, {"asimd", "neon"}, {"sve", "sve"},
	} {
		if flags[isa.flag] && !slices.Contains(d.Caps, isa.name) {
			d.Caps = append(d.Caps, isa.name)
		}
	}
	d.Caps = append(d.Caps, "decode", "encode", "filter", "onnx")
	return d
}

// discoverNVIDIA reads the driver's /proc entries (and nvidia-smi when present).
func discoverNVIDIA(o Options) ([]Device, string) {
	infos := o.glob("/proc/driver/nvidia/gpus/*/information")
	var out []Device
	for i, p := range infos {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		name := "NVIDIA GPU"
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "Model" {
				name = strings.TrimSpace(v)
			}
		}
		out = append(out, nvidiaDevice(o, i, name))
	}
	if len(out) > 0 {
		return out, ""
	}
	look := o.LookPath
	if look == nil {
		look = exec.LookPath
	}
	// Sandboxed machines (gVisor) may expose the device nodes without the
	// driver's /proc entries: name the GPUs with nvidia-smi when it is there
	// and let FFmpeg's probe decide.
	var names []string
	if smi, err := look("nvidia-smi"); err == nil && o.Root == "" {
		if b, err := exec.Command(smi, "--query-gpu=name", "--format=csv,noheader").Output(); err == nil {
			names = strings.Split(strings.TrimSpace(string(b)), "\n")
		}
	}
	for i, n := range o.glob("/dev/nvidia[0-9]*") {
		name := "NVIDIA GPU (" + filepath.Base(n) + ")"
		if i < len(names) && strings.TrimSpace(names[i]) != "" {
			name = strings.TrimSpace(names[i])
		}
		out = append(out, nvidiaDevice(o, i, name))
	}
	if len(out) > 0 {
		return out, ""
	}
	if _, err := look("nvidia-smi"); err != nil {
		return nil, "no /dev/nvidia0 and no nvidia-smi: no NVIDIA driver"
	}
	return nil, "nvidia-smi is installed but there is no /dev/nvidia0: driver not loaded"
}

// nvidiaDevice describes GPU i; the data-centre parts without NVENC say so.
func nvidiaDevice(o Options, i int, name string) Device {
	d := Device{Kind: GPU, ID: fmt.Sprintf("cuda:%d", i), Name: name, Caps: []string{"nvdec", "cuda"}}
	d.Usable, d.Reason = probe(o, "cuda", fmt.Sprint(i))
	switch {
	case d.Usable && o.ProbeEncoder != nil:
		// Ask the device: data-centre parts (A100, H100, H200) have no NVENC.
		if o.ProbeEncoder("cuda", fmt.Sprint(i)) == nil {
			d.Caps = append(d.Caps, "nvenc")
		}
	case !strings.Contains(name, "H100") && !strings.Contains(name, "H200") && !strings.Contains(name, "A100"):
		d.Caps = append(d.Caps, "nvenc")
	}
	return d
}

func discoverVAAPI(o Options) ([]Device, string) {
	nodes := o.glob("/dev/dri/renderD*")
	var out []Device
	for _, n := range nodes {
		dev := strings.TrimPrefix(n, filepath.Clean(o.Root))
		if o.Root == "" || o.Root == "/" {
			dev = n
		}
		d := Device{Kind: GPU, ID: "vaapi:" + dev, Name: "render node " + filepath.Base(n), Caps: []string{"vaapi"}}
		driver := ""
		if drv, err := os.Readlink(o.path("/sys/class/drm/" + filepath.Base(n) + "/device/driver")); err == nil {
			driver = filepath.Base(drv)
			d.Name += " (" + driver + ")"
		}
		d.Usable, d.Reason = probe(o, "vaapi", dev)
		// Encoding is asked of the device, never assumed: many render
		// nodes decode only. Quick Sync is Intel's (i915, xe drivers).
		if d.Usable && o.ProbeEncoder != nil && o.ProbeEncoder("vaapi", dev) == nil {
			d.Caps = append(d.Caps, "vaapi-encode")
			if driver == "i915" || driver == "xe" {
				d.Caps = append(d.Caps, "qsv")
			}
		}
		out = append(out, d)
	}
	if len(out) == 0 {
		return nil, "no /dev/dri/renderD* device node"
	}
	return out, ""
}

func discoverNPU(o Options) ([]Device, string) {
	nodes := o.glob("/dev/accel/accel*")
	var out []Device
	for i, n := range nodes {
		d := Device{Kind: NPU, ID: fmt.Sprintf("npu:%d", i), Name: "accel node " + filepath.Base(n), Caps: []string{"onnx (OpenVINO NPU)"}}
		d.Reason = "needs ONNX Runtime with the OpenVINO execution provider (this build has none)"
		out = append(out, d)
	}
	if len(out) == 0 {
		return nil, "no /dev/accel/accel* device node (Intel NPU driver not present)"
	}
	return out, ""
}

// ortProviders maps execution providers to the library files ONNX Runtime
// loads them from, next to libonnxruntime.
var ortProviders = []struct {
	name, lib string
	kind      Kind
}{
	{"CUDAExecutionProvider", "libonnxruntime_providers_cuda.so", GPU},
	{"TensorrtExecutionProvider", "libonnxruntime_providers_tensorrt.so", GPU},
	{"ROCMExecutionProvider", "libonnxruntime_providers_rocm.so", GPU},
	{"MIGraphXExecutionProvider", "libonnxruntime_providers_migraphx.so", GPU},
	{"OpenVINOExecutionProvider", "libonnxruntime_providers_openvino.so", NPU},
	{"QNNExecutionProvider", "libonnxruntime_providers_qnn.so", NPU},
}

func discoverORT(o Options) ([]Device, []Device) {
	var out, absent []Device
	lib := o.ORTLibrary
	if lib == "" {
		absent = append(absent, Device{Kind: CPU, ID: "ort", Name: "ONNX Runtime", Reason: "library not found (run make setup)"})
		return nil, absent
	}
	out = append(out, Device{Kind: CPU, ID: "ort:CPUExecutionProvider", Name: "ONNX Runtime CPU", Caps: []string{"onnx"}, Usable: true})
	dir := filepath.Dir(lib)
	for _, p := range ortProviders {
		if _, err := os.Stat(filepath.Join(dir, p.lib)); err == nil {
			out = append(out, Device{Kind: p.kind, ID: "ort:" + p.name, Name: "ONNX Runtime " + p.name, Caps: []string{"onnx"},
				Reason: "provider library present; avflow does not drive this provider yet"})
			continue
		}
		absent = append(absent, Device{Kind: p.kind, ID: "ort:" + p.name, Name: "ONNX Runtime " + p.name,
			Reason: fmt.Sprintf("library built without it (%s not beside %s)", p.lib, filepath.Base(lib))})
	}
	if d := discoverWebGPU(o, lib); len(d.Caps) > 0 { // listed
		out = append(out, d)
	} else {
		absent = append(absent, d)
	}
	return out, absent
}

// WebGPUProvider is ONNX Runtime's WebGPU execution provider (Dawn, over
// Vulkan on Linux), built into the library make setup ships.
const WebGPUProvider = "WebGpuExecutionProvider"

// vulkanICDDirs are where Vulkan drivers (ICDs) announce themselves
// (the last: NVIDIA's container toolkit); VK_DRIVER_FILES and
// VK_ICD_FILENAMES, when set, name the files instead, as for the loader.
var vulkanICDDirs = []string{"/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d", "/usr/local/nvidia/share/vulkan/icd.d"}

// vulkanICDs are the Vulkan driver manifests the loader would read.
func vulkanICDs(o Options) []string {
	for _, env := range []string{"VK_DRIVER_FILES", "VK_ICD_FILENAMES"} {
		if v := os.Getenv(env); v != "" && (o.Root == "" || o.Root == "/") {
			return filepath.SplitList(v)
		}
	}
	var out []string
	for _, dir := range vulkanICDDirs {
		out = append(out, o.glob(dir+"/*.json")...)
	}
	return out
}

// discoverWebGPU lists the WebGPU execution provider when the library has
// it and a Vulkan GPU driver is there: an ICD other than Mesa's lavapipe
// (a CPU rasteriser, which Dawn refuses: "Vulkan
// shaderUniform*ArrayDynamicIndexing required") with its device node
// (/dev/nvidia0 for NVIDIA's, a /dev/dri render node for Mesa's). Whether
// Dawn takes the GPU, ONNX Runtime says when a stage's session starts; a
// stage it refuses runs on the CPU, saying why. Caps empty: not listed.
func discoverWebGPU(o Options, lib string) Device {
	d := Device{Kind: GPU, ID: "ort:" + WebGPUProvider, Name: "ONNX Runtime WebGPU (Dawn over Vulkan)"}
	if found, err := fileContains(lib, WebGPUProvider); err != nil || !found {
		d.Reason = "library built without it (no " + WebGPUProvider + " in " + filepath.Base(lib) + ")"
		return d
	}
	var gpus, cpuOnly []string
	for _, icd := range vulkanICDs(o) {
		name := strings.TrimSuffix(filepath.Base(icd), ".json")
		node := "/dev/dri/renderD*"
		switch {
		case strings.HasPrefix(name, "lvp_"):
			cpuOnly = append(cpuOnly, name)
			continue
		case strings.HasPrefix(name, "nvidia"):
			node = "/dev/nvidia[0-9]*"
		}
		if len(o.glob(node)) > 0 {
			gpus = append(gpus, name)
		}
	}
	switch {
	case len(gpus) > 0:
		d.Name += ": " + strings.Join(gpus, ", ")
		d.Caps = []string{"onnx", "webgpu"}
		d.Usable, d.Reason = o.Probe != nil, ""
		if !d.Usable {
			d.Reason = "not probed (discovery only)"
		}
	case len(cpuOnly) > 0:
		d.Reason = "no Vulkan GPU driver, only Mesa's lavapipe (" + strings.Join(cpuOnly, ", ") + "), a CPU rasteriser that Dawn refuses (Vulkan shaderUniform*ArrayDynamicIndexing required)"
	default:
		d.Reason = "no Vulkan driver (no ICD in " + strings.Join(vulkanICDDirs, ", ") + ")"
	}
	return d
}

// fileContains reports whether the file at path holds s, reading it a
// block at a time: the ONNX Runtime library is tens of megabytes, and
// reading it whole cost every run (inference or not) 34 MB of memory and
// its page faults, 3% of a short transcode.
func fileContains(path, s string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	needle := []byte(s)
	buf := make([]byte, 256<<10)
	keep := 0 // bytes of the last block kept, for a match across blocks
	for {
		n, err := io.ReadFull(f, buf[keep:])
		if bytes.Contains(buf[:keep+n], needle) {
			return true, nil
		}
		switch {
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			return false, nil
		case err != nil:
			return false, err
		}
		keep = min(len(needle)-1, keep+n)
		copy(buf, buf[len(buf)-keep:])
	}
}

func probe(o Options, kind, dev string) (bool, string) {
	if o.Probe == nil {
		return false, "not probed (discovery only)"
	}
	if err := o.Probe(kind, dev); err != nil {
		return false, err.Error()
	}
	return true, ""
}
