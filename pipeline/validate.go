package pipeline

import (
	"fmt"
	"sort"
	"strings"
)

// MaxStages is the most stages a pipeline may have. Each stage costs about
// 60 KB and 14 goroutines in the runner over NATS (its subscriptions and
// its NATS micro service), more with its own buffers and the frames in
// flight on its edges: a chain of 10,000 trivial stages took about 1 GB
// and a few seconds to start, real FFmpeg stages 1.3 to 2 GB. 2,000 keeps
// a pipeline well under a gigabyte with five times the room a pipeline of
// 64 cameras of 6 stages needs; split a larger one into several pipelines.
const MaxStages = 2000

// checkSize refuses a pipeline of more than MaxStages stage instances
// (each replica counts), at the stage that goes beyond.
func checkSize(c *Config, bad func(Pos, string, ...any)) {
	total := 0
	for _, s := range c.Stages {
		total += max(1, s.Replicas)
	}
	n := 0
	for _, s := range c.Stages {
		n += max(1, s.Replicas)
		if n > MaxStages {
			bad(s.Pos, "stage %q is stage %d of %d (replicas count): a pipeline holds at most %d stages (split it into several pipelines)",
				s.Name, n, total, MaxStages)
			return
		}
	}
}

// Validate checks a parsed pipeline against the environment's stage kinds:
// kinds, params and their types, edges and their media types, cycles, and
// each kind's own checks (missing files). It reports every problem found,
// each with file:line:column, as [Problems] (errors.Is(err, ErrInvalid)).
func (e *Environment) Validate(c *Config) error {
	var ps Problems
	bad := func(p Pos, f string, a ...any) { ps = append(ps, &PosError{Pos: p, Msg: fmt.Sprintf(f, a...)}) }

	checkSize(c, bad)
	byName := map[string]*StageConfig{}
	for _, s := range c.Stages {
		if prev, dup := byName[s.Name]; dup {
			bad(s.Pos, "stage name %q already used at line %d", s.Name, prev.Pos.Line)
			continue
		}
		byName[s.Name] = s
		spec, err := e.Lookup(s.Kind)
		if err != nil {
			pos := s.kindPos
			if pos.Line == 0 {
				pos = s.Pos
			}
			bad(pos, "stage %q: unknown kind %q (known: %s)", s.Name, s.Kind, strings.Join(e.kinds(), ", "))
			continue
		}
		s.spec = spec
		s.Params = Params{}
		for name, n := range s.RawParams {
			p := spec.param(name)
			pos := Pos{c.File, n.Line, n.Column}
			if p == nil {
				bad(pos, "stage %q: unknown param %q for kind %s (known: %s)", s.Name, name, s.Kind, strings.Join(paramNames(spec), ", "))
				continue
			}
			raw, err := nodeValue(*p, n)
			if err == nil {
				var v any
				if v, err = convertParam(*p, raw); err == nil {
					s.Params[name] = v
					continue
				}
			}
			bad(pos, "stage %q: param %s (%s): %v", s.Name, name, p.Type, err)
		}
		for _, p := range spec.Params {
			if _, set := s.Params[p.Name]; set {
				continue
			}
			if _, written := s.RawParams[p.Name]; written {
				continue // already reported
			}
			if p.Required {
				bad(s.Pos, "stage %q: missing required param %q (%s)", s.Name, p.Name, p.Doc)
			} else if p.Default != nil {
				v, _ := convertParam(p, p.Default)
				s.Params[p.Name] = v
			}
		}
		if s.Replicas > 1 {
			pos := s.replicasPos
			if pos.Line == 0 {
				pos = s.Pos
			}
			switch err := spec.ReplicasError(s.Params); {
			case err == nil:
			case spec.Replicable == nil:
				bad(pos, "stage %q: %v (replicas: %d)", s.Name, err, s.Replicas)
			default:
				bad(pos, "stage %q: replicas %d: %v", s.Name, s.Replicas, err)
			}
		}
		n := len(s.Inputs)
		switch {
		case n < spec.MinInputs:
			bad(s.Pos, "stage %q: kind %s needs at least %d input(s), has %d", s.Name, s.Kind, spec.MinInputs, n)
		case spec.MaxInputs >= 0 && n > spec.MaxInputs:
			if spec.MaxInputs == 0 {
				bad(s.Inputs[0].Pos, "stage %q: kind %s takes no inputs", s.Name, s.Kind)
			} else {
				bad(s.Inputs[0].Pos, "stage %q: kind %s takes at most %d input(s), has %d", s.Name, s.Kind, spec.MaxInputs, n)
			}
		}
	}
	// Edges point at known stages.
	for _, s := range c.Stages {
		for _, in := range s.Inputs {
			if in.Stage == s.Name {
				bad(in.Pos, "stage %q: input %q is the stage itself", s.Name, in)
			} else if byName[in.Stage] == nil {
				bad(in.Pos, "stage %q: input %q names no stage", s.Name, in)
			}
		}
	}
	order, cycle := topoSort(c.Stages, byName)
	if cycle != nil {
		bad(cycle[0].Pos, "cycle: %s", cycleString(cycle))
	}
	if len(ps) > 0 {
		sortProblems(ps)
		return ps
	}
	// Type the edges in topological order.
	for _, s := range order {
		if s.spec == nil {
			continue
		}
		s.inTypes = s.inTypes[:0]
		typed := true
		for _, in := range s.Inputs {
			src := byName[in.Stage]
			if src.spec == nil || src.outputs == nil {
				typed = false
				break
			}
			port, ok := findPort(src.outputs, in.Port)
			if !ok {
				bad(in.Pos, "stage %q: input %q: stage %q has no port %q (ports: %s)", s.Name, in, in.Stage, in.Port, portNames(src.outputs))
				typed = false
				continue
			}
			s.inTypes = append(s.inTypes, port.Type)
		}
		if !typed || len(s.inTypes) != len(s.Inputs) {
			continue
		}
		outs, err := s.spec.Ports(s.Params, s.inTypes)
		if err != nil {
			pos := s.Pos
			if len(s.Inputs) > 0 {
				pos = s.Inputs[0].Pos
			}
			bad(pos, "stage %q (%s): %v (inputs: %s)", s.Name, s.Kind, err, inputDesc(s))
			continue
		}
		s.outputs = outs
		if s.spec.Check != nil {
			if err := s.spec.Check(s.Params, c.Dir); err != nil {
				bad(s.Pos, "stage %q: %v", s.Name, err)
			}
		}
	}
	if len(ps) > 0 {
		sortProblems(ps)
		return ps
	}
	c.order = order
	c.validated = true
	return nil
}

