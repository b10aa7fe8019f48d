package pipeline

import (
	"fmt"
	"io"
	"strings"
)

// WriteDocs prints every stage kind with its params, defaults and docs.
func (e *Environment) WriteDocs(w io.Writer) {
	for i, s := range e.Specs() {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "%s\n    %s\n", s.Kind, s.Summary)
		ins := "none"
		switch {
		case s.MaxInputs < 0:
			ins = fmt.Sprintf("%d or more", s.MinInputs)
		case s.MaxInputs > 0 && s.MinInputs == s.MaxInputs:
			ins = fmt.Sprint(s.MinInputs)
		case s.MaxInputs > 0:
			ins = fmt.Sprintf("%d to %d", s.MinInputs, s.MaxInputs)
		}
		fmt.Fprintf(w, "    inputs: %s\n", ins)
		devs := []string{"cpu"}
		if len(s.Accelerators) > 0 {
			devs = devs[:0]
			for _, k := range s.Accelerators {
				devs = append(devs, string(k))
			}
		}
		fmt.Fprintf(w, "    accelerators: %s\n", strings.Join(devs, ", "))
		if s.Replicable != nil {
			fmt.Fprintln(w, "    replicas: yes (per-message work)")
		}
		if len(s.Params) == 0 {
			continue
		}
		fmt.Fprintln(w, "    params:")
		for _, p := range s.Params {
			var extra []string
			if p.Required {
				extra = append(extra, "required")
			}
			if p.Default != nil {
				extra = append(extra, fmt.Sprintf("default %v", p.Default))
			}
			if len(p.Enum) > 0 {
				extra = append(extra, "one of "+strings.Join(p.Enum, "|"))
			}
			fmt.Fprintf(w, "      %-14s %-8s %s", p.Name, p.Type, p.Doc)
			if len(extra) > 0 {
				fmt.Fprintf(w, " (%s)", strings.Join(extra, ", "))
			}
			fmt.Fprintln(w)
		}
	}
}
