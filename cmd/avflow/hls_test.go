package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
)

// TestHLSHandler: --serve-hls serves the playlists and segments under its
// folder with their MIME types, and nothing else: no other file type, no
// method but GET and HEAD, nothing outside the folder, through a link
// either (a link in the out folder to a file elsewhere was served, as
// http.Dir follows links).
func TestHLSHandler(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	write := func(path, body string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(root, "p", "v", "index.m3u8"), "#EXTM3U\n")
	write(filepath.Join(root, "p", "v", "seg0.ts"), "segment")
	write(filepath.Join(root, "p", "v", "notes.txt"), "not hls")
	write(filepath.Join(outside, "secret.m3u8"), "secret")
	if err := os.Symlink(filepath.Join(outside, "secret.m3u8"), filepath.Join(root, "p", "v", "link.m3u8")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "p", "out")); err != nil {
		t.Fatal(err)
	}
	h, closeRoot, err := hlsHandler(root)
	if err != nil {
		t.Fatal(err)
	}
	defer closeRoot()
	for _, c := range []struct {
		method, path string
		code         int
		ctype, body  string
	}{
		{"GET", "/p/v/index.m3u8", 200, "application/vnd.apple.mpegurl", "#EXTM3U\n"},
		{"HEAD", "/p/v/index.m3u8", 200, "application/vnd.apple.mpegurl", ""},
		{"GET", "/p/v/seg0.ts", 200, "video/mp2t", "segment"},
		{"GET", "/p/v/notes.txt", 404, "", ""},
		{"POST", "/p/v/index.m3u8", 405, "", ""},
		{"GET", "/p/v/missing.m3u8", 404, "", ""},
		{"GET", "/p/v/link.m3u8", 404, "", ""},
		{"GET", "/p/out/secret.m3u8", 404, "", ""},
		{"GET", "/../" + filepath.Base(outside) + "/secret.m3u8", 404, "", ""},
	} {
		t.Run(c.method+c.path, func(t *testing.T) {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(c.method, c.path, nil))
			if rec.Code != c.code {
				t.Fatalf("status %d, want %d (body %q)", rec.Code, c.code, rec.Body.String())
			}
			if c.code != http.StatusOK {
				return
			}
			if got := rec.Header().Get("Content-Type"); got != c.ctype {
				t.Errorf("Content-Type %q, want %q", got, c.ctype)
			}
			if got := rec.Body.String(); got != c.body {
				t.Errorf("body %q, want %q", got, c.body)
			}
		})
	}
}
