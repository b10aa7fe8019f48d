package pipeline

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// FlowMode is how an edge behaves when its consumer is slower than its producer.
type FlowMode string

const (
	// FlowBlock makes the producer wait: no frame is ever dropped (file jobs).
	FlowBlock FlowMode = "block"
	// FlowDropOldest drops the oldest queued message: bounded latency (live), drops counted.
	FlowDropOldest FlowMode = "drop-oldest"
)

// Transport values.
const (
	// TransportAuto (the default) passes messages between the stages of
	// one process by reference (zero-copy) and keeps NATS for the rest:
	// the embedded server, the stages' micro services, and the ports that
	// carry metadata (detections) or that nothing in the pipeline reads,
	// published on their subjects for outside consumers.
	TransportAuto  = "auto"
	TransportNATS  = "nats"  // every edge is a NATS subject
	TransportLocal = "local" // in-process only: no NATS server, no services, frames passed by reference
)

// Delivery values: how the edges between processes carry messages.
const (
	// DeliveryLive (the default) sends them on core NATS: lowest latency;
	// what a process that dies holds is lost (in drop-oldest flow, counted).
	DeliveryLive = "live"
	// DeliveryJob keeps them in a JetStream work-queue stream made for the
	// run: a message is removed only once the stage that took it has
	// published its outputs, and one a dead process held goes to another
	// instance (file jobs).
	DeliveryJob = "job"
)

func validDelivery(d string) bool { return d == DeliveryLive || d == DeliveryJob }

func validTransport(t string) bool {
	return t == TransportAuto || t == TransportNATS || t == TransportLocal
}

// ErrInvalid wraps every validation problem; the message lists them with file:line:column.
var ErrInvalid = errors.New("invalid pipeline")

// Pos is a place in a pipeline file.
type Pos struct {
	File         string
	Line, Column int
}

func (p Pos) String() string {
	if p.Line == 0 {
		return p.File
	}
	return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Column)
}

// PosError is one problem at a place.
type PosError struct {
	Pos Pos
	Msg string
}

func (e *PosError) Error() string { return e.Pos.String() + ": " + e.Msg }

// Problems is the list of every problem found in a file.
type Problems []*PosError

func (ps Problems) Error() string {
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(p.Error())
	}
	return b.String()
}

// Unwrap lets errors.Is(err, ErrInvalid) match.
func (ps Problems) Unwrap() error { return ErrInvalid }

// Input is one input edge: the producing stage and its port ("" for its first port).
type Input struct {
	Stage, Port string
	Pos         Pos
}

func (in Input) String() string {
	if in.Port == "" {
		return in.Stage
	}
	return in.Stage + "." + in.Port
}

// StageConfig is one stage entry of a pipeline file.
type StageConfig struct {
	Name        string
	Kind        string
	Inputs      []Input
	Accelerator string   // cpu (default), gpu, npu or auto
	Device      string   // optional exact device, e.g. cuda:0
	Fallback    []string // kinds to try when the requested one is missing
	Strict      bool     // fail instead of falling back
	// Replicas is how many instances of the stage share its input (1 by
	// default); only kinds whose spec allows it (per-message work, no state
	// across messages) take more. Outputs leave in input order.
	Replicas int
	// Remote says another process serves the stage (avflow serve): avflow
	// run leaves it out and waits for its service.
	Remote bool
	Pos    Pos
	// RawParams are the params as written (YAML hosts, for positions); Params
	// holds them typed, with defaults, after validation.
	RawParams map[string]*yaml.Node
	Params    Params

	spec        *Spec
	outputs     []Port
	inTypes     []PortType
	replicasPos Pos
	kindPos     Pos // where the kind's value is written
}

// Outputs returns the stage's output ports (after validation).
func (s *StageConfig) Outputs() []Port { return s.outputs }

// Config is a parsed pipeline file.
type Config struct {
	Name        string
	Description string
	Flow        FlowMode
	Queue       int // messages each edge may hold before flow control acts
	Transport   string
	Delivery    string // live or job ("": live)
	Stages      []*StageConfig
	File        string // path as given
	Dir         string // folder relative paths resolve against

	validated bool
	order     []*StageConfig // topological
}

// Stage returns the stage of that name, or nil.
func (c *Config) Stage(name string) *StageConfig {
	for _, s := range c.Stages {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// Load reads and parses a pipeline file. It does not validate it.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pipeline: reading %s failed: %w", path, err)
	}
	return Parse(data, path)
}

