package accelerators

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// ErrUnavailable reports a stage whose device cannot be had (strict, or no fallback left).
var ErrUnavailable = errors.New("accelerator unavailable")

// Request is what a stage asks for.
type Request struct {
	Stage       string
	Accelerator string   // cpu, gpu, npu or auto
	Device      string   // optional exact device id, e.g. cuda:0
	Fallback    []string // kinds to try next, in order
	Strict      bool     // fail instead of falling back
	Supported   []Kind   // kinds the stage has an implementation for (empty: cpu)
	// Check, when set, says whether the stage can do its work on a
	// particular device (an H.264 encoder on a GPU without NVENC cannot).
	Check func(Device) error
}

// Binding is the device a stage runs on.
type Binding struct {
	Device   Device
	Wanted   string // what was asked for
	Fallback bool   // the device is not the one asked for
	Why      string // why the one asked for was not used
}

// Bind chooses a device for a stage: the requested kind if this machine has
// a usable one and the stage can run there, else the fallback list, else
// (unless strict) the CPU.
func Bind(inv Inventory, r Request) (Binding, error) {
	supported := r.Supported
	if len(supported) == 0 {
		supported = []Kind{CPU}
	}
	want := r.Accelerator
	if want == "" {
		want = "cpu"
	}
	order := []string{want}
	if want == "auto" {
		order = []string{"gpu", "npu", "cpu"}
	}
	order = append(order, r.Fallback...)
	if !r.Strict {
		order = append(order, "cpu")
	}
	var why []string
	for i, k := range order {
		kind := Kind(k)
		if !slices.Contains(supported, kind) {
			why = append(why, fmt.Sprintf("stage has no %s implementation yet", kind))
			continue
		}
		usable := inv.Usable(kind)
		if r.Device != "" && i == 0 {
			var match []Device
			for _, d := range usable {
				if d.ID == r.Device {
					match = append(match, d)
				}
			}
			if len(match) == 0 {
				why = append(why, fmt.Sprintf("device %s is not usable here", r.Device))
				continue
			}
			usable = match
		}
		if len(usable) == 0 {
			why = append(why, fmt.Sprintf("no usable %s (%s)", kind, inv.Why(kind)))
			continue
		}
		if r.Check != nil && kind != CPU {
			var able []Device
			for _, d := range usable {
				if err := r.Check(d); err != nil {
					why = append(why, err.Error())
					continue
				}
				able = append(able, d)
			}
			if usable = able; len(usable) == 0 {
				continue
			}
		}
		b := Binding{Device: usable[0], Wanted: want, Fallback: i > 0 && want != "auto"}
		if b.Fallback || (want == "auto" && kind == CPU) {
			b.Why = strings.Join(why, "; ")
		}
		return b, nil
	}
	return Binding{}, fmt.Errorf("%w: stage %q asked for %s (strict): %s", ErrUnavailable, r.Stage, want, strings.Join(why, "; "))
}

var (
	machineOnce sync.Once
	machine     Inventory
)

// ORTLibrary, when set, names the ONNX Runtime library whose execution
// providers Machine lists when it is given none (the infer stage's onnx
// package sets it, so runs and calibration see the providers too).
var ORTLibrary func() string

// Machine discovers this machine once per process (with FFmpeg probes).
func Machine(ortLibrary string) Inventory {
	machineOnce.Do(func() {
		if ortLibrary == "" && ORTLibrary != nil {
			ortLibrary = ORTLibrary()
		}
		machine = Discover(Options{Probe: ProbeFFmpeg, ProbeEncoder: ProbeEncoder, ORTLibrary: ortLibrary})
	})
	return machine
}
