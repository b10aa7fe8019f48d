package accelerators

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func write(t *testing.T, root, p, data string) {
	t.Helper()
	full := filepath.Join(root, p)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(full, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func noCommands(string) (string, error) { return "", errors.New("not found") }

// TestDiscoverThisMachine: a CPU is always there and usable; every absent kind says why.
func TestDiscoverThisMachine(t *testing.T) {
	inv := Discover(Options{Probe: ProbeFFmpeg})
	cpus := inv.Usable(CPU)
	if len(cpus) == 0 || cpus[0].ID != "cpu:0" {
		t.Fatalf("no usable CPU: %+v", inv)
	}
	if !strings.Contains(strings.Join(cpus[0].Caps, ","), "cores") {
		t.Errorf("CPU caps lack the core count: %v", cpus[0].Caps)
	}
	if len(inv.Usable(GPU)) == 0 && inv.Why(GPU) == "none found" {
		t.Errorf("no GPU and no reason")
	}
	for _, d := range inv.Absent {
		if d.Reason == "" {
			t.Errorf("absent %s without a reason", d.Name)
		}
	}
}

// TestDiscoverFakeTree: parsing of fake /proc and /dev trees; nothing fake is usable.
func TestDiscoverFakeTree(t *testing.T) {
	root := t.TempDir()
	write(t, root, "/proc/cpuinfo", "processor\t: 0\nmodel name\t: Fake Xeon\nflags\t\t: fpu sse4_2 avx2 fma avx512f amx_tile\nprocessor\t: 1\n")
	write(t, root, "/proc/driver/nvidia/gpus/0000:01:00.0/information", "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ: 1\n")
	write(t, root, "/proc/driver/nvidia/gpus/0000:02:00.0/information", "Model: \t\t NVIDIA L4\n")
	write(t, root, "/dev/dri/renderD128", "")
	write(t, root, "/dev/accel/accel0", "")
	ortDir := filepath.Join(root, "ort")
	write(t, root, "/ort/libonnxruntime.so.1", "")
	write(t, root, "/ort/libonnxruntime_providers_cuda.so", "")
	inv := Discover(Options{Root: root, ORTLibrary: filepath.Join(ortDir, "libonnxruntime.so.1"), LookPath: noCommands})
	byID := map[string]Device{}
	for _, d := range inv.Devices {
		byID[d.ID] = d
	}
	cpu := byID["cpu:0"]
	if cpu.Name != "Fake Xeon" || !strings.Contains(strings.Join(cpu.Caps, ","), "2 cores,sse4.2,avx2,fma,avx512") || !strings.Contains(strings.Join(cpu.Caps, ","), "amx") {
		t.Errorf("cpu: %+v", cpu)
	}
	h100, l4 := byID["cuda:0"], byID["cuda:1"]
	if h100.Name != "NVIDIA H100 80GB HBM3" || slices.Contains(h100.Caps, "nvenc") || !slices.Contains(h100.Caps, "nvdec") {
		t.Errorf("H100 (NVDEC, no NVENC): %+v", h100)
	}
	if inv.KindOf("cuda:1") != GPU || inv.KindOf("cpu:0") != CPU || inv.KindOf("cuda:9") != "" {
		t.Errorf("KindOf: %q %q %q", inv.KindOf("cuda:1"), inv.KindOf("cpu:0"), inv.KindOf("cuda:9"))
	}
	if !slices.Contains(l4.Caps, "nvenc") {
		t.Errorf("L4 has NVENC: %+v", l4)
	}
	if _, ok := byID["vaapi:/dev/dri/renderD128"]; !ok {
		t.Errorf("render node not found: %v", byID)
	}
	if _, ok := byID["npu:0"]; !ok {
		t.Errorf("NPU not found")
	}
	if _, ok := byID["ort:CUDAExecutionProvider"]; !ok {
		t.Errorf("CUDA EP library not seen")
	}
	for _, d := range inv.Devices {
		if d.Kind != CPU && d.Usable {
			t.Errorf("fake device %s reported usable", d.ID)
		}
	}
	var tensorrt bool
	for _, d := range inv.Absent {
		if d.ID == "ort:TensorrtExecutionProvider" && strings.Contains(d.Reason, "built without it") {
			tensorrt = true
		}
	}
	if !tensorrt {
		t.Errorf("absent TensorRT EP not explained: %+v", inv.Absent)
	}
}

func TestDiscoverNothingSaysWhy(t *testing.T) {
	inv := Discover(Options{Root: t.TempDir(), LookPath: noCommands})
	if !strings.Contains(inv.Why(GPU), "no NVIDIA driver") || !strings.Contains(inv.Why(GPU), "no /dev/dri/renderD*") {
		t.Errorf("GPU reason: %s", inv.Why(GPU))
	}
	if !strings.Contains(inv.Why(NPU), "/dev/accel") {
		t.Errorf("NPU reason: %s", inv.Why(NPU))
	}
}

// TestDiscoverDeviceNodesOnly: a sandbox that shows /dev/nvidia0 but no
// driver /proc entries still lists the GPU, for FFmpeg's probe to decide.
func TestDiscoverDeviceNodesOnly(t *testing.T) {
	root := t.TempDir()
	write(t, root, "/dev/nvidia0", "")
	write(t, root, "/dev/nvidiactl", "")
	var probed []string
	inv := Discover(Options{Root: root, LookPath: noCommands, Probe: func(kind, dev string) error {
		probed = append(probed, kind+":"+dev)
		return errors.New("cuInit failed")
	}})
	gpus := 0
	for _, d := range inv.Devices {
		if d.Kind == GPU && d.ID == "cuda:0" {
			gpus++
			if d.Usable || d.Reason != "cuInit failed" {
				t.Errorf("probe failure not reported: %+v", d)
			}
		}
	}
	if gpus != 1 || !slices.Equal(probed, []string{"cuda:0"}) {
		t.Errorf("want one GPU probed as cuda 0, got %d devices, probes %v", gpus, probed)
	}
}

func TestBind(t *testing.T) {
	inv := Inventory{Devices: []Device{{Kind: CPU, ID: "cpu:0", Usable: true}, {Kind: GPU, ID: "cuda:0", Usable: true}},
		Absent: []Device{{Kind: NPU, Name: "NPU", Reason: "no /dev/accel"}}}
	cpuOnly := Inventory{Devices: []Device{{Kind: CPU, ID: "cpu:0", Usable: true}}, Absent: []Device{{Kind: GPU, Name: "NVIDIA GPU", Reason: "no driver"}}}
	tests := []struct {
		name     string
		inv      Inventory
		req      Request
		want     string
		fallback bool
		err      bool
		why      string
	}{
		{"cpu", inv, Request{Accelerator: "cpu"}, "cpu:0", false, false, ""},
		{"gpu here", inv, Request{Accelerator: "gpu", Supported: []Kind{CPU, GPU}}, "cuda:0", false, false, ""},
		{"gpu missing falls back", cpuOnly, Request{Accelerator: "gpu", Supported: []Kind{CPU, GPU}}, "cpu:0", true, false, "no driver"},
		{"gpu missing strict", cpuOnly, Request{Stage: "dec", Accelerator: "gpu", Strict: true, Supported: []Kind{CPU, GPU}}, "", false, true, "no driver"},
		{"stage without gpu code", inv, Request{Accelerator: "gpu"}, "cpu:0", true, false, "no gpu implementation"},
		{"npu then gpu", inv, Request{Accelerator: "npu", Fallback: []string{"gpu"}, Supported: []Kind{CPU, GPU, NPU}}, "cuda:0", true, false, "no /dev/accel"},
		{"auto prefers gpu", inv, Request{Accelerator: "auto", Supported: []Kind{CPU, GPU}}, "cuda:0", false, false, ""},
		{"exact device missing", inv, Request{Accelerator: "gpu", Device: "cuda:3", Supported: []Kind{CPU, GPU}}, "cpu:0", true, false, "cuda:3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := Bind(tt.inv, tt.req)
			if tt.err {
				if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), tt.why) {
					t.Fatalf("got %v, want ErrUnavailable mentioning %q", err, tt.why)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b.Device.ID != tt.want || b.Fallback != tt.fallback || !strings.Contains(b.Why, tt.why) {
				t.Fatalf("got %+v, want %s fallback=%v why~%q", b, tt.want, tt.fallback, tt.why)
			}
		})
	}
}

// TestBindCheck: a device the stage cannot use is passed over with its reason.
func TestBindCheck(t *testing.T) {
	inv := Inventory{Devices: []Device{{Kind: CPU, ID: "cpu:0", Usable: true},
		{Kind: GPU, ID: "cuda:0", Name: "H100", Usable: true}, {Kind: GPU, ID: "cuda:1", Name: "L4", Caps: []string{"nvenc"}, Usable: true}}}
	check := func(d Device) error {
		if !slices.Contains(d.Caps, "nvenc") {
			return errors.New(d.ID + " has no NVENC")
		}
		return nil
	}
	b, err := Bind(inv, Request{Accelerator: "gpu", Supported: []Kind{CPU, GPU}, Check: check})
	if err != nil || b.Device.ID != "cuda:1" {
		t.Fatalf("want cuda:1, got %+v %v", b, err)
	}
	inv.Devices = inv.Devices[:2]
	b, err = Bind(inv, Request{Accelerator: "gpu", Supported: []Kind{CPU, GPU}, Check: check})
	if err != nil || b.Device.ID != "cpu:0" || !b.Fallback || !strings.Contains(b.Why, "cuda:0 has no NVENC") {
		t.Fatalf("want a CPU fallback naming NVENC, got %+v %v", b, err)
	}
	_, err = Bind(inv, Request{Stage: "enc", Accelerator: "gpu", Strict: true, Supported: []Kind{CPU, GPU}, Check: check})
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "has no NVENC") {
		t.Fatalf("strict: %v", err)
	}
}

