package natsauth

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRunFile: a run file written is read back while its process lives
// and removed by its own remove; one another user could have made (a
// folder or file open to others, a link) is refused, naming the path; a
// stale one (its process gone) is refused as such.
func TestRunFile(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	f := RunFile{Pipeline: "show", URL: "nats://127.0.0.1:4222", User: "avflow", Password: "pw", PID: os.Getpid()}
	remove, err := WriteRunFile(f)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ReadRunFile("show")
	if err != nil || got != f {
		t.Fatalf("read %+v, %v; want %+v", got, err, f)
	}
	path := RunFilePath("show")
	tests := []struct {
		name  string
		spoil func(t *testing.T)
		want  string
	}{
		{"file open to others", func(t *testing.T) { chmod(t, path, 0o644) }, "open to other users"},
		{"folder open to others", func(t *testing.T) { chmod(t, filepath.Dir(path), 0o755) }, "open to other users"},
		{"another user's", func(t *testing.T) {
			if os.Getuid() != 0 {
				t.Skip("only root can give a file to another user")
			}
			if err := os.Lchown(path, 12345, 12345); err != nil {
				t.Fatal(err)
			}
		}, "belongs to user 12345"},
		{"a link", func(t *testing.T) {
			other := filepath.Join(t.TempDir(), "other.json")
			b, _ := os.ReadFile(path)
			if err := os.WriteFile(other, b, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(other, path); err != nil {
				t.Fatal(err)
			}
		}, "not a regular file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := WriteRunFile(f); err != nil && !strings.Contains(err.Error(), "open to other users") {
				t.Fatal(err)
			}
			chmod(t, filepath.Dir(path), 0o700)
			if _, err := WriteRunFile(f); err != nil {
				t.Fatal(err)
			}
			tt.spoil(t)
			if _, err := ReadRunFile("show"); err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), filepath.Dir(path)) {
				t.Errorf("ReadRunFile: %v, want an error with %q naming the path", err, tt.want)
			}
			chmod(t, filepath.Dir(path), 0o700)
			os.Remove(path)
		})
	}
	if _, err := WriteRunFile(f); err != nil {
		t.Fatal(err)
	}
	remove()
	if _, err := ReadRunFile("show"); !errors.Is(err, ErrNoRun) {
		t.Fatalf("after remove: %v, want ErrNoRun", err)
	}
	f.PID = 1 << 30 // no such process
	if _, err := WriteRunFile(f); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadRunFile("show"); !errors.Is(err, ErrNoRun) || !strings.Contains(err.Error(), "stale") {
		t.Fatalf("stale run file: %v, want ErrNoRun saying it is stale", err)
	}
}

func chmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}
