package personalise

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/asticode/go-astiav"
)

// What a look's overlay images may be, beyond what viewers.Profile.Check
// bounds (which refuses what a profile alone shows wrong: templates whose
// run time is unbounded, bitrates no encoder opens, paths that leave the
// pipeline's folder): anyone who may write the bucket writes looks, and a
// branch that fails once it runs costs its viewers their output. The files
// are checked here, where they are, before the branch is added.

// maxImage is the largest overlay image file, in bytes.
const maxImage = 16 << 20

// imagePath resolves an overlay image's path inside the pipeline's
// folder, refusing paths that leave it (absolute, .., or a symbolic link
// out): a look would otherwise show any image file the pipeline's user
// can read to whoever watches it.
func (s *Stage) imagePath(image string) (string, error) {
	clean := filepath.Clean(image)
	if filepath.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, ".."+string(filepath.Separator)) {
		return "", fmt.Errorf("%q: want a path inside the pipeline's folder", image)
	}
	dir, err := filepath.Abs(s.in.Dir)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, clean)
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "", err
	}
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", err
	}
	if rel, err := filepath.Rel(realDir, real); err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return "", fmt.Errorf("%q: a link out of the pipeline's folder", image)
	}
	return path, nil
}

// checkImage reports why an overlay image cannot be drawn: not a file,
// too big, or not one picture FFmpeg decodes (the render stage's movie
// filter would fail on it, and the run with it).
func checkImage(path string) error {
	st, err := os.Stat(path)
	switch {
	case err != nil:
		return err
	case !st.Mode().IsRegular():
		return fmt.Errorf("%s is not a file", path)
	case st.Size() > maxImage:
		return fmt.Errorf("%s: %d bytes: at most %d", path, st.Size(), maxImage)
	}
	fc := astiav.AllocFormatContext()
	if fc == nil {
		return fmt.Errorf("%s: allocating a format context failed", path)
	}
	if err := fc.OpenInput(path, nil, nil); err != nil {
		return fmt.Errorf("%s is not an image FFmpeg reads: %w", path, err) // avformat_open_input freed fc
	}
	defer fc.CloseInput() // frees fc
	if err := fc.FindStreamInfo(nil); err != nil {
		return fmt.Errorf("%s is not an image FFmpeg reads: %w", path, err)
	}
	name := fc.InputFormat().Name()
	streams := fc.Streams()
	if name != "image2" && !strings.HasSuffix(name, "_pipe") || len(streams) != 1 {
		return fmt.Errorf("%s is %s with %d streams, not one picture (PNG, JPEG)", path, name, len(streams))
	}
	if cp := streams[0].CodecParameters(); cp.MediaType() != astiav.MediaTypeVideo || cp.Width() <= 0 || cp.Height() <= 0 {
		return fmt.Errorf("%s is not a picture FFmpeg decodes", path)
	}
	return nil
}
