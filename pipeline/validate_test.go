package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/pipeline/stage"
	_ "github.com/avflow/avflow/stages/all"
)

const header = "name: t\nstages:\n"

func TestValidate(t *testing.T) {
	media := e2e.Media(t, "car-detection.mp4")
	tests := []struct {
		name string
		yaml string
		want []string // substrings, each must appear; empty: valid
	}{
		{"valid transcode", header + `
  - {name: src, kind: source, params: {url: ` + media + `}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: enc, kind: encode, inputs: [dec], params: {codec: libx264, crf: 23}}
  - {name: out, kind: sink, inputs: [enc], params: {path: out.mp4}}
`, nil},
		{"malformed yaml", "name: t\nstages: [\n", []string{":2:1: malformed YAML"}},
		{"not a mapping", "- a\n- b\n", []string{":1:1: a pipeline file is a mapping"}},
		{"empty file", "", []string{"empty pipeline file"}},
		{"missing name and stages", "flow: block\n", []string{"missing name", "missing stages"}},
		{"unknown top key", "name: t\nstagez: []\nstages:\n  - {name: a, kind: source, params: {url: lavfi:testsrc2}}\n", []string{":2:1: unknown key \"stagez\""}},
		{"bad flow", "name: t\nflow: fast\nstages: []\n", []string{":2:7: flow \"fast\""}},
		{"unknown kind", header + "  - {name: a, kind: sourse}\n", []string{":3:21: stage \"a\": unknown kind \"sourse\""}},
		{"unknown kind, block style", header + "  - name: a\n    kind: sourse\n", []string{":4:11: stage \"a\": unknown kind \"sourse\""}},
		{"unknown param", header + "  - name: a\n    kind: source\n    params:\n      url: lavfi:testsrc2\n      urll: x\n", []string{":7:13: stage \"a\": unknown param \"urll\""}},
		{"wrong type", header + `
  - {name: src, kind: source, params: {url: "lavfi:testsrc2", realtime: maybe}}
`, []string{":4:73: stage \"src\": param realtime (bool)"}},
		{"wrong int", header + `
  - {name: src, kind: source, params: {url: "lavfi:testsrc2", max_frames: ten}}
`, []string{"param max_frames (int): want a whole number"}},
		{"enum", header + `
  - {name: src, kind: source, params: {url: "lavfi:testsrc2"}}
  - {name: dec, kind: decode, inputs: [src.video], params: {thread_type: fibre}}
`, []string{"\"fibre\" is not one of auto, frame, slice"}},
		{"missing required", header + "  - {name: a, kind: source}\n", []string{"missing required param \"url\""}},
		{"replicas of a stateful stage", header + `
  - {name: src, kind: source, params: {url: "lavfi:testsrc2"}}
  - {name: dec, kind: decode, inputs: [src.video], replicas: 2}
`, []string{":5:62: stage \"dec\": kind decode keeps state from message to message"}},
		{"replicas not a number", header + `
  - {name: src, kind: source, params: {url: "lavfi:testsrc2"}, replicas: many}
`, []string{":4:74: replicas \"many\": want a whole number from 1 to 64"}},
		{"replicas with overlap", header + `
  - {name: src, kind: source, params: {url: "lavfi:testsrc2"}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: f, kind: infer, inputs: [dec], replicas: 2, params: {model: ultraface-rfb-320, overlap: true}}
`, []string{"stage \"f\": replicas 2: overlap returns frames a call late"}},
		{"missing file", header + "  - {name: a, kind: source, params: {url: no/such/file.mp4}}\n", []string{":3:5: stage \"a\": source: input file not found", "no/such/file.mp4"}},
		{"dangling edge", header + `
  - {name: src, kind: source, params: {url: "lavfi:testsrc2"}}
  - {name: dec, kind: decode, inputs: [srcc.video]}
`, []string{":5:40: stage \"dec\": input \"srcc.video\" names no stage"}},
		{"unknown port", header + `
  - {name: src, kind: source, params: {url: "lavfi:testsrc2"}}
  - {name: dec, kind: decode, inputs: [src.vidoe]}
`, []string{"stage \"src\" has no port \"vidoe\" (ports: video, audio)"}},
		{"packets into filter", header + `
  - {name: src, kind: source, params: {url: "lavfi:testsrc2"}}
  - {name: f, kind: filter, inputs: [src.video], params: {graph: scale=2:2}}
`, []string{"filter takes raw frames, got video packets"}},
		{"frames into sink", header + `
  - {name: src, kind: source, params: {url: "lavfi:testsrc2"}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: out, kind: sink, inputs: [dec], params: {path: x.mp4}}
`, []string{"a sink takes packets"}},
		{"audio encoder on video", header + `
  - {name: src, kind: source, params: {url: "lavfi:testsrc2"}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: enc, kind: encode, inputs: [dec], params: {codec: aac}}
`, []string{"encoder aac is for audio, but its input gives video frames"}},
		{"unsupported codec", header + `
  - {name: src, kind: source, params: {url: "lavfi:testsrc2"}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: enc, kind: encode, inputs: [dec], params: {codec: libx999}}
`, []string{"unknown encoder \"libx999\""}},
		{"cycle", header + `
  - {name: a, kind: filter, inputs: [b], params: {graph: null}}
  - {name: b, kind: filter, inputs: [a], params: {graph: null}}
`, []string{"cycle: "}},
		{"duplicate stage", header + `
  - {name: a, kind: source, params: {url: "lavfi:testsrc2"}}
  - {name: a, kind: source, params: {url: "lavfi:testsrc2"}}
`, []string{":5:5: stage name \"a\" already used at line 4"}},
		{"inputs on a source", header + `
  - {name: a, kind: source, params: {url: "lavfi:testsrc2"}}
  - {name: b, kind: source, inputs: [a], params: {url: "lavfi:testsrc2"}}
`, []string{"kind source takes no inputs"}},
		{"bad accelerator", header + "  - {name: a, kind: source, accelerator: tpu, params: {url: lavfi:testsrc2}}\n", []string{":3:42: accelerator \"tpu\": want cpu, gpu, npu or auto"}},
		{"bad fallback", header + "  - {name: a, kind: source, fallback: [fpga], params: {url: lavfi:testsrc2}}\n", []string{"fallback \"fpga\""}},
		{"several problems at once", header + `
  - {name: a, kind: nope}
  - {name: b, kind: source, params: {url: "lavfi:x", bogus: 1}}
`, []string{":4:21: stage \"a\": unknown kind \"nope\"", "unknown param \"bogus\""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "p.yaml")
			cfg, err := pipeline.Parse([]byte(tt.yaml), file)
			if err == nil {
				err = pipeline.Default.Validate(cfg)
			}
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("want valid, got:\n%v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("want an error containing %q, got none", tt.want)
			}
			if !errors.Is(err, pipeline.ErrInvalid) {
				t.Errorf("error is not ErrInvalid: %v", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
			if !strings.Contains(err.Error(), file) {
				t.Errorf("error does not name the file %s:\n%v", file, err)
			}
		})
	}
}

func TestSetOverridesParam(t *testing.T) {
	cfg, err := pipeline.Parse([]byte(header+"  - {name: src, kind: source, params: {url: \"lavfi:testsrc2\"}}\n"), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Set("src.max_frames=12"); err != nil {
		t.Fatal(err)
	}
	if err := pipeline.Default.Validate(cfg); err != nil {
		t.Fatal(err)
	}
	if got := cfg.Stage("src").Params.Int("max_frames"); got != 12 {
		t.Fatalf("max_frames = %d, want 12", got)
	}
	for _, bad := range []string{"src", "nosuch.x=1", "src.=1"} {
		if err := cfg.Set(bad); err == nil {
			t.Errorf("Set(%q) accepted", bad)
		}
	}
}

func TestEnvExpansion(t *testing.T) {
	t.Setenv("AVFLOW_TEST_RATE", "25")
	cfg, err := pipeline.Parse([]byte(header+"  - {name: src, kind: source, params: {url: \"lavfi:testsrc2=rate=${AVFLOW_TEST_RATE}\", max_frames: \"${AVFLOW_TEST_N:-7}\"}}\n"), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := pipeline.Default.Validate(cfg); err != nil {
		t.Fatal(err)
	}
	p := cfg.Stage("src").Params
	if p.String("url") != "lavfi:testsrc2=rate=25" || p.Int("max_frames") != 7 {
		t.Fatalf("expansion gave url=%q max_frames=%d", p.String("url"), p.Int("max_frames"))
	}
}

func TestRegisterDuplicate(t *testing.T) {
	env := pipeline.Default.Clone()
	spec, err := env.Lookup("decode")
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Register(*spec); !errors.Is(err, pipeline.ErrDuplicateKind) {
		t.Fatalf("duplicate registration: got %v, want ErrDuplicateKind", err)
	}
	if err := env.Register(pipeline.Spec{Kind: "x"}); !errors.Is(err, pipeline.ErrBadSpec) {
		t.Fatalf("incomplete spec: got %v, want ErrBadSpec", err)
	}
}

// Every example pipeline in the repository parses and validates.
func TestExamplesValidate(t *testing.T) {
	t.Setenv("AVFLOW_MEDIA", e2e.MediaDir(t))
	files, _ := filepath.Glob("../examples/*/*.yaml")
	if len(files) < 2 {
		t.Fatalf("found %d example pipelines, want at least 2", len(files))
	}
	for _, f := range files {
		if _, err := os.Stat(filepath.Join(filepath.Dir(f), "main.go")); err == nil {
			// A program that registers its own stage kinds: its own test lints its pipeline.
			if _, err := os.Stat(filepath.Join(filepath.Dir(f), "main_test.go")); err != nil {
				t.Errorf("%s belongs to a program without a test that lints it", f)
			}
			continue
		}
		t.Run(f, func(t *testing.T) {
			cfg, err := pipeline.Load(f)
			if err == nil {
				err = pipeline.Default.Validate(cfg)
			}
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob("../examples/*/*.yaml")
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(header + "  - {name: a, kind: source, params: {url: x}}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := pipeline.Parse(data, "fuzz.yaml")
		if err != nil {
			var ps pipeline.Problems
			if !errors.As(err, &ps) || len(ps) == 0 {
				t.Fatalf("parse error is not a list of problems: %v", err)
			}
			return
		}
		// Validation must not panic, and report problems, not other errors.
		if err := pipeline.Default.Validate(cfg); err != nil && !errors.Is(err, pipeline.ErrInvalid) {
			t.Fatalf("validate returned a non-validation error: %v", err)
		}
	})
}

// TestTooManyStages: a pipeline beyond MaxStages is refused at validation,
// at the first stage beyond the limit.
func TestTooManyStages(t *testing.T) {
	var b strings.Builder
	b.WriteString(header)
	for i := range pipeline.MaxStages + 1 {
		fmt.Fprintf(&b, "  - {name: s%d, kind: source, params: {url: \"lavfi:testsrc2\"}}\n", i)
	}
	cfg, err := pipeline.Parse([]byte(b.String()), "big.yaml")
	if err != nil {
		t.Fatal(err)
	}
	err = pipeline.Default.Validate(cfg)
	if !errors.Is(err, pipeline.ErrInvalid) {
		t.Fatalf("got %v, want a validation error", err)
	}
	want := fmt.Sprintf("big.yaml:%d:5: stage \"s%d\" is stage %d of %d (replicas count): a pipeline holds at most %d stages", pipeline.MaxStages+3, pipeline.MaxStages, pipeline.MaxStages+1, pipeline.MaxStages+1, pipeline.MaxStages)
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("error lacks %q:\n%v", want, err)
	}
	// The limit itself is allowed.
	cfg.Stages = cfg.Stages[:pipeline.MaxStages]
	if err := pipeline.Default.Validate(cfg); err != nil {
		t.Fatalf("%d stages refused: %v", pipeline.MaxStages, err)
	}
	// Replicas count: 40 drawing stages of 64 replicas are 2,560 instances.
	b.Reset()
	b.WriteString(header + "  - {name: src, kind: source, params: {url: \"lavfi:testsrc2\"}}\n  - {name: dec, kind: decode, inputs: [src.video]}\n")
	prev := "dec"
	for i := range 40 {
		fmt.Fprintf(&b, "  - {name: d%d, kind: draw, inputs: [%s], replicas: 64}\n", i, prev)
		prev = fmt.Sprintf("d%d", i)
	}
	if cfg, err = pipeline.Parse([]byte(b.String()), "wide.yaml"); err != nil {
		t.Fatal(err)
	}
	if err := pipeline.Default.Validate(cfg); err == nil || !strings.Contains(err.Error(), `stage "d31" is stage 2050 of 2562 (replicas count)`) {
		t.Fatalf("got %v, want the replicas counted against the limit", err)
	}
}

// TestWarningsSayWhatBecomesOfUnreadPorts: a port no stage reads is
// published on its subject over NATS and dropped in-process; a port the
// stage skips when unread says so; a port its params turned off is quiet.
func TestWarningsSayWhatBecomesOfUnreadPorts(t *testing.T) {
	env := testEnv(t, &collector{})
	if err := env.Register(pipeline.Spec{
		Kind: "ports",
		Ports: func(pipeline.Params, []pipeline.PortType) ([]pipeline.Port, error) {
			return []pipeline.Port{
				{Name: "out", Type: dataPort},
				{Name: "meta", Type: dataPort},
				{Name: "audio", Type: dataPort, Unread: pipeline.UnreadSkipped},
				{Name: "off", Type: dataPort, Unread: pipeline.UnreadQuiet},
			}, nil
		},
		New: func(context.Context, pipeline.Init) (stage.Stage, error) { return &gen{}, nil },
	}); err != nil {
		t.Fatal(err)
	}
	file := "w.yaml"
	const yaml = "name: warn\ntransport: %s\nstages:\n  - {name: p, kind: ports}\n  - {name: c, kind: collect, inputs: [p]}\n"
	meta := `w.yaml:4:5: stage "p" port "meta" (any datas) is read by no stage: `
	audio := `w.yaml:4:5: stage "p" port "audio" (any datas) is read by no stage: the stage does not produce it (its stream is not read from the input)`
	for _, tt := range []struct {
		name, fileTransport, override string
		want                          []string
	}{
		{"nats", "nats", "", []string{meta + "it is published on avflow.warn.p.meta for outside consumers", audio}},
		{"local", "local", "", []string{meta + "its data is dropped (transport local: nothing outside the process can read it)", audio}},
		{"--transport local over a nats file", "nats", "local", []string{meta + "its data is dropped (transport local: nothing outside the process can read it)", audio}},
		{"--transport nats over a local file", "local", "nats", []string{meta + "it is published on avflow.warn.p.meta for outside consumers", audio}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := pipeline.Parse([]byte(fmt.Sprintf(yaml, tt.fileTransport)), file)
			if err != nil {
				t.Fatal(err)
			}
			if err := env.Validate(cfg); err != nil {
				t.Fatal(err)
			}
			got := cfg.WarningsFor(tt.override)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			if tt.override == "" && !slices.Equal(cfg.Warnings(), got) {
				t.Fatalf("Warnings() = %q, want the file's transport's %q", cfg.Warnings(), got)
			}
		})
	}
}
