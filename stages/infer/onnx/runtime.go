// Package onnx runs ONNX models through ONNX Runtime (yalue/onnxruntime_go).
// The C library is loaded at run time: see LibraryPath for where it is looked for.
package onnx

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/avflow/avflow/accelerators"
	ort "github.com/yalue/onnxruntime_go"
)

// WantVersion is the ONNX Runtime version onnxruntime_go v1.27.0 is written against.
const WantVersion = "1.24.1"

// Sentinel errors.
var (
	ErrLibrary = errors.New("onnx: ONNX Runtime library unavailable")
	ErrVersion = errors.New("onnx: wrong ONNX Runtime version")
	ErrModel   = errors.New("onnx: model cannot be used")
	// ErrProvider reports an execution provider ONNX Runtime would not take.
	ErrProvider = errors.New("onnx: execution provider unavailable")
)

// EnvLibrary names the environment variable that points at libonnxruntime.so.
const EnvLibrary = "AVFLOW_ORT_LIB"

var (
	initOnce sync.Once
	initErr  error
	libPath  string
	override string
)

func init() {
	accelerators.ORTLibrary = func() string {
		if p := LibraryPath(); fileExists(p) {
			return p
		}
		return ""
	}
}

// SetLibraryPath chooses the library file before the first Init (a CLI flag).
func SetLibraryPath(p string) { override = p }

// LibraryPath is where the library is looked for: SetLibraryPath, then
// $AVFLOW_ORT_LIB, then third_party/onnxruntime/libonnxruntime.so.1 next to
// the executable, one folder up from it (bin/avflow), or in the working
// folder and its parents (tests), then the system's libonnxruntime.so.
func LibraryPath() string {
	if override != "" {
		return override
	}
	if p := os.Getenv(EnvLibrary); p != "" {
		return p
	}
	rel := filepath.Join("third_party", "onnxruntime", "libonnxruntime.so.1")
	var dirs []string
	if exe, err := os.Executable(); err == nil {
		d := filepath.Dir(exe)
		dirs = append(dirs, d, filepath.Dir(d))
	}
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			dirs = append(dirs, d)
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	for _, d := range dirs {
		if p := filepath.Join(d, rel); fileExists(p) {
			return p
		}
	}
	return "libonnxruntime.so"
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// Init loads the library once and checks its version.
func Init() error {
	initOnce.Do(func() {
		libPath = LibraryPath()
		if filepath.IsAbs(libPath) && !fileExists(libPath) {
			initErr = fmt.Errorf("%w: %s does not exist (run make setup, or set %s)", ErrLibrary, libPath, EnvLibrary)
			return
		}
		v, err := probeVersion(libPath)
		if err != nil {
			initErr = fmt.Errorf("%w: loading %s failed: %w (run make setup, or set %s)", ErrLibrary, libPath, err, EnvLibrary)
			return
		}
		if v != WantVersion {
			initErr = fmt.Errorf("%w: %s is ONNX Runtime %s, avflow needs %s (run make setup, or set %s)", ErrVersion, libPath, v, WantVersion, EnvLibrary)
			return
		}
		ort.SetSharedLibraryPath(libPath)
		if err := ort.InitializeEnvironment(ort.WithLogLevelError()); err != nil {
			initErr = fmt.Errorf("%w: loading %s failed: %w (run make setup, or set %s)", ErrLibrary, libPath, err, EnvLibrary)
			return
		}
		if v := ort.GetVersion(); v != WantVersion {
			_ = ort.DestroyEnvironment()
			initErr = fmt.Errorf("%w: %s is ONNX Runtime %s, avflow needs %s", ErrVersion, libPath, v, WantVersion)
		}
	})
	return initErr
}

// Version returns the loaded library's version and path.
func Version() (string, string, error) {
	if err := Init(); err != nil {
		return "", "", err
	}
	return ort.GetVersion(), libPath, nil
}

// Options tune a session.
type Options struct {
	IntraOpThreads int // 0: ONNX Runtime's default
	InterOpThreads int
	// OptLevel: "disable", "basic", "extended" or "all" (default).
	OptLevel string
	// Provider is an execution provider to run the model with, ahead of
	// the CPU: CUDAExecutionProvider, TensorrtExecutionProvider,
	// OpenVINOExecutionProvider or any other name ONNX Runtime knows; ""
	// is the CPU alone. ProviderOptions go to it (device_id, device_type).
	Provider        string
	ProviderOptions map[string]string
	// FreeBatch names inputs whose declared batch size of 1 the graph does
	// not depend on: it is freed at load (see FreeBatch).
	FreeBatch []string
	// Spin lets ONNX Runtime's worker threads spin between runs, as it does
	// by default: a little lower latency for a model that has the cores to
	// itself, but in a pipeline the spinning takes cores the other stages
	// need (the privacy example runs 1.35-1.48x as fast without it on 2 cores).
	Spin bool
}

// WebGPU is the execution provider built into the ONNX Runtime library
// make setup ships: Dawn, over Vulkan on Linux.
const WebGPU = accelerators.WebGPUProvider

// appendProvider adds an execution provider to session options.
func appendProvider(so *ort.SessionOptions, name string, opts map[string]string) error {
	var err error
	switch name {
	case "CUDAExecutionProvider":
		var po *ort.CUDAProviderOptions
		if po, err = ort.NewCUDAProviderOptions(); err == nil {
			defer po.Destroy()
			if err = po.Update(opts); err == nil {
				err = so.AppendExecutionProviderCUDA(po)
			}
		}
	case "TensorrtExecutionProvider":
		var po *ort.TensorRTProviderOptions
		if po, err = ort.NewTensorRTProviderOptions(); err == nil {
			defer po.Destroy()
			if err = po.Update(opts); err == nil {
				err = so.AppendExecutionProviderTensorRT(po)
			}
		}
	case "OpenVINOExecutionProvider":
		err = so.AppendExecutionProviderOpenVINO(opts)
	case WebGPU:
		err = so.AppendExecutionProvider("WebGPU", opts) // ONNX Runtime's short name
	default:
		err = so.AppendExecutionProvider(strings.TrimSuffix(name, "ExecutionProvider"), opts)
	}
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrProvider, name, err)
	}
	return nil
}