var (
	nameRe     = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]{0,63}$`)
	yamlLineRe = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)
)

// Parse parses pipeline YAML. file names the source in error messages and
// gives the folder that relative paths resolve against.
func Parse(data []byte, file string) (*Config, error) {
	if file == "" {
		file = "<pipeline>"
	}
	dir, _ := filepath.Abs(filepath.Dir(file))
	c := &Config{File: file, Dir: dir, Flow: FlowBlock, Queue: 4, Transport: TransportAuto}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		msg := err.Error()
		if m := yamlLineRe.FindStringSubmatch(msg); m != nil {
			line, _ := strconv.Atoi(m[1])
			return nil, Problems{{Pos: Pos{file, line, 1}, Msg: "malformed YAML: " + m[2]}}
		}
		return nil, Problems{{Pos: Pos{File: file}, Msg: "malformed YAML: " + strings.TrimPrefix(msg, "yaml: ")}}
	}
	var ps Problems
	bad := func(n *yaml.Node, f string, a ...any) {
		ps = append(ps, &PosError{Pos: Pos{file, n.Line, n.Column}, Msg: fmt.Sprintf(f, a...)})
	}
	if root.Kind == 0 || len(root.Content) == 0 {
		return nil, Problems{{Pos: Pos{File: file}, Msg: "empty pipeline file"}}
	}
	doc := root.Content[0]
	if doc.Kind != yaml.MappingNode {
		bad(doc, "a pipeline file is a mapping with name and stages")
		return nil, ps
	}
	var stagesNode *yaml.Node
	for i := 0; i+1 < len(doc.Content); i += 2 {
		k, v := doc.Content[i], doc.Content[i+1]
		switch k.Value {
		case "name":
			c.Name = scalar(v, bad)
			if !nameRe.MatchString(c.Name) {
				bad(v, "name %q must start with a letter and hold only letters, digits, '_' and '-' (it becomes part of NATS subjects)", c.Name)
			}
		case "description":
			c.Description = scalar(v, bad)
		case "flow":
			c.Flow = FlowMode(scalar(v, bad))
			if c.Flow != FlowBlock && c.Flow != FlowDropOldest {
				bad(v, "flow %q: want block or drop-oldest", c.Flow)
			}
		case "queue":
			n, err := strconv.Atoi(scalar(v, bad))
			if err != nil || n < 1 || n > 4096 {
				bad(v, "queue %q: want a whole number from 1 to 4096", v.Value)
			}
			c.Queue = n
		case "transport":
			c.Transport = scalar(v, bad)
			if !validTransport(c.Transport) {
				bad(v, "transport %q: want auto, nats or local", c.Transport)
			}
		case "delivery":
			c.Delivery = scalar(v, bad)
			if !validDelivery(c.Delivery) {
				bad(v, "delivery %q: want live or job", c.Delivery)
			}
		case "stages":
			stagesNode = v
		default:
			bad(k, "unknown key %q (want name, description, flow, queue, transport, delivery, stages)", k.Value)
		}
	}
	if c.Name == "" {
		bad(doc, "missing name")
	}
	if stagesNode == nil {
		bad(doc, "missing stages")
	} else if stagesNode.Kind != yaml.SequenceNode {
		bad(stagesNode, "stages must be a list")
	} else {
		for _, sn := range stagesNode.Content {
			if s := parseStage(sn, file, bad); s != nil {
				c.Stages = append(c.Stages, s)
			}
		}
		if len(c.Stages) == 0 && len(stagesNode.Content) == 0 {
			bad(stagesNode, "stages is empty")
		}
	}
	if len(ps) > 0 {
		return nil, ps
	}
	return c, nil
}

func scalar(n *yaml.Node, bad func(*yaml.Node, string, ...any)) string {
	if n.Kind != yaml.ScalarNode {
		bad(n, "want a single value, not a %s", kindName(n))
		return ""
	}
	return expandEnv(n.Value)
}

// listItems reads a list, or a single value as a list of one.
func listItems(v *yaml.Node, bad func(*yaml.Node, string, ...any), msg string) []*yaml.Node {
	switch v.Kind {
	case yaml.SequenceNode:
		return v.Content
	case yaml.ScalarNode:
		return []*yaml.Node{v}
	}
	bad(v, "%s", msg)
	return nil
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "mapping"
	case yaml.SequenceNode:
		return "list"
	case yaml.AliasNode:
		return "alias"
	}
	return "value"
}

func parseStage(n *yaml.Node, file string, bad func(*yaml.Node, string, ...any)) *StageConfig {
	if n.Kind != yaml.MappingNode {
		bad(n, "a stage is a mapping with name, kind, inputs and params")
		return nil
	}
	s := &StageConfig{Pos: Pos{file, n.Line, n.Column}, RawParams: map[string]*yaml.Node{}, Accelerator: "cpu", Replicas: 1}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch k.Value {
		case "name":
			s.Name = scalar(v, bad)
		case "kind":
			s.Kind = scalar(v, bad)
			s.kindPos = Pos{file, v.Line, v.Column}
		case "accelerator":
			s.Accelerator = scalar(v, bad)
			switch s.Accelerator {
			case "cpu", "gpu", "npu", "auto":
			default:
				bad(v, "accelerator %q: want cpu, gpu, npu or auto", s.Accelerator)
			}
		case "device":
			s.Device = scalar(v, bad)
		case "strict":
			b, err := strconv.ParseBool(scalar(v, bad))
			if err != nil {
				bad(v, "strict %q: want true or false", v.Value)
			}
			s.Strict = b
		case "remote":
			b, err := strconv.ParseBool(scalar(v, bad))
			if err != nil {
				bad(v, "remote %q: want true or false", v.Value)
			}
			s.Remote = b
		case "replicas":
			r, err := strconv.Atoi(scalar(v, bad))
			if err != nil || r < 1 || r > 64 {
				bad(v, "replicas %q: want a whole number from 1 to 64", v.Value)
			}
			s.Replicas = max(1, r)
			s.replicasPos = Pos{file, v.Line, v.Column}
		case "fallback":
			for _, it := range listItems(v, bad, "fallback must be a list of cpu, gpu, npu") {
				k := scalar(it, bad)
				if k != "cpu" && k != "gpu" && k != "npu" {
					bad(it, "fallback %q: want cpu, gpu or npu", k)
				}
				s.Fallback = append(s.Fallback, k)
			}
		case "inputs":
			for _, it := range listItems(v, bad, "inputs must be a list of stage or stage.port names") {
				ref := scalar(it, bad)
				st, port, _ := strings.Cut(ref, ".")
				s.Inputs = append(s.Inputs, Input{Stage: st, Port: port, Pos: Pos{file, it.Line, it.Column}})
			}
		case "params":
			if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
				continue
			}
			if v.Kind != yaml.MappingNode {
				bad(v, "params must be a mapping")
				continue
			}
			for j := 0; j+1 < len(v.Content); j += 2 {
				pk, pv := v.Content[j], v.Content[j+1]
				if _, dup := s.RawParams[pk.Value]; dup {
					bad(pk, "param %q set twice", pk.Value)
				}
				s.RawParams[pk.Value] = pv
			}
		default:
			bad(k, "unknown stage key %q (want name, kind, inputs, params, accelerator, device, fallback, strict, replicas, remote)", k.Value)
		}
	}
	if s.Name == "" {
		bad(n, "stage without a name")
	} else if !nameRe.MatchString(s.Name) {
		bad(n, "stage name %q must start with a letter and hold only letters, digits, '_' and '-'", s.Name)
	}
	if s.Kind == "" {
		bad(n, "stage %q has no kind", s.Name)
	}
	return s
}

// Set overrides a param from the command line: "stage.param=value". The value
// is read as a YAML scalar.
func (c *Config) Set(assign string) error {
	lhs, val, ok := strings.Cut(assign, "=")
	st, param, ok2 := strings.Cut(lhs, ".")
	if !ok || !ok2 || st == "" || param == "" {
		return fmt.Errorf("pipeline: --set %q: want stage.param=value", assign)
	}
	s := c.Stage(st)
	if s == nil {
		return fmt.Errorf("pipeline: --set %q: no stage named %q", assign, st)
	}
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(val), &n); err != nil || len(n.Content) == 0 {
		n = yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{{Kind: yaml.ScalarNode, Tag: "!!str", Value: val}}}
	}
	v := n.Content[0]
	v.Line, v.Column = 0, 0
	s.RawParams[param] = v
	c.validated = false
	return nil
}

var envRe = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}`)

