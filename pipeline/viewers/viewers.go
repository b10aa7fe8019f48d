// Package viewers is the viewer profile of personalisation: what one
// viewer of a live pipeline sees (layout, overlays, privacy, quality), as
// stored (JSON) under the viewer's id in the pipeline's key-value bucket,
// and the variant key that viewers who see the same pixels share (one
// render and encode per key), and the bucket on NATS JetStream that holds
// them (Store). It knows nothing of the runtime or FFmpeg.
package viewers

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"reflect"
	"regexp"
	"strings"
	"text/template"
	"text/template/parse"

	"github.com/avflow/avflow/pipeline/envelope"
)

// ErrProfile wraps every reason a profile is refused.
var ErrProfile = errors.New("viewer profile")

// Layouts, privacy modes and audio choices a profile may name.
const (
	LayoutLandscape = "landscape" // 16:9
	LayoutVertical  = "vertical"  // 9:16
	LayoutSquare    = "square"    // 1:1
	LayoutSource    = "source"    // the input's own shape

	PrivacyNone      = "none"
	PrivacyBlurFaces = "blur-faces"

	AudioKeep = "keep"
	AudioMute = "mute"
)

// Profile is one viewer's look.
type Profile struct {
	ID       string    `json:"id"`
	Name     string    `json:"name,omitempty"`
	Layout   string    `json:"layout,omitempty"`  // default source
	Privacy  string    `json:"privacy,omitempty"` // default none
	Overlays []Overlay `json:"overlays,omitempty"`
	Quality  Quality   `json:"quality,omitzero"`
	Audio    string    `json:"audio,omitempty"` // default keep
}

// Overlay is a text (a Go template over the viewer and the frame's
// metadata) or an image drawn over the frame.
type Overlay struct {
	Text     string  `json:"text,omitempty"`
	Image    string  `json:"image,omitempty"`    // a file path
	Position string  `json:"position,omitempty"` // top-left, top, top-right, left, center, right, bottom-left, bottom, bottom-right (default bottom)
	Scale    float64 `json:"scale,omitempty"`    // of the frame's width, 0 < scale <= 1 (default 0.2 for images)
	Opacity  float64 `json:"opacity,omitempty"`  // 0 < opacity <= 1 (default 1)
}

// Quality is a ceiling on the viewer's rendition (0: none).
type Quality struct {
	MaxHeight  int `json:"max_height,omitempty"`
	MaxBitrate int `json:"max_bitrate,omitempty"` // bits per second
}