// TensorInfo is a model input or output.
type TensorInfo struct {
	Name  string
	Shape []int64 // -1 for dynamic dimensions
	Type  string
}

// Session is a loaded model. Run is safe for concurrent use (ONNX Runtime
// sessions are), so the workers of a stage can share one.
type Session struct {
	Path    string
	Inputs  []TensorInfo
	Outputs []TensorInfo
	s       *ort.DynamicAdvancedSession

	// Reused between runs (a session is used by one goroutine at a time in
	// avflow): input tensors over the caller's buffers, and output tensors
	// when the model's output shapes are static.
	mu      sync.Mutex
	inCache [][2]cachedInput
	outs    []*ort.Tensor[float32]
}

type cachedInput struct {
	shape []int64
	data  *float32
	n     int
	t     *ort.Tensor[float32]
}

// Open loads a model.
func Open(path string, o Options) (*Session, error) {
	if err := Init(); err != nil {
		return nil, err
	}
	var data []byte // the rewritten model (FreeBatch), or nil: the file
	if len(o.FreeBatch) > 0 {
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrModel, err)
		}
		if data, err = FreeBatch(raw, o.FreeBatch); err != nil {
			return nil, fmt.Errorf("%w: %s: freeing the batch dimension failed: %w", ErrModel, path, err)
		}
	}
	ins, outs, err := inputOutputInfo(path, data)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrModel, path, err)
	}
	so, err := ort.NewSessionOptions()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrModel, err)
	}
	defer so.Destroy()
	threads := o.IntraOpThreads
	if threads <= 0 {
		threads = runtime.NumCPU()
	}
	if err := so.SetIntraOpNumThreads(threads); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrModel, err)
	}
	if o.InterOpThreads > 0 {
		if err := so.SetInterOpNumThreads(o.InterOpThreads); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrModel, err)
		}
	}
	if !o.Spin {
		for _, k := range []string{"session.intra_op.allow_spinning", "session.inter_op.allow_spinning"} {
			if err := so.AddSessionConfigEntry(k, "0"); err != nil {
				return nil, fmt.Errorf("%w: %s: %w", ErrModel, k, err)
			}
		}
	}
	if o.Provider != "" {
		if err := appendProvider(so, o.Provider, o.ProviderOptions); err != nil {
			return nil, err
		}
	}
	var lvl ort.GraphOptimizationLevel = ort.GraphOptimizationLevelEnableAll
	switch o.OptLevel {
	case "disable":
		lvl = ort.GraphOptimizationLevelDisableAll
	case "basic":
		lvl = ort.GraphOptimizationLevelEnableBasic
	case "extended":
		lvl = ort.GraphOptimizationLevelEnableExtended
	}
	if err := so.SetGraphOptimizationLevel(lvl); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrModel, err)
	}
	s := &Session{Path: path}
	var inNames, outNames []string
	for _, i := range ins {
		s.Inputs = append(s.Inputs, TensorInfo{Name: i.Name, Shape: []int64(i.Dimensions), Type: i.DataType.String()})
		inNames = append(inNames, i.Name)
	}
	for _, i := range outs {
		s.Outputs = append(s.Outputs, TensorInfo{Name: i.Name, Shape: []int64(i.Dimensions), Type: i.DataType.String()})
		outNames = append(outNames, i.Name)
	}
	var ds *ort.DynamicAdvancedSession
	if data != nil {
		ds, err = ort.NewDynamicAdvancedSessionWithONNXData(data, inNames, outNames, so)
	} else {
		ds, err = ort.NewDynamicAdvancedSession(path, inNames, outNames, so)
	}
	if err != nil && o.Provider != "" {
		return nil, fmt.Errorf("%w: %s with %s: %w", ErrProvider, path, o.Provider, err)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrModel, path, err)
	}
	s.s = ds
	return s, nil
}

