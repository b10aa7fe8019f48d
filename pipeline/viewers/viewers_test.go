package viewers

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestDecodeRefusesBadProfiles(t *testing.T) {
	tests := []struct {
		name, json, want string // want: "" for a good profile, else a part of the error
	}{
		{"good", `{"id":"alice","name":"Alice","layout":"vertical","overlays":[{"text":"Hi {{.Viewer.Name}}"}]}`, ""},
		{"defaults", `{"id":"bob"}`, ""},
		{"unknown field", `{"id":"bob","colour":"red"}`, `unknown field "colour"`},
		// Anyone who may write the bucket writes profiles: a template may
		// not allocate a gigabyte, nor a profile hold too much.
		{"printf bomb", `{"id":"bob","overlays":[{"text":"{{printf \"%0999999999d\" 1}}"}]}`, `function "printf" is not allowed`},
		{"call", `{"id":"bob","overlays":[{"text":"{{call .X}}"}]}`, `function "call" is not allowed`},
		{"long text", `{"id":"bob","overlays":[{"text":"` + strings.Repeat("x", MaxText+1) + `"}]}`, "at most 256"},
		{"many overlays", `{"id":"bob","overlays":[` + strings.Repeat(`{"text":"x"},`, MaxOverlays) + `{"text":"x"}]}`, "overlays: 9: at most 8"},
		{"long name", `{"id":"bob","name":"` + strings.Repeat("n", MaxName+1) + `"}`, "name: 65 bytes"},
		{"range over a number", `{"id":"bob","overlays":[{"text":"{{range 200000000}}x{{end}}"}]}`, "range over a field of the frame only"},
		{"range in a range", `{"id":"bob","overlays":[{"text":"{{range .Detections}}{{range .Detections}}x{{end}}{{end}}"}]}`, "a range inside a range"},
		{"define", `{"id":"bob","overlays":[{"text":"{{define \"a\"}}{{template \"a\"}}{{end}}"}]}`, "not allowed in an overlay"},
		{"template", `{"id":"bob","overlays":[{"text":"{{template \"x\"}}"}]}`, "template is not allowed"},
		{"range over a field", `{"id":"bob","overlays":[{"text":"{{range .Detections}}x{{end}}"}]}`, ""},
		{"tiny bitrate", `{"id":"bob","quality":{"max_bitrate":999}}`, "at least 16000"},
		{"absolute image", `{"id":"bob","overlays":[{"image":"/etc/logo.png"}]}`, "inside the pipeline's folder"},
		{"image up and out", `{"id":"bob","overlays":[{"image":"a/../../logo.png"}]}`, "inside the pipeline's folder"},
		{"image below", `{"id":"bob","overlays":[{"image":"art/logo.png"}]}`, ""},
		{"NUL in a text", `{"id":"bob","overlays":[{"text":"a\u0000b"}]}`, "holds a NUL"},
		{"allowed funcs", `{"id":"bob","overlays":[{"text":"{{if gt (len .Detections) 0}}{{index .HUD \"x\"}}{{end}}"}]}`, ""},
		{"bad id", `{"id":"bob.smith"}`, `id "bob.smith"`},
		{"bad layout", `{"id":"bob","layout":"portrait"}`, `layout: "portrait": want one of`},
		{"bad privacy", `{"id":"bob","privacy":"blur"}`, `privacy: "blur"`},
		{"bad audio", `{"id":"bob","audio":"loud"}`, `audio: "loud"`},
		{"template that does not parse", `{"id":"bob","overlays":[{"text":"Hi {{.Viewer.Name"}]}`, `overlays[0].text`},
		{"text and image", `{"id":"bob","overlays":[{"text":"a","image":"b.png"}]}`, `overlays[0]: want one of text or image`},
		{"bad position", `{"id":"bob","overlays":[{"image":"b.png","position":"middle"}]}`, `overlays[0].position`},
		{"scale above 1", `{"id":"bob","overlays":[{"image":"b.png","scale":2}]}`, `overlays[0].scale`},
		{"negative ceiling", `{"id":"bob","quality":{"max_height":-1}}`, `quality`},
		{"not json", `{"id":`, `unexpected EOF`},
		{"two profiles", `{"id":"a"}{"id":"b"}`, `data after the profile`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Decode([]byte(tt.json))
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.want == "":
				b, err := p.Encode()
				if err != nil {
					t.Fatal(err)
				}
				if _, err := Decode(b); err != nil {
					t.Errorf("its own encoding %s is refused: %v", b, err)
				}
			case err == nil:
				t.Fatalf("accepted, want an error with %q", tt.want)
			case !errors.Is(err, ErrProfile) || !strings.Contains(err.Error(), tt.want):
				t.Errorf("error %q, want ErrProfile with %q", err, tt.want)
			}
		})
	}
}