// TestNVENCIsAskedNotAssumed: on a usable GPU, NVENC is what opening an
// encoder says, whatever the model name suggests.
func TestNVENCIsAskedNotAssumed(t *testing.T) {
	root := t.TempDir()
	write(t, root, "/proc/driver/nvidia/gpus/0000:01:00.0/information", "Model: \t\t NVIDIA L4\n")
	usable := func(string, string) error { return nil }
	tests := []struct {
		name      string
		encoder   func(string, string) error
		wantNVENC bool
	}{
		{"encoder opens", func(string, string) error { return nil }, true},
		{"encoder refuses", func(string, string) error { return errors.New("unsupported device") }, false},
		{"not asked: by name", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inv := Discover(Options{Root: root, LookPath: noCommands, Probe: usable, ProbeEncoder: tt.encoder})
			for _, d := range inv.Devices {
				if d.ID == "cuda:0" {
					if got := slices.Contains(d.Caps, "nvenc"); got != tt.wantNVENC {
						t.Fatalf("nvenc %v, want %v (%+v)", got, tt.wantNVENC, d)
					}
					return
				}
			}
			t.Fatal("no cuda:0")
		})
	}
}

// TestVAAPIEncodingIsAsked: a render node encodes only when opening
// h264_vaapi on it works; Quick Sync is offered on Intel's drivers only.
func TestVAAPIEncodingIsAsked(t *testing.T) {
	usable := func(string, string) error { return nil }
	opens := func(string, string) error { return nil }
	refuses := func(string, string) error { return errors.New("no VAProfileH264 entrypoint") }
	tests := []struct {
		name, driver string
		encoder      func(string, string) error
		want         []string
	}{
		{"intel encodes", "i915", opens, []string{"vaapi", "vaapi-encode", "qsv"}},
		{"intel xe encodes", "xe", opens, []string{"vaapi", "vaapi-encode", "qsv"}},
		{"amd encodes", "amdgpu", opens, []string{"vaapi", "vaapi-encode"}},
		{"decode only", "amdgpu", refuses, []string{"vaapi"}},
		{"not asked", "i915", nil, []string{"vaapi"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			write(t, root, "/dev/dri/renderD128", "")
			write(t, root, "/sys/bus/pci/drivers/"+tt.driver+"/bind", "")
			dev := filepath.Join(root, "/sys/class/drm/renderD128/device")
			if err := os.MkdirAll(dev, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(filepath.Join(root, "/sys/bus/pci/drivers/"+tt.driver), filepath.Join(dev, "driver")); err != nil {
				t.Fatal(err)
			}
			inv := Discover(Options{Root: root, LookPath: noCommands, Probe: usable, ProbeEncoder: tt.encoder})
			for _, d := range inv.Devices {
				if d.ID == "vaapi:/dev/dri/renderD128" {
					if !slices.Equal(d.Caps, tt.want) || !strings.Contains(d.Name, tt.driver) {
						t.Fatalf("got %s %v, want caps %v", d.Name, d.Caps, tt.want)
					}
					return
				}
			}
			t.Fatalf("no render node in %+v", inv.Devices)
		})
	}
}

// TestDiscoverWebGPU: ONNX Runtime's WebGPU provider is listed when the
// library has it and a Vulkan GPU driver has its device node; Mesa's
// lavapipe alone, no driver, or a library without it each say why.
func TestDiscoverWebGPU(t *testing.T) {
	tests := []struct {
		name   string
		files  []string
		lib    string
		listed bool
		why    string
	}{
		{"NVIDIA driver and device", []string{"/usr/share/vulkan/icd.d/nvidia_icd.json", "/dev/nvidia0"}, WebGPUProvider, true, "not probed"},
		{"Mesa Intel driver and render node", []string{"/usr/share/vulkan/icd.d/intel_icd.x86_64.json", "/dev/dri/renderD128"}, WebGPUProvider, true, "not probed"},
		{"a driver without its device", []string{"/etc/vulkan/icd.d/nvidia_icd.json"}, WebGPUProvider, false, "no Vulkan driver"},
		{"lavapipe only (this machine)", []string{"/usr/share/vulkan/icd.d/lvp_icd.x86_64.json", "/usr/share/vulkan/icd.d/radeon_icd.x86_64.json"}, WebGPUProvider, false, "only Mesa's lavapipe (lvp_icd.x86_64)"},
		{"no Vulkan at all", nil, WebGPUProvider, false, "no Vulkan driver"},
		{"a library without WebGPU", []string{"/usr/share/vulkan/icd.d/nvidia_icd.json", "/dev/nvidia0"}, "CPUExecutionProvider", false, "library built without it"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			for _, f := range tt.files {
				write(t, root, f, "{}")
			}
			write(t, root, "/ort/libonnxruntime.so.1", "\x7fELF..."+tt.lib+"...")
			inv := Discover(Options{Root: root, ORTLibrary: filepath.Join(root, "ort", "libonnxruntime.so.1"), LookPath: noCommands})
			id := "ort:" + WebGPUProvider
			var found *Device
			for _, list := range [][]Device{inv.Devices, inv.Absent} {
				for i := range list {
					if list[i].ID == id {
						found = &list[i]
					}
				}
			}
			if found == nil {
				t.Fatalf("%s neither listed nor absent", id)
			}
			if listed := inv.KindOf(id) == GPU; listed != tt.listed || !strings.Contains(found.Reason, tt.why) || found.Usable {
				t.Errorf("listed %v (want %v), usable %v (fake: never), reason %q (want %q)", listed, tt.listed, found.Usable, found.Reason, tt.why)
			}
		})
	}
}
