// Package e2e is the one helper end-to-end tests share: it finds the real
// media and models beside the checkout (../shared, or $AVFLOW_MEDIA for the
// media), the command-line tools the tests compare against (ffmpeg,
// ffprobe), and skips long tests under -short with the reason.
//
// It imports nothing of avflow, so every package's tests can use it,
// including the pipeline package's own.
package e2e

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Long skips t under `go test -short`: it runs real media end to end.
func Long(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test on real media: skipped with -short")
	}
}

var (
	rootOnce sync.Once
	root     string
	rootErr  error
)

// moduleRoot is the folder holding go.mod, found from the test's working
// directory (its package folder) upwards.
func moduleRoot() (string, error) {
	rootOnce.Do(func() {
		dir, err := os.Getwd()
		if err != nil {
			rootErr = err
			return
		}
		for {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				root = dir
				return
			}
			up := filepath.Dir(dir)
			if up == dir {
				rootErr = errors.New("no go.mod above the test's folder")
				return
			}
			dir = up
		}
	})
	return root, rootErr
}

// Shared returns the absolute path of ../shared/<sub> beside the checkout
// (media, models), failing the test when it is missing.
func Shared(t testing.TB, sub string) string {
	t.Helper()
	r, err := moduleRoot()
	if err != nil {
		t.Fatalf("e2e: %v", err)
	}
	p := filepath.Join(filepath.Dir(r), "shared", sub)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("e2e: the shared test data is missing (%v): it sits beside the checkout as ../shared", err)
	}
	return p
}

// MediaDir is the sample media folder: $AVFLOW_MEDIA, else ../shared/media.
func MediaDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("AVFLOW_MEDIA"); d != "" {
		abs, err := filepath.Abs(d)
		if err != nil {
			t.Fatalf("e2e: AVFLOW_MEDIA: %v", err)
		}
		return abs
	}
	return Shared(t, "media")
}

// Media returns the absolute path of a sample clip (a path relative to the
// media folder, such as "facecam/book.mkv"), failing the test when the
// file is missing.
func Media(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(MediaDir(t), name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("e2e: sample media: %v", err)
	}
	return p
}

// Models is the offline model mirror, ../shared/models.
func Models(t testing.TB) string {
	t.Helper()
	return Shared(t, "models")
}

// Tool returns the path of a command-line tool the test needs (ffmpeg,
// ffprobe), failing the test when it is not installed (make setup installs
// them).
func Tool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("e2e: %s is not installed (make setup installs it): %v", name, err)
	}
	return p
}

// WaitFor checks cond every 20 ms until it holds, failing the test after
// limit with what it waited for (what is called then, so it can show a log
// as it stands at the time).
func WaitFor(t testing.TB, limit time.Duration, what func() string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
