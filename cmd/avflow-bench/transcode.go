package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

const transcodeYAML = `name: bench-transcode
stages:
  - {name: src, kind: source, params: {url: %q}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: scale, kind: filter, inputs: [dec], params: {graph: "scale=1280:720"}}
  - {name: enc, kind: encode, inputs: [scale], params: {codec: libx264, preset: veryfast}}
  - {name: out, kind: sink, inputs: [enc], params: {path: %q}}
`

// transcodeClip is one input of the transcode benchmark.
type transcodeClip struct {
	title  string // the section's heading
	about  string // how the clip was made
	path   string
	frames int
}

// transcode runs the 1080p -> 720p transcode on a synthetic clip and on
// real street footage scaled to 1080p, the ffmpeg CLI against avflow with
// its default transport (auto) and with nats and local.
func transcode(b *strings.Builder, bin, work string, rounds, frames int) {
	tmp, err := os.MkdirTemp("", "avflow-bench-transcode")
	if err != nil {
		fail(err)
	}
	defer os.RemoveAll(tmp)
	synth, _ := filepath.Abs(filepath.Join(work, fmt.Sprintf("in1080-%d.mp4", frames)))
	if _, err := os.Stat(synth); err != nil {
		slog.Info("generating the 1080p input clip", "frames", frames, "path", synth)
		if _, err := timed("ffmpeg", "-y", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30",
			"-frames:v", fmt.Sprint(frames), "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", synth); err != nil {
			fail(err)
		}
	}
	transcodeOne(b, bin, tmp, rounds, transcodeClip{title: fmt.Sprintf("%d frames of a synthetic 1080p clip", frames), path: synth, frames: frames,
		about: fmt.Sprintf("`ffmpeg -f lavfi -i testsrc2=size=1920x1080:rate=30 -frames:v %d -c:v libx264 -preset veryfast -pix_fmt yuv420p in1080.mp4`", frames)})

	car := filepath.Join(tmp, "car1080.mp4")
	slog.Info("scaling car-detection.mp4 to 1080p", "path", car)
	carArgs := []string{"-y", "-v", "error", "-i", filepath.Join(mediaDir(), "car-detection.mp4"), "-vf", "scale=1920:1080", "-an",
		"-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", car}
	if _, err := timed("ffmpeg", carArgs...); err != nil {
		fail(err)
	}
	n, err := countFrames(car)
	if err != nil {
		fail(err)
	}
	transcodeOne(b, bin, tmp, rounds, transcodeClip{title: "car-detection.mp4 (real street footage) scaled to 1080p", path: car, frames: n,
		about: "`ffmpeg -i car-detection.mp4 -vf scale=1920:1080 -an -c:v libx264 -preset veryfast -crf 18 -pix_fmt yuv420p car1080.mp4` (768x432 12.5 fps, " + strconv.Itoa(n) + " frames)"})
}

// countFrames is the number of video frames ffprobe decodes from a file.
func countFrames(path string) (int, error) {
	out, err := exec.Command("ffprobe", "-v", "error", "-count_frames", "-select_streams", "v", "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", path).Output()
	if err != nil {
		return 0, fmt.Errorf("ffprobe %s: %w", path, err)
	}
	return strconv.Atoi(strings.TrimSpace(string(out)))
}

