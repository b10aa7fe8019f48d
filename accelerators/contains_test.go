package accelerators

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestFileContains: the search for a string in a file read a block at a
// time finds it wherever it lies, across a block's end too.
func TestFileContains(t *testing.T) {
	const needle = "WebGpuExecutionProvider"
	const block = 256 << 10
	at := func(size, off int) []byte {
		b := bytes.Repeat([]byte{'x'}, size)
		copy(b[off:], needle)
		return b
	}
	tests := []struct {
		name string
		data []byte
		want bool
	}{
		{"empty", nil, false},
		{"shorter than the string", []byte("WebGpu"), false},
		{"only the string", []byte(needle), true},
		{"at the start", at(3*block, 0), true},
		{"across the first block's end", at(3*block, block-5), true},
		{"across the second block's end", at(3*block, 2*block-len(needle)+1), true},
		{"at the very end", at(3*block+7, 3*block+7-len(needle)), true},
		{"a part at a block's end only", append(bytes.Repeat([]byte{'x'}, block-6), []byte("WebGpu")...), false},
		{"absent", bytes.Repeat([]byte{'x'}, 2*block+3), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "lib.so")
			if err := os.WriteFile(path, tt.data, 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := fileContains(path, needle)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("fileContains = %v, want %v", got, tt.want)
			}
		})
	}
	if _, err := fileContains(filepath.Join(t.TempDir(), "missing.so"), needle); err == nil {
		t.Error("a missing file gave no error")
	}
}