// inputOutputInfo describes the model in data, or in the file when data is nil.
func inputOutputInfo(path string, data []byte) ([]ort.InputOutputInfo, []ort.InputOutputInfo, error) {
	if data != nil {
		return ort.GetInputOutputInfoWithONNXData(data)
	}
	return ort.GetInputOutputInfo(path)
}

// Tensor is a float32 input or output.
type Tensor struct {
	Shape []int64
	Data  []float32
}

// Run runs the model on float32 inputs (in the model's input order) and
// returns float32 outputs (in its output order). Non-float inputs (such as
// a VAD's int64 sample rate) are given in int64s by name. The returned data
// may alias buffers the session reuses: it is valid until the next Run.
func (s *Session) Run(inputs []Tensor, int64s map[string][]int64) ([]Tensor, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	vals := make([]ort.Value, 0, len(s.Inputs))
	var temps []ort.Value
	defer func() {
		for _, v := range temps {
			_ = v.Destroy()
		}
	}()
	fi := 0
	for _, in := range s.Inputs {
		if v, ok := int64s[in.Name]; ok {
			var val ort.Value
			var err error
			if len(v) == 1 && len(in.Shape) == 0 {
				val, err = ort.NewScalar(v[0])
			} else {
				val, err = ort.NewTensor(ort.NewShape(int64(len(v))), v)
			}
			if err != nil {
				return nil, fmt.Errorf("%w: input %q: %w", ErrModel, in.Name, err)
			}
			temps = append(temps, val)
			vals = append(vals, val)
			continue
		}
		if fi >= len(inputs) {
			return nil, fmt.Errorf("%w: %s: no data for input %q", ErrModel, s.Path, in.Name)
		}
		t, err := s.inputTensor(fi, inputs[fi])
		if err != nil {
			return nil, fmt.Errorf("%w: input %q: %w", ErrModel, in.Name, err)
		}
		vals = append(vals, t)
		fi++
	}
	outs := make([]ort.Value, len(s.Outputs))
	if s.staticOutputs() {
		for i, t := range s.outs {
			outs[i] = t
		}
	}
	if err := s.s.Run(vals, outs); err != nil {
		return nil, fmt.Errorf("onnx: running %s failed: %w", filepath.Base(s.Path), err)
	}
	res := make([]Tensor, len(outs))
	for i, o := range outs {
		t, ok := o.(*ort.Tensor[float32])
		if !ok {
			_ = o.Destroy()
			return nil, fmt.Errorf("%w: output %q is %s, not float32", ErrModel, s.Outputs[i].Name, s.Outputs[i].Type)
		}
		if s.outs != nil {
			res[i] = Tensor{Shape: t.GetShape(), Data: t.GetData()}
			continue
		}
		res[i] = Tensor{Shape: t.GetShape(), Data: append([]float32(nil), t.GetData()...)}
		_ = o.Destroy()
	}
	return res, nil
}