func transcodeOne(b *strings.Builder, bin, tmp string, rounds int, clip transcodeClip) {
	ffOut := filepath.Join(tmp, "ffmpeg-720p.mp4")
	avOut := filepath.Join(tmp, "avflow-720p.mp4")
	yaml := filepath.Join(tmp, "transcode.yaml")
	if err := os.WriteFile(yaml, []byte(fmt.Sprintf(transcodeYAML, clip.path, avOut)), 0o644); err != nil {
		fail(err)
	}
	// avflow's MP4s are faststart by default: the peer moves its index too.
	ffArgs := []string{"-y", "-v", "error", "-nostats", "-i", clip.path, "-vf", "scale=1280:720", "-c:v", "libx264", "-preset", "veryfast", "-an", "-movflags", "+faststart", ffOut}
	runs := []struct {
		name string
		cmd  string
		args []string
		ms   []measure
	}{
		{name: "ffmpeg CLI", cmd: "ffmpeg", args: ffArgs},
		{name: "avflow, default (auto: in-process zero-copy edges)", cmd: bin, args: []string{"--log-level", "warn", "run", yaml}},
		{name: "avflow, --transport nats (every edge a subject)", cmd: bin, args: []string{"--log-level", "warn", "run", "--transport", "nats", yaml}},
		{name: "avflow, --transport local (no NATS)", cmd: bin, args: []string{"--log-level", "warn", "run", "--transport", "local", yaml}},
	}
	for i := 0; i < rounds; i++ {
		slog.Info("transcode round", "clip", filepath.Base(clip.path), "round", i+1, "of", rounds)
		// Each round starts with another run, so that no variant always
		// follows the same one (a warm cache, a neighbour's burst).
		for k := range runs {
			j := (i + k) % len(runs)
			m, err := timed(runs[j].cmd, runs[j].args...)
			if err != nil {
				fail(err)
			}
			runs[j].ms = append(runs[j].ms, m)
			if j == 0 {
				continue
			}
			// Every avflow output is checked, not only the last one's.
			if err := checkTranscode(avOut, clip.frames); err != nil {
				fail(fmt.Errorf("%s: %w", runs[j].name, err))
			}
		}
	}
	if err := checkTranscode(ffOut, clip.frames); err != nil {
		fail(err)
	}
	f := median(runs[0].ms)
	fps := func(m measure) float64 { return float64(clip.frames) / m.wall.Seconds() }
	fmt.Fprintf(b, "## Transcode: %s -> 720p libx264 veryfast\n\n", clip.title)
	fmt.Fprintf(b, "Input: %s. Peer: `ffmpeg -i in.mp4 -vf scale=1280:720 -c:v libx264 -preset veryfast -an -movflags +faststart out.mp4` (avflow's MP4s are faststart by default). "+
		"avflow: `avflow run transcode.yaml`, source -> decode -> filter(scale=1280:720) -> encode(libx264 veryfast) -> sink(mp4), with the default transport (no `--transport` flag: `auto`, edges between stages of one process in-process and zero-copy, the embedded NATS server for services), "+
		"then `--transport nats` (every edge a NATS subject on the embedded server: raw 1080p and 720p frames cross as messages) and `--transport local` (in-process, no NATS at all). Every output is checked with ffprobe (1280x720, %d frames).\n\n", clip.about, clip.frames)
	fmt.Fprintf(b, "| run | wall (median) | fps | throughput ratio vs ffmpeg | ratio, median of rounds (min-max) | CPU s (median) | CPU ratio (ffmpeg/avflow) | context switches (median) | page faults (median) | peak RSS |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range runs {
		m := median(r.ms)
		// Each round's ratio: ffmpeg and avflow ran one after the other,
		// under about the same load of this shared machine.
		var ratios []float64
		for i := range r.ms {
			ratios = append(ratios, runs[0].ms[i].wall.Seconds()/r.ms[i].wall.Seconds())
		}
		fmt.Fprintf(b, "| %s | %.2fs | %.1f | %.3f | %.3f (%.3f-%.3f) | %.2f | %.3f | %d | %d | %.0f MiB |\n", r.name, m.wall.Seconds(), fps(m), fps(m)/fps(f),
			medianOf(ratios), slices.Min(ratios), slices.Max(ratios), m.cpu.Seconds(), f.cpu.Seconds()/m.cpu.Seconds(), m.csw, m.faults, float64(m.rssKiB)/1024)
	}
	var rs []string
	for _, r := range runs {
		rs = append(rs, r.name+" "+walls(r.ms))
	}
	fmt.Fprintf(b, "\nTarget: avflow with default settings at least 0.95 of ffmpeg's throughput, judged on the median of the %d rounds' ratios (each round runs ffmpeg and every avflow variant back to back, starting with a different one each round, so both sides of a ratio saw about the same load; the ratio of the medians moves more, as each median picks its own round). Individual rounds (s): %s.\n\n", rounds, strings.Join(rs, "; "))
}

// checkTranscode checks that a transcode's output is 1280x720 with every frame.
func checkTranscode(p string, frames int) error {
	out, err := exec.Command("ffprobe", "-v", "error", "-count_frames", "-show_entries", "stream=width,height,nb_read_frames", "-of", "csv=p=0", p).Output()
	if err != nil || strings.TrimSpace(string(out)) != fmt.Sprintf("1280,720,%d", frames) {
		return fmt.Errorf("%s: got %q, want 1280,720,%d (%v)", p, strings.TrimSpace(string(out)), frames, err)
	}
	return nil
}