// Warnings is WarningsFor the pipeline file's own transport.
func (c *Config) Warnings() []string { return c.WarningsFor("") }

// WarningsFor lists legal but suspicious things in a validated pipeline run
// over transport ("auto", "nats" or "local"; "" is the file's own, as Options.Transport),
// such as an output port no stage reads, saying what becomes of its data.
func (c *Config) WarningsFor(transport string) []string {
	if transport == "" {
		transport = c.Transport
	}
	byName := make(map[string]*StageConfig, len(c.Stages))
	for _, s := range c.Stages {
		byName[s.Name] = s
	}
	used := map[string]bool{}
	for _, s := range c.Stages {
		for _, in := range s.Inputs {
			used[in.Stage+"."+in.Port] = true
			if src := byName[in.Stage]; in.Port == "" && src != nil && len(src.outputs) > 0 {
				used[in.Stage+"."+src.outputs[0].Name] = true
			}
		}
	}
	var w []string
	for _, s := range c.Stages {
		for _, p := range s.outputs {
			if used[s.Name+"."+p.Name] {
				continue
			}
			if what := unreadFate(c.Name, s.Name, p, transport); what != "" {
				w = append(w, fmt.Sprintf("%s: stage %q port %q (%s) is read by no stage: %s", s.Pos, s.Name, p.Name, p.Type, what))
			}
		}
	}
	return w
}

// unreadFate says what becomes of an output port no stage reads ("": nothing to warn about).
func unreadFate(pipeline, stage string, p Port, transport string) string {
	switch {
	case p.Unread == UnreadQuiet, p.Unread == UnreadBranches:
		return ""
	case p.Unread == UnreadSkipped:
		return "the stage does not produce it (its stream is not read from the input)"
	case transport == TransportNATS || transport == TransportAuto:
		return "it is published on " + Subject(pipeline, stage, p.Name) + " for outside consumers"
	}
	return "its data is dropped (transport local: nothing outside the process can read it)"
}

func findPort(ports []Port, name string) (Port, bool) {
	if name == "" && len(ports) > 0 {
		return ports[0], true
	}
	for _, p := range ports {
		if p.Name == name {
			return p, true
		}
	}
	return Port{}, false
}

func inputDesc(s *StageConfig) string {
	parts := make([]string, len(s.Inputs))
	for i, in := range s.Inputs {
		parts[i] = fmt.Sprintf("%s gives %s", in, s.inTypes[i])
	}
	return strings.Join(parts, "; ")
}

func portNames(ps []Port) string {
	names := make([]string, len(ps))
	for i, p := range ps {
		names[i] = p.Name
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

func paramNames(s *Spec) []string {
	var out []string
	for _, p := range s.Params {
		out = append(out, p.Name)
	}
	return out
}

func (e *Environment) kinds() []string {
	var out []string
	for _, s := range e.Specs() {
		out = append(out, s.Kind)
	}
	return out
}

func sortProblems(ps Problems) {
	sort.SliceStable(ps, func(i, j int) bool {
		if ps[i].Pos.Line != ps[j].Pos.Line {
			return ps[i].Pos.Line < ps[j].Pos.Line
		}
		return ps[i].Pos.Column < ps[j].Pos.Column
	})
}

// topoSort orders stages so producers come first. On a cycle it returns the
// stages on it.
func topoSort(stages []*StageConfig, byName map[string]*StageConfig) ([]*StageConfig, []*StageConfig) {
	const (
		white = iota
		grey
		black
	)
	color := map[string]int{}
	var order []*StageConfig
	var stack []*StageConfig
	var cycle []*StageConfig
	var visit func(s *StageConfig) bool
	visit = func(s *StageConfig) bool {
		color[s.Name] = grey
		stack = append(stack, s)
		for _, in := range s.Inputs {
			src := byName[in.Stage]
			if src == nil || src == s {
				continue
			}
			switch color[src.Name] {
			case grey:
				for i := len(stack) - 1; i >= 0; i-- {
					cycle = append([]*StageConfig{stack[i]}, cycle...)
					if stack[i] == src {
						break
					}
				}
				return false
			case white:
				if !visit(src) {
					return false
				}
			}
		}
		stack = stack[:len(stack)-1]
		color[s.Name] = black
		order = append(order, s)
		return true
	}
	for _, s := range stages {
		if color[s.Name] == white && !visit(s) {
			return nil, cycle
		}
	}
	return order, nil
}

func cycleString(cycle []*StageConfig) string {
	names := make([]string, 0, len(cycle)+1)
	for _, s := range cycle {
		names = append(names, s.Name)
	}
	names = append(names, cycle[0].Name)
	return strings.Join(names, " -> ")
}
