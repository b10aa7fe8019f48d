package pipeline

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/avflow/avflow/accelerators"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/stage"
)

// Sentinel errors of the registry.
var (
	ErrDuplicateKind = errors.New("stage kind already registered")
	ErrUnknownKind   = errors.New("unknown stage kind")
	ErrBadSpec       = errors.New("bad stage spec")
)

// ParamType is the type of a stage param.
type ParamType string

const (
	TypeString   ParamType = "string"
	TypeInt      ParamType = "int"
	TypeFloat    ParamType = "float"
	TypeBool     ParamType = "bool"
	TypeDuration ParamType = "duration" // "500ms", "6s"
	TypeMap      ParamType = "map"      // string -> string, e.g. FFmpeg options
)

// Param documents one param of a stage kind.
type Param struct {
	Name     string
	Type     ParamType
	Default  any // nil: no default
	Required bool
	Enum     []string // allowed values of a string param, if set
	Doc      string
}

// PortType is what flows on an edge: compressed packets or raw frames of a media type.
type PortType struct {
	Kind  envelope.Kind  // KindPacket or KindFrame
	Media envelope.Media // MediaUnknown means "decided at run time"
}

func (t PortType) String() string {
	m := t.Media.String()
	if t.Media == envelope.MediaUnknown {
		m = "any"
	}
	return m + " " + t.Kind.String() + "s"
}

// Port is a named, typed output of a stage.
type Port struct {
	Name string
	Type PortType
	// Unread says what the stage does with the port when no stage of the
	// pipeline reads it (the zero value: UnreadPublished).
	Unread Unread
}

// Unread is what a stage does with an output port no stage of the pipeline
// reads; Config.WarningsFor says it to the user.
type Unread int

const (
	// UnreadPublished: the stage produces the port's data anyway. Over the
	// NATS transport it is published on the port's subject, for outside
	// consumers; over the local transport it is dropped.
	UnreadPublished Unread = iota
	// UnreadSkipped: the stage does not produce it (a source does not
	// read that stream from its input; see Init.Consumers). Warned about.
	UnreadSkipped
	// UnreadQuiet: as UnreadSkipped, but what the stage's params asked for
	// (a source with audio: false): no warning.
	UnreadQuiet
	// UnreadBranches: the port is read by branches the stage itself adds
	// to the graph while it runs (personalise's variants): in this
	// process only, never published on NATS (in transport auto), and
	// dropped while no branch reads it. No warning.
	UnreadBranches
)

// Spec describes a stage kind: its docs, params, typing and constructor.
type Spec struct {
	Kind    string
	Summary string
	Params  []Param
	// MinInputs and MaxInputs bound the number of input edges (MaxInputs -1: any).
	MinInputs, MaxInputs int
	// Ports checks the input edge types and returns the output ports. It runs
	// at validation time; an error names the problem without position.
	Ports func(p Params, in []PortType) ([]Port, error)
	// Check validates params beyond their types (files exist, values fit). Optional.
	Check func(p Params, dir string) error
	// New builds a running stage.
	New func(ctx context.Context, in Init) (stage.Stage, error)
	// Accelerators are the device kinds the stage has an implementation
	// for; empty means CPU only. A stage asked for another kind falls back.
	Accelerators []accelerators.Kind
	// AcceleratorsFor, when set, narrows Accelerators by the stage's input
	// types (a decoder has a GPU path for video, not for audio).
	AcceleratorsFor func(in []PortType) []accelerators.Kind
	// DeviceCheck, when set, says whether the stage with these params can
	// run on a particular GPU/NPU; a device it refuses is passed over at
	// binding, with the reason in the fallback warning.
	DeviceCheck func(p Params, in []PortType, d accelerators.Device) error
	// Replicable, when set, says whether several instances of the stage may
	// share its input with these params (nil error), or why not. Unset:
	// the stage keeps state across messages and runs as one instance.
	Replicable func(p Params) error
	// Control says the stage takes commands from outside clients through
	// the run's NATS server (JetStream key-value: personalise's viewer
	// profiles). A run without an outside server then opens its embedded
	// one on a loopback port, with JetStream and credentials made for the
	// run (as with Options.Listen), so that other processes can reach it.
	Control bool
	// Buckets, when set, names the JetStream key-value buckets the stage
	// makes, reads and writes (personalise: its viewer bucket), for the
	// permissions its process needs (avflow permissions).
	Buckets func(p Params, pipeline string) []string
}

