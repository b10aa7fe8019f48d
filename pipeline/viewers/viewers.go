// Package viewers is the viewer profile of personalisation: what one
// viewer of a live pipeline sees (layout, overlays, privacy, quality), as
// stored (JSON) under the viewer's id in the pipeline's key-value bucket,
// and the variant key that viewers who see the same pixels share (one
// render and encode per key). It knows nothing of the runtime, FFmpeg or
// NATS.
package viewers

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"text/template"
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
	for i, o := range p.Overlays {
		field := fmt.Sprintf("overlays[%d]", i)
		switch {
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

func parseText(text string) (*template.Template, error) {
	return template.New("overlay").Option("missingkey=error").Parse(text)
}

// Frame is what a text overlay's template sees: {{.Viewer.Name}},
// {{.HUD.herring}} (text read off the frame), {{len .Detections}}.
type Frame struct {
	Viewer     Viewer
	HUD        map[string]string
	Detections []any
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
		var b strings.Builder
		if err := t.Execute(&b, f); err != nil {
			return nil, fmt.Errorf("%w %q: overlays[%d].text: rendering failed: %w", ErrProfile, p.ID, i, err)
		}
		out = append(out, b.String())
	}
	return out, nil
}

// VariantKey is the key of the pixels (and sound) the viewer gets for one
// frame: viewers with equal keys share one render and encode. It covers
// every field that changes the output, with text overlays as rendered (two
// viewers whose templates render to the same string share), and none that
// does not (the id, the name outside a template).
func (p *Profile) VariantKey(f Frame) (string, error) {
	texts, err := p.Texts(f)
	if err != nil {
		return "", err
	}
	type overlay struct {
		Text, Image, Position string
		Scale, Opacity        float64
	}
	look := struct {
		Layout, Privacy, Audio string
		Quality                Quality
		Overlays               []overlay
	}{Layout: orDefault(p.Layout, LayoutSource), Privacy: orDefault(p.Privacy, PrivacyNone), Audio: orDefault(p.Audio, AudioKeep), Quality: p.Quality}
	ti := 0
	for _, o := range p.Overlays {
		ov := overlay{Image: o.Image, Position: orDefault(o.Position, "bottom"), Scale: o.Scale, Opacity: o.Opacity}
		if o.Text != "" {
			ov.Text, ti = texts[ti], ti+1
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

func orDefault(v, d string) string {
	if v == "" {
		return d
	}
	return v
}
