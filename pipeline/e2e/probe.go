package e2e

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// VideoPackets is the number of packets of a file's first video stream,
// as ffprobe reads them (no decoding).
func VideoPackets(t testing.TB, path string) int {
	t.Helper()
	return probeCount(t, path, "-count_packets", "stream=nb_read_packets")
}

// VideoFrames is the number of frames ffprobe decodes from a file's first
// video stream.
func VideoFrames(t testing.TB, path string) int {
	t.Helper()
	return probeCount(t, path, "-count_frames", "stream=nb_read_frames")
}

func probeCount(t testing.TB, path, count, entry string) int {
	t.Helper()
	out, err := exec.Command(Tool(t, "ffprobe"), "-v", "error", "-select_streams", "v:0", count,
		"-show_entries", entry, "-of", "csv=p=0", path).CombinedOutput()
	if err != nil {
		t.Fatalf("ffprobe %s: %v\n%s", path, err, out)
	}
	// A stream that is also in a program (HLS, MPEG-TS) is listed twice.
	first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	n, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		t.Fatalf("ffprobe %s: %q", path, out)
	}
	return n
}