// ReplicasError says why several instances of the stage cannot share its
// input with these params (nil: they can).
func (s *Spec) ReplicasError(p Params) error {
	if s.Replicable == nil {
		return fmt.Errorf("kind %s keeps state from message to message and runs as one instance", s.Kind)
	}
	return s.Replicable(p)
}

// supported returns the device kinds a stage with these inputs can run on.
func (s *Spec) supported(in []PortType) []accelerators.Kind {
	if s.AcceleratorsFor != nil {
		return s.AcceleratorsFor(in)
	}
	return s.Accelerators
}

func (s *Spec) param(name string) *Param {
	for i := range s.Params {
		if s.Params[i].Name == name {
			return &s.Params[i]
		}
	}
	return nil
}

// Environment holds registered stage kinds. Most programs use [Default].
type Environment struct {
	mu    sync.RWMutex
	specs map[string]*Spec
}

// NewEnvironment returns an empty environment.
func NewEnvironment() *Environment { return &Environment{specs: map[string]*Spec{}} }

// Default is the environment the built-in stages register in.
var Default = NewEnvironment()

// Register adds a stage kind. A second kind of the same name is an error.
func (e *Environment) Register(s Spec) error {
	if s.Kind == "" || s.New == nil || s.Ports == nil {
		return fmt.Errorf("%w: %q needs Kind, Ports and New", ErrBadSpec, s.Kind)
	}
	seen := map[string]bool{}
	for _, p := range s.Params {
		if seen[p.Name] {
			return fmt.Errorf("%w: %q declares param %q twice", ErrBadSpec, s.Kind, p.Name)
		}
		seen[p.Name] = true
		if p.Default != nil {
			if _, err := convertParam(p, p.Default); err != nil {
				return fmt.Errorf("%w: %q param %q default: %w", ErrBadSpec, s.Kind, p.Name, err)
			}
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.specs[s.Kind]; ok {
		return fmt.Errorf("%w: %q", ErrDuplicateKind, s.Kind)
	}
	e.specs[s.Kind] = &s
	return nil
}

// Lookup returns the spec of a kind.
func (e *Environment) Lookup(kind string) (*Spec, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	s, ok := e.specs[kind]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownKind, kind)
	}
	return s, nil
}

// Specs returns every registered spec, sorted by kind.
func (e *Environment) Specs() []*Spec {
	e.mu.RLock()
	defer e.mu.RUnlock()
	out := make([]*Spec, 0, len(e.specs))
	for _, s := range e.specs {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Kind < out[j].Kind })
	return out
}

// Clone returns a copy, so a program can add kinds without touching Default.
func (e *Environment) Clone() *Environment {
	e.mu.RLock()
	defer e.mu.RUnlock()
	c := NewEnvironment()
	for k, s := range e.specs {
		c.specs[k] = s
	}
	return c
}

// Register adds a kind to Default.
func Register(s Spec) error { return Default.Register(s) }

// MustRegister adds a kind to Default and panics on error; for init().
func MustRegister(s Spec) {
	if err := Register(s); err != nil {
		panic(err)
	}
}

// Params holds a stage's validated params.
type Params map[string]any

func (p Params) String(k string) string { v, _ := p[k].(string); return v }
func (p Params) Int(k string) int       { v, _ := p[k].(int); return v }
func (p Params) Float(k string) float64 { v, _ := p[k].(float64); return v }
func (p Params) Bool(k string) bool     { v, _ := p[k].(bool); return v }
func (p Params) Duration(k string) time.Duration {
	v, _ := p[k].(time.Duration)
	return v
}
func (p Params) Map(k string) map[string]string {
	v, _ := p[k].(map[string]string)
	return v
}

// Has reports whether the param was set or has a default.
func (p Params) Has(k string) bool { _, ok := p[k]; return ok }

// ParseBitrate reads a bitrate param: bits per second, or with a k or M
// suffix ("3M", "800k", "128000"); "" is 0 (unset).
func ParseBitrate(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	mult, num := 1.0, s
	switch strings.ToLower(s[len(s)-1:]) {
	case "k":
		mult, num = 1e3, s[:len(s)-1]
	case "m":
		mult, num = 1e6, s[:len(s)-1]
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || !(f > 0) || f*mult > 1e12 {
		return 0, fmt.Errorf("bitrate %q: want a number such as 3M, 800k or 128000", s)
	}
	return int64(f * mult), nil
}