// inputTensor wraps the caller's buffer, reusing the tensor of an earlier
// run over the same buffer and shape. Two are kept per input, for callers
// that fill one buffer while the other is being run.
func (s *Session) inputTensor(i int, in Tensor) (*ort.Tensor[float32], error) {
	for len(s.inCache) <= i {
		s.inCache = append(s.inCache, [2]cachedInput{})
	}
	cache := &s.inCache[i]
	for k := range cache {
		c := &cache[k]
		if c.t != nil && len(in.Data) > 0 && c.data == &in.Data[0] && c.n == len(in.Data) && slices.Equal(c.shape, in.Shape) {
			if k == 1 { // most recent first
				cache[0], cache[1] = cache[1], cache[0]
				return cache[0].t, nil
			}
			return c.t, nil
		}
	}
	if old := cache[1].t; old != nil {
		_ = old.Destroy()
	}
	t, err := ort.NewTensor(ort.NewShape(in.Shape...), in.Data)
	if err != nil {
		cache[1] = cachedInput{}
		return nil, err
	}
	c := cachedInput{shape: slices.Clone(in.Shape), n: len(in.Data), t: t}
	if len(in.Data) > 0 {
		c.data = &in.Data[0]
	}
	cache[0], cache[1] = c, cache[0]
	return t, nil
}

// staticOutputs allocates reusable output tensors once, when every output
// shape is fixed and float32.
func (s *Session) staticOutputs() bool {
	if s.outs != nil {
		return true
	}
	for _, o := range s.Outputs {
		if o.Type != ort.TensorElementDataType(ort.TensorElementDataTypeFloat).String() {
			return false
		}
		for _, d := range o.Shape {
			if d <= 0 {
				return false
			}
		}
	}
	outs := make([]*ort.Tensor[float32], len(s.Outputs))
	for i, o := range s.Outputs {
		t, err := ort.NewEmptyTensor[float32](ort.NewShape(o.Shape...))
		if err != nil {
			for _, x := range outs[:i] {
				_ = x.Destroy()
			}
			return false
		}
		outs[i] = t
	}
	s.outs = outs
	return true
}

// Close frees the session.
func (s *Session) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, cache := range s.inCache {
		for _, c := range cache {
			if c.t != nil {
				_ = c.t.Destroy()
			}
		}
	}
	s.inCache = nil
	for _, t := range s.outs {
		_ = t.Destroy()
	}
	s.outs = nil
	if s.s != nil {
		err := s.s.Destroy()
		s.s = nil
		return err
	}
	return nil
}