// expandEnv replaces ${VAR} and ${VAR:-default} in a value.
func expandEnv(s string) string {
	if !strings.Contains(s, "${") {
		return s
	}
	return envRe.ReplaceAllStringFunc(s, func(m string) string {
		g := envRe.FindStringSubmatch(m)
		if v, ok := os.LookupEnv(g[1]); ok && v != "" {
			return v
		}
		return g[3]
	})
}

// ResolvePath resolves a relative file path against dir; URLs and lavfi: specs pass unchanged.
func ResolvePath(dir, p string) string {
	if p == "" || filepath.IsAbs(p) || strings.Contains(p, "://") || strings.Contains(p, ":") && !strings.HasPrefix(p, ".") {
		return p
	}
	return filepath.Join(dir, p)
}

// convertParam turns a YAML-decoded or default value into the param's Go type.
func convertParam(p Param, v any) (any, error) {
	switch p.Type {
	case TypeString:
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("want a string")
		}
		if len(p.Enum) > 0 {
			for _, e := range p.Enum {
				if s == e {
					return s, nil
				}
			}
			return nil, fmt.Errorf("%q is not one of %s", s, strings.Join(p.Enum, ", "))
		}
		return s, nil
	case TypeInt:
		switch x := v.(type) {
		case int:
			return x, nil
		case string:
			n, err := strconv.Atoi(x)
			if err != nil {
				return nil, fmt.Errorf("want a whole number, got %q", x)
			}
			return n, nil
		}
		return nil, fmt.Errorf("want a whole number")
	case TypeFloat:
		switch x := v.(type) {
		case int:
			return float64(x), nil
		case float64:
			return x, nil
		case string:
			f, err := strconv.ParseFloat(x, 64)
			if err != nil {
				return nil, fmt.Errorf("want a number, got %q", x)
			}
			return f, nil
		}
		return nil, fmt.Errorf("want a number")
	case TypeBool:
		switch x := v.(type) {
		case bool:
			return x, nil
		case string:
			b, err := strconv.ParseBool(x)
			if err != nil {
				return nil, fmt.Errorf("want true or false, got %q", x)
			}
			return b, nil
		}
		return nil, fmt.Errorf("want true or false")
	case TypeDuration:
		switch x := v.(type) {
		case time.Duration:
			return x, nil
		case string:
			d, err := time.ParseDuration(x)
			if err != nil {
				return nil, fmt.Errorf("want a duration such as 500ms or 6s, got %q", x)
			}
			return d, nil
		case int:
			return time.Duration(x) * time.Second, nil
		case float64:
			return time.Duration(x * float64(time.Second)), nil
		}
		return nil, fmt.Errorf("want a duration such as 500ms or 6s")
	case TypeMap:
		switch x := v.(type) {
		case map[string]string:
			return x, nil
		case map[string]any:
			out := make(map[string]string, len(x))
			for k, e := range x {
				out[k] = fmt.Sprint(e)
			}
			return out, nil
		}
		return nil, fmt.Errorf("want a mapping of names to values")
	}
	return nil, fmt.Errorf("unknown param type %q", p.Type)
}