var (
	validID   = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`) // a NATS KV key of one token
	positions = []string{"top-left", "top", "top-right", "left", "center", "right", "bottom-left", "bottom", "bottom-right"}
)

// Decode reads a profile as stored in the bucket, refusing unknown
// fields, and checks it.
func Decode(data []byte) (*Profile, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var p Profile
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrProfile, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: data after the profile", ErrProfile)
	}
	if err := p.Check(); err != nil {
		return nil, err
	}
	return &p, nil
}

// Encode is the profile as stored in the bucket.
func (p *Profile) Encode() ([]byte, error) { return json.Marshal(p) }

// Check reports the first thing wrong with the profile, naming the field.
func (p *Profile) Check() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w %q: %s: %s", ErrProfile, p.ID, field, fmt.Sprintf(format, args...))
	}
	if !validID.MatchString(p.ID) {
		return fmt.Errorf("%w: id %q: want 1 to 64 letters, digits, _ or -", ErrProfile, p.ID)
	}
	if err := oneOf(p.Layout, LayoutLandscape, LayoutVertical, LayoutSquare, LayoutSource); err != nil {
		return bad("layout", "%v", err)
	}
	if err := oneOf(p.Privacy, PrivacyNone, PrivacyBlurFaces); err != nil {
		return bad("privacy", "%v", err)
	}
	if err := oneOf(p.Audio, AudioKeep, AudioMute); err != nil {
		return bad("audio", "%v", err)
	}
	if p.Quality.MaxHeight < 0 || p.Quality.MaxBitrate < 0 {
		return bad("quality", "a ceiling below 0")
	}
	if b := p.Quality.MaxBitrate; b > 0 && b < MinBitrate {
		return bad("quality.max_bitrate", "%d: at least %d bits per second (encoders open no less)", b, MinBitrate)
	}
	switch {
	case len(p.Name) > MaxName:
		return bad("name", "%d bytes: at most %d", len(p.Name), MaxName)
	case len(p.Overlays) > MaxOverlays:
		return bad("overlays", "%d: at most %d", len(p.Overlays), MaxOverlays)
	}
	for i, o := range p.Overlays {
		field := fmt.Sprintf("overlays[%d]", i)
		switch {
		case len(o.Text) > MaxText:
			return bad(field+".text", "%d bytes: at most %d", len(o.Text), MaxText)
		case len(o.Image) > MaxText:
			return bad(field+".image", "%d bytes: at most %d", len(o.Image), MaxText)
		case o.Image != "" && !insideFolder(o.Image):
			return bad(field+".image", "%q: want a path inside the pipeline's folder (relative, no ..)", o.Image)
		case strings.ContainsRune(o.Text, 0):
			return bad(field+".text", "holds a NUL (the text would end there)")
		case (o.Text == "") == (o.Image == ""):
			return bad(field, "want one of text or image")
		case o.Position != "" && oneOf(o.Position, positions...) != nil:
			return bad(field+".position", "%v", oneOf(o.Position, positions...))
		case o.Scale < 0 || o.Scale > 1:
			return bad(field+".scale", "%g: want 0 < scale <= 1", o.Scale)
		case o.Opacity < 0 || o.Opacity > 1:
			return bad(field+".opacity", "%g: want 0 < opacity <= 1", o.Opacity)
		}
		if o.Text != "" {
			if _, err := parseText(o.Text); err != nil {
				return bad(field+".text", "%v", err)
			}
		}
	}
	return nil
}

func oneOf(v string, allowed ...string) error {
	if v == "" {
		return nil
	}
	for _, a := range allowed {
		if v == a {
			return nil
		}
	}
	return fmt.Errorf("%q: want one of %s", v, strings.Join(allowed, ", "))
}

// insideFolder reports whether a path stays inside the folder it is
// relative to (the pipeline's: images elsewhere are not the pipeline's to
// show). Links are the personalise stage's to follow, where the files are.
func insideFolder(p string) bool {
	c := path.Clean(strings.ReplaceAll(p, "\\", "/"))
	return !path.IsAbs(c) && c != ".." && !strings.HasPrefix(c, "../")
}

// Limits on what a profile may hold: anyone who may write the bucket
// writes profiles.
const (
	MaxName     = 64  // bytes of a display name
	MaxOverlays = 8   // overlays per profile
	MaxText     = 256 // bytes of a text template (and of its rendering), or of an image path
	MinBitrate  = 16000
)

// templateFuncs are the functions a text template may call: comparisons,
// logic, len and index. printf and its kin are not among them (a width
// of a billion is a gigabyte), nor call, slice or the escapers.
var templateFuncs = map[string]bool{"and": true, "or": true, "not": true, "len": true, "index": true,
	"eq": true, "ne": true, "lt": true, "le": true, "gt": true, "ge": true}

func parseText(text string) (*template.Template, error) {
	t, err := template.New("overlay").Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, err
	}
	var bad string
	for _, tt := range t.Templates() {
		if tt.Tree == nil {
			continue
		}
		walk(tt.Tree.Root, func(n parse.Node) {
			if id, ok := n.(*parse.IdentifierNode); ok && !templateFuncs[id.Ident] && bad == "" {
				bad = id.Ident
			}
		})
	}
	if bad != "" {
		return nil, fmt.Errorf("function %q is not allowed in an overlay (and, or, not, len, index, eq, ne, lt, le, gt, ge are)", bad)
	}
	if err := boundedTemplate(t); err != nil {
		return nil, err
	}
	return t, nil
}

// boundedTemplate refuses the templates whose run time the text's length
// does not bound: templates that define or call templates (one that calls
// itself runs 100000 deep on every frame), ranges over anything but a
// field of the frame (a range over a number of a billion takes seconds,
// output or not), and ranges inside ranges (n^k over the detections).
func boundedTemplate(t *template.Template) error {
	if len(t.Templates()) > 1 {
		return fmt.Errorf("define and block are not allowed in an overlay")
	}
	if t.Tree == nil {
		return nil
	}
	return boundedNode(t.Tree.Root, false)
}

func boundedNode(n parse.Node, inRange bool) error {
	switch n := n.(type) {
	case *parse.ListNode:
		if n == nil {
			return nil
		}
		for _, c := range n.Nodes {
			if err := boundedNode(c, inRange); err != nil {
				return err
			}
		}
	case *parse.TemplateNode:
		return fmt.Errorf("template is not allowed in an overlay")
	case *parse.IfNode:
		return boundedBranch(&n.BranchNode, inRange)
	case *parse.WithNode:
		return boundedBranch(&n.BranchNode, inRange)
	case *parse.RangeNode:
		if inRange {
			return fmt.Errorf("a range inside a range is not allowed in an overlay")
		}
		if !overField(n.Pipe) {
			return fmt.Errorf("range %s: an overlay may range over a field of the frame only (.Detections, .HUD)", n.Pipe)
		}
		return boundedBranch(&n.BranchNode, true)
	}
	return nil
}

func boundedBranch(b *parse.BranchNode, inRange bool) error {
	if err := boundedNode(b.List, inRange); err != nil {
		return err
	}
	if b.ElseList != nil {
		return boundedNode(b.ElseList, inRange)
	}
	return nil
}

// overField reports whether a range's pipeline is one field, as in
// {{range .Detections}} or {{range $i, $d := .HUD}}.
func overField(p *parse.PipeNode) bool {
	if p == nil || len(p.Cmds) != 1 || len(p.Cmds[0].Args) != 1 {
		return false
	}
	_, ok := p.Cmds[0].Args[0].(*parse.FieldNode)
	return ok
}

// capped is a writer that refuses more than MaxText bytes.
type capped struct{ strings.Builder }

var errTooLong = fmt.Errorf("renders to more than %d bytes", MaxText)

func (c *capped) Write(p []byte) (int, error) {
	if c.Len()+len(p) > MaxText {
		return 0, errTooLong
	}
	return c.Builder.Write(p)
}

// Frame is what a text overlay's template sees: {{.Viewer.Name}},
// {{.HUD.herring}} (text read off the frame), {{len .Detections}}.
type Frame struct {
	Viewer     Viewer
	HUD        map[string]string
	Detections []any
}

// FrameOf is what a frame with these detections gives the templates:
// each detection with a label and a text is HUD text under that label
// (the infer stage's regions, OCR), and every detection is listed.
func FrameOf(dets []envelope.Detection) Frame {
	f := Frame{HUD: map[string]string{}}
	for _, d := range dets {
		if d.Text != "" && d.Label != "" {
			f.HUD[d.Label] = d.Text
		}
		f.Detections = append(f.Detections, d)
	}
	return f
}

// Viewer is the viewer's part of Frame.
type Viewer struct{ ID, Name string }

// Texts renders the profile's text overlays for one frame.
func (p *Profile) Texts(f Frame) ([]string, error) {
	f.Viewer = Viewer{ID: p.ID, Name: p.Name}
	var out []string
	for i, o := range p.Overlays {
		if o.Text == "" {
			continue
		}
		t, err := parseText(o.Text)
		if err != nil {
			return nil, fmt.Errorf("%w %q: overlays[%d].text: %w", ErrProfile, p.ID, i, err)
		}
		var b capped
		if err := t.Execute(&b, f); err != nil {
			return nil, fmt.Errorf("%w %q: overlays[%d].text: rendering failed: %w", ErrProfile, p.ID, i, err)
		}
		out = append(out, b.String())
	}
	return out, nil
}

// VariantKey is the key of the pixels (and sound) the viewer gets:
// viewers with equal keys share one render and encode. It covers every
// field that changes the output, and none that does not (the id, the name
// outside a template). Text overlays count as rendered over the viewer,
// with what they take from the frame kept as written: "Hi {{.Viewer.Name}}"
// for Alice is the same text as "Hi Alice", and two viewers whose
// banners both say "herring {{.HUD.herring}}" share, as they show the
// same on every frame, while "herring 12" does not share with them.
func (p *Profile) VariantKey() (string, error) {
	type overlay struct {
		Text, Image, Position string
		Scale, Opacity        float64
	}
	look := struct {
		Layout, Privacy, Audio string
		Quality                Quality
		Overlays               []overlay
	}{Layout: orDefault(p.Layout, LayoutSource), Privacy: orDefault(p.Privacy, PrivacyNone), Audio: orDefault(p.Audio, AudioKeep), Quality: p.Quality}
	for i, o := range p.Overlays {
		ov := overlay{Image: o.Image, Position: orDefault(o.Position, "bottom"), Scale: o.Scale, Opacity: o.Opacity}
		if o.Text != "" {
			text, err := p.viewerText(o.Text)
			if err != nil {
				return "", fmt.Errorf("%w %q: overlays[%d].text: %w", ErrProfile, p.ID, i, err)
			}
			ov.Text = text
		}
		if ov.Opacity == 0 {
			ov.Opacity = 1
		}
		look.Overlays = append(look.Overlays, ov)
	}
	b, err := json.Marshal(look)
	if err != nil {
		return "", fmt.Errorf("%w %q: %w", ErrProfile, p.ID, err)
	}
	sum := sha256.Sum256(b)
	return look.Layout + "-" + hex.EncodeToString(sum[:6]), nil
}

// viewerText renders the parts of a text template that read only the
// viewer, and keeps the parts that read the frame as written (between
// NULs, which no rendered text holds). A template that declares variables
// or templates is not taken apart: its text is its source and the viewer's
// id, shared with no other viewer.
func (p *Profile) viewerText(text string) (string, error) {
	t, err := parseText(text)
	if err != nil {
		return "", err
	}
	if len(t.Templates()) > 1 || usesVariables(t.Tree.Root) {
		return "\x00" + p.ID + "\x00" + text, nil
	}
	var b strings.Builder
	for _, n := range t.Tree.Root.Nodes {
		if n.Type() == parse.NodeText || !viewerOnly(n) {
			if n.Type() != parse.NodeText {
				b.WriteString("\x00" + n.String() + "\x00")
			} else {
				b.WriteString(n.String())
			}
			continue
		}
		part, err := parseText(n.String())
		if err != nil {
			return "", err
		}
		var out capped
		if err := part.Execute(&out, Frame{Viewer: Viewer{ID: p.ID, Name: p.Name}}); err != nil {
			return "", fmt.Errorf("rendering failed: %w", err)
		}
		b.WriteString(out.String())
	}
	return b.String(), nil
}

// viewerOnly reports whether a template node reads nothing but
// .Viewer's fields (and constants).
func viewerOnly(n parse.Node) bool {
	ok := true
	walk(n, func(n parse.Node) {
		switch n := n.(type) {
		case *parse.FieldNode:
			ok = ok && len(n.Ident) > 1 && n.Ident[0] == "Viewer"
		case *parse.DotNode, *parse.ChainNode, *parse.VariableNode, *parse.TemplateNode:
			ok = false
		}
	})
	return ok
}

func usesVariables(n parse.Node) bool {
	found := false
	walk(n, func(n parse.Node) {
		if _, ok := n.(*parse.VariableNode); ok {
			found = true
		}
	})
	return found
}

// walk calls f on n and every node below it.
func walk(n parse.Node, f func(parse.Node)) {
	if n == nil || reflect.ValueOf(n).IsNil() {
		return
	}
	f(n)
	switch n := n.(type) {
	case *parse.ListNode:
		for _, c := range n.Nodes {
			walk(c, f)
		}
	case *parse.ActionNode:
		walk(n.Pipe, f)
	case *parse.PipeNode:
		for _, d := range n.Decl {
			walk(d, f)
		}
		for _, c := range n.Cmds {
			walk(c, f)
		}
	case *parse.CommandNode:
		for _, a := range n.Args {
			walk(a, f)
		}
	case *parse.ChainNode:
		walk(n.Node, f)
	case *parse.IfNode:
		walkBranch(&n.BranchNode, f)
	case *parse.RangeNode:
		walkBranch(&n.BranchNode, f)
	case *parse.WithNode:
		walkBranch(&n.BranchNode, f)
	case *parse.TemplateNode:
		walk(n.Pipe, f)
	}
}

func walkBranch(b *parse.BranchNode, f func(parse.Node)) {
	walk(b.Pipe, f)
	walk(b.List, f)
	walk(b.ElseList, f)
}

func orDefault(v, d string) string {
	if v == "" {
		return d
	}
	return v
}
