//go:build !cgo

package accelerators

import "errors"

// ErrNoFFmpeg is what the FFmpeg probes return in a build without cgo:
// discovery, binding and planning work, but no FFmpeg device can be
// opened, so GPUs and NPUs are listed as not usable.
var ErrNoFFmpeg = errors.New("accelerators: built without cgo (FFmpeg): devices cannot be opened")

// ProbeFFmpeg fails: this build has no FFmpeg (see ErrNoFFmpeg).
func ProbeFFmpeg(kind, device string) error { return ErrNoFFmpeg }

// ProbeEncoder fails: this build has no FFmpeg (see ErrNoFFmpeg).
func ProbeEncoder(kind, device string) error { return ErrNoFFmpeg }