// nodeValue decodes a param's YAML host into a plain Go value for convertParam.
func nodeValue(p Param, n *yaml.Node) (any, error) {
	if p.Type == TypeMap {
		if n.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("want a mapping of names to values")
		}
		out := map[string]string{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i+1].Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("value of %q: want a single value", n.Content[i].Value)
			}
			out[n.Content[i].Value] = expandEnv(n.Content[i+1].Value)
		}
		return out, nil
	}
	if n.Kind != yaml.ScalarNode {
		return nil, fmt.Errorf("want a single value, not a %s", kindName(n))
	}
	val := expandEnv(n.Value)
	switch n.Tag {
	case "!!int":
		if p.Type == TypeString {
			return val, nil
		}
		i, err := strconv.Atoi(val)
		if err != nil {
			return val, nil
		}
		return i, nil
	case "!!float":
		if p.Type == TypeString {
			return val, nil
		}
		f, err := strconv.ParseFloat(val, 64)
		if err != nil {
			return val, nil
		}
		return f, nil
	case "!!bool":
		if p.Type == TypeString {
			return val, nil
		}
		return strconv.ParseBool(val)
	case "!!null":
		return nil, fmt.Errorf("no value given")
	}
	if p.Type == TypeInt || p.Type == TypeFloat || p.Type == TypeBool {
		// A quoted or env-expanded number is still checked as a number.
		return val, nil
	}
	return val, nil
}

// CheckName refuses a pipeline (deployment) name that is not a letter
// followed by up to 63 letters, digits, '_' or '-' (it is a NATS subject
// token).
func CheckName(name string) error {
	if !nameRe.MatchString(name) {
		return fmt.Errorf("%w: name %q: want a letter, then up to 63 letters, digits, _ or -", ErrInvalid, name)
	}
	return nil
}

// HasRemote reports whether a stage of the file is marked remote: true.
func (c *Config) HasRemote() bool {
	for _, s := range c.Stages {
		if s.Remote {
			return true
		}
	}
	return false
}
