package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/avflow/avflow/pipeline"
)

// hlsTypes are the files --serve-hls serves, with the MIME types players
// expect; anything else is not found.
var hlsTypes = map[string]string{
	".m3u8": "application/vnd.apple.mpegurl",
	".ts":   "video/mp2t",
	".m4s":  "video/iso.segment",
	".mp4":  "video/mp4",
	".aac":  "audio/aac",
	".vtt":  "text/vtt",
}

// hlsRoot is the folder --serve-hls serves: the out folder of the
// pipeline's personalise stage (its renditions are <out>/<pipeline>/
// <variant>/index.m3u8), else the folder of its first HLS sink.
func hlsRoot(cfg *pipeline.Config) (string, bool) {
	for _, s := range cfg.Stages {
		if s.Kind == "personalise" {
			out := "out"
			if v, ok := s.Params["out"].(string); ok && v != "" {
				out = v
			}
			return pipeline.ResolvePath(cfg.Dir, out), true
		}
	}
	for _, s := range cfg.Stages {
		if p, ok := s.Params["path"].(string); ok && s.Kind == "sink" && strings.HasSuffix(p, ".m3u8") {
			return filepath.Dir(pipeline.ResolvePath(cfg.Dir, p)), true
		}
	}
	return "", false
}

// servePlaylists serves root's playlists and segments on addr, and points
// the personalise stages' manifests at it (their playlist_url, unless the
// file sets one).
func servePlaylists(addr string, cfg *pipeline.Config) (stop func(), err error) {
	root, ok := hlsRoot(cfg)
	if !ok {
		return nil, fmt.Errorf("--serve-hls: the pipeline writes no HLS (no personalise stage, no sink with a .m3u8 path)")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--serve-hls: listening on %s failed: %w", addr, err)
	}
	base := "http://" + ln.Addr().String()
	for _, s := range cfg.Stages {
		if s.Kind == "personalise" {
			if _, set := s.Params["playlist_url"]; !set {
				s.Params["playlist_url"] = base + "/{pipeline}/{variant}/index.m3u8"
			}
		}
	}
	h, closeRoot, err := hlsHandler(root)
	if err != nil {
		_ = ln.Close()
		return nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	slog.Info("serving HLS", "url", base+"/", "folder", root)
	return func() { _ = srv.Close(); closeRoot() }, nil
}

// hlsHandler serves the HLS files under root (GET and HEAD only), with
// their MIME types, playlists uncached, open to players on other origins.
// Nothing outside root is served, through a link either (os.Root); root
// is made when it is not there yet (the stages make it as they start).
func hlsHandler(root string) (http.Handler, func(), error) {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, nil, fmt.Errorf("--serve-hls: making %s failed: %w", root, err)
	}
	dir, err := os.OpenRoot(root)
	if err != nil {
		return nil, nil, fmt.Errorf("--serve-hls: opening %s failed: %w", root, err)
	}
	files := http.FileServerFS(notFoundFS{dir.FS()})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		ctype, ok := hlsTypes[path.Ext(r.URL.Path)]
		if !ok {
			http.NotFound(w, r)
			return
		}
		h := w.Header()
		h.Set("Content-Type", ctype)
		h.Set("Access-Control-Allow-Origin", "*")
		if path.Ext(r.URL.Path) == ".m3u8" {
			h.Set("Cache-Control", "no-cache")
		}
		files.ServeHTTP(w, r)
	}), func() { _ = dir.Close() }, nil
}

// notFoundFS answers "not found" for whatever it cannot open (a path out
// of the root, through a link too), rather than an internal error.
type notFoundFS struct{ fs.FS }

func (n notFoundFS) Open(name string) (fs.File, error) {
	f, err := n.FS.Open(name)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %w", fs.ErrNotExist, err)
	}
	return f, err
}