// TestVariantKey: viewers whose outputs have the same pixels on every
// frame share a key, whatever their ids and names; a text that can render
// differently, another layout, privacy, quality, audio or overlay
// placement gives another key.
func TestVariantKey(t *testing.T) {
	key := func(p Profile) string {
		t.Helper()
		k, err := p.VariantKey()
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	hi := func(text string) []Overlay { return []Overlay{{Text: text}} }
	base := Profile{ID: "a", Name: "Alice", Layout: LayoutVertical, Overlays: hi("herring {{.HUD.herring}}")}
	same := []Profile{
		{ID: "b", Name: "Bob", Layout: LayoutVertical, Overlays: hi("herring {{.HUD.herring}}")},
		{ID: "c", Layout: LayoutVertical, Privacy: PrivacyNone, Audio: AudioKeep, Overlays: hi("herring {{.HUD.herring}}")}, // defaults spelled out
		{ID: "d", Name: "Alice", Layout: LayoutVertical, Overlays: hi("herring {{ .HUD.herring }}")},                        // spaces inside the action
	}
	greet := Profile{ID: "e1", Name: "Alice", Overlays: hi("Hi {{.Viewer.Name}}, {{.HUD.herring}}")}
	if key(greet) != key(Profile{ID: "e2", Overlays: hi("Hi Alice, {{.HUD.herring}}")}) {
		t.Errorf("a greeting rendered over the viewer differs from the same text written out")
	}
	for _, p := range same {
		if key(p) != key(base) {
			t.Errorf("%+v: key %s, want %s (same pixels)", p, key(p), key(base))
		}
	}
	other := []Profile{
		{ID: "e", Name: "Alice", Layout: LayoutVertical, Overlays: hi("Hi {{.Viewer.Name}}")},
		{ID: "f", Layout: LayoutLandscape, Overlays: hi("herring 12")},
		{ID: "g", Layout: LayoutVertical, Privacy: PrivacyBlurFaces, Overlays: hi("herring 12")},
		{ID: "h", Layout: LayoutVertical, Audio: AudioMute, Overlays: hi("herring 12")},
		{ID: "i", Layout: LayoutVertical, Quality: Quality{MaxHeight: 480}, Overlays: hi("herring 12")},
		{ID: "j", Layout: LayoutVertical, Overlays: []Overlay{{Text: "herring 12", Position: "top"}}},
		{ID: "k", Layout: LayoutVertical},
		{ID: "l", Layout: LayoutVertical, Overlays: hi("herring {{.HUD.speed}}")},
		{ID: "m", Name: "Alice", Layout: LayoutVertical, Overlays: hi("{{$n := .Viewer.Name}}herring {{.HUD.herring}}")},
		{ID: "n", Name: "Alice", Layout: LayoutVertical, Overlays: hi("herring {{with .HUD}}{{.herring}}{{end}}")},
		{ID: "o", Name: "Alice", Layout: LayoutVertical, Overlays: hi("herring {{if .Viewer.Name}}12{{end}}")}, // renders "herring 12"
	}
	seen := map[string]string{key(base): base.ID}
	for _, p := range other {
		k := key(p)
		if prev, ok := seen[k]; ok {
			t.Errorf("%s and %s share key %s, want different pixels", p.ID, prev, k)
		}
		seen[k] = p.ID
	}
	// Two viewers named differently in a greeting do not share.
	alice := Profile{ID: "alice", Name: "Alice", Overlays: hi("Hi {{.Viewer.Name}}")}
	carol := Profile{ID: "carol", Name: "Carol", Overlays: hi("Hi {{.Viewer.Name}}")}
	if key(alice) == key(carol) {
		t.Errorf("alice and carol share a key, though their greetings differ")
	}
	// Variables are not followed: a template with one shares with no one.
	va := Profile{ID: "va", Name: "Alice", Overlays: hi("{{$n := .Viewer.Name}}Hi {{$n}}")}
	vc := Profile{ID: "vc", Name: "Carol", Overlays: hi("{{$n := .Viewer.Name}}Hi {{$n}}")}
	if key(va) == key(vc) {
		t.Errorf("two templates with variables share a key")
	}
}

// TestTextThatRendersTooLong: a range over the frame's detections that
// would render more than MaxText bytes stops there, with an error.
func TestTextThatRendersTooLong(t *testing.T) {
	p := Profile{ID: "eve", Overlays: []Overlay{{Text: "{{range .Detections}}0123456789{{end}}"}}}
	if err := p.Check(); err != nil {
		t.Fatal(err)
	}
	_, err := p.Texts(Frame{Detections: make([]any, 100)})
	if !errors.Is(err, ErrProfile) || !strings.Contains(err.Error(), "more than 256 bytes") {
		t.Fatalf("error %v, want one saying it renders too long", err)
	}
}

// TestTextThatFailsToRender: a template naming HUD text the frame does
// not have fails with the viewer and the overlay named.
func TestTextThatFailsToRender(t *testing.T) {
	p := Profile{ID: "dave", Overlays: []Overlay{{Text: "speed {{.HUD.speed}}"}}}
	_, err := p.Texts(Frame{HUD: map[string]string{"herring": "1"}})
	if !errors.Is(err, ErrProfile) || !strings.Contains(err.Error(), `"dave": overlays[0].text: rendering failed`) {
		t.Fatalf("error %v, want one naming dave's overlay", err)
	}
}

func ExampleProfile_VariantKey() {
	alice := Profile{ID: "alice", Name: "Alice", Layout: LayoutVertical, Overlays: []Overlay{{Text: "Hi {{.Viewer.Name}}: {{.HUD.herring}} herring"}}}
	bob := Profile{ID: "bob", Layout: LayoutVertical, Overlays: []Overlay{{Text: "Hi Alice: {{.HUD.herring}} herring"}}}
	carol := Profile{ID: "carol", Name: "Carol", Layout: LayoutVertical, Overlays: alice.Overlays}
	a, _ := alice.VariantKey()
	b, _ := bob.VariantKey()
	c, _ := carol.VariantKey()
	fmt.Println(a == b, a == c, strings.HasPrefix(a, "vertical-"))
	// Output: true false true
}

// FuzzDecode: whatever a client puts in the bucket never panics; a
// profile that is accepted encodes to one that is accepted again and
// gives the same variant key.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{`{"id":"alice","name":"Alice","layout":"vertical","overlays":[{"text":"Hi {{.Viewer.Name}}"}]}`,
		`{"id":"b","overlays":[{"image":"w.png","position":"top-right","scale":0.3,"opacity":0.5}],"quality":{"max_height":480}}`,
		`{"id":"c","overlays":[{"text":"{{.HUD.x}}"}]}`, `{}`, `[]`, `{"id":"d","audio":"mute","privacy":"blur-faces"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Decode(data)
		if err != nil {
			return
		}
		b, err := p.Encode()
		if err != nil {
			t.Fatal(err)
		}
		q, err := Decode(b)
		if err != nil {
			t.Fatalf("its own encoding %s is refused: %v", b, err)
		}
		k1, err1 := p.VariantKey()
		k2, err2 := q.VariantKey()
		if k1 != k2 || (err1 == nil) != (err2 == nil) {
			t.Fatalf("keys %q (%v) and %q (%v) after a round trip", k1, err1, k2, err2)
		}
	})
}
