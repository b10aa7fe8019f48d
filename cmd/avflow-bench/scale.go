package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// scaleFrames is what each camera of the scale benchmark sends.
const scaleFrames = 25

// scaleYAML is a pipeline of cams cameras of 6 stages each: a small test
// source, decode, two filters, an MPEG-4 encoder and a null sink.
func scaleYAML(cams int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "name: bench-scale\nstages:\n")
	for i := range cams {
		fmt.Fprintf(&b, `  - {name: src%[1]d, kind: source, params: {url: "lavfi:testsrc2=size=64x48:rate=25", max_frames: %[2]d, audio: false}}
  - {name: dec%[1]d, kind: decode, inputs: [src%[1]d.video]}
  - {name: fa%[1]d, kind: filter, inputs: [dec%[1]d], params: {graph: "null"}}
  - {name: fb%[1]d, kind: filter, inputs: [fa%[1]d], params: {graph: "null"}}
  - {name: enc%[1]d, kind: encode, inputs: [fb%[1]d], params: {codec: mpeg4}}
  - {name: out%[1]d, kind: sink, inputs: [enc%[1]d], params: {path: "null"}}
`, i, scaleFrames)
	}
	return b.String()
}

// scaleFFmpegArgs is the peer: one ffmpeg process running the same cams
// source -> two null filters -> mpeg4 -> null chains.
func scaleFFmpegArgs(cams int) []string {
	args := []string{"-v", "error", "-nostats"}
	for range cams {
		args = append(args, "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25")
	}
	for i := range cams {
		args = append(args, "-map", fmt.Sprintf("%d:v", i), "-vf", "null,null", "-c:v", "mpeg4", "-frames:v", fmt.Sprint(scaleFrames), "-f", "null", "-")
	}
	return args
}

// scaleBench runs pipelines of 1, 64 and 167 cameras (6, 384 and 1,002
// stages) over both transports against the ffmpeg CLI running the same
// chains in one process, and reports wall time, peak RSS and the memory
// each stage adds.
func scaleBench(b *strings.Builder, bin, work string, rounds int) {
	sizes := []int{1, 64, 167}
	type row struct{ ff, nats, local measure }
	rows := map[int]row{}
	for _, cams := range sizes {
		yaml := filepath.Join(work, fmt.Sprintf("scale-%d.yaml", cams))
		if err := os.WriteFile(yaml, []byte(scaleYAML(cams)), 0o644); err != nil {
			fail(err)
		}
		var ff, nats, local []measure
		for i := range rounds {
			slog.Info("scale round", "cameras", cams, "stages", 6*cams, "round", i+1, "of", rounds)
			for _, run := range []struct {
				into *[]measure
				name string
				args []string
			}{
				{&ff, "ffmpeg", scaleFFmpegArgs(cams)},
				{&nats, bin, []string{"--log-level", "warn", "run", "--transport", "nats", yaml}},
				{&local, bin, []string{"--log-level", "warn", "run", "--transport", "local", yaml}},
			} {
				m, err := timed(run.name, run.args...)
				if err != nil {
					fail(err)
				}
				*run.into = append(*run.into, m)
			}
		}
		rows[cams] = row{median(ff), median(nats), median(local)}
	}
	fmt.Fprintf(b, "## Scale: cameras x 6 stages\n\n")
	fmt.Fprintf(b, "Each camera: `lavfi:testsrc2=size=64x48:rate=25` (%d frames) -> decode -> filter(null) -> filter(null) -> encode(mpeg4) -> sink(null). Peer: one `ffmpeg` process running the same chains (`-f lavfi -i testsrc2... -map N:v -vf null,null -c:v mpeg4 -frames:v %d -f null -` per camera). Wall time is the whole run: start, every frame, finish.\n\n", scaleFrames, scaleFrames)
	fmt.Fprintf(b, "| cameras | stages | ffmpeg wall | avflow nats wall | ratio | avflow local wall | ratio | ffmpeg RSS | avflow nats RSS | avflow local RSS |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	mib := func(m measure) float64 { return float64(m.rssKiB) / 1024 }
	for _, cams := range sizes {
		r := rows[cams]
		fmt.Fprintf(b, "| %d | %d | %.2fs | %.2fs | %.2f | %.2fs | %.2f | %.0f MiB | %.0f MiB | %.0f MiB |\n", cams, 6*cams,
			r.ff.wall.Seconds(), r.nats.wall.Seconds(), r.ff.wall.Seconds()/r.nats.wall.Seconds(),
			r.local.wall.Seconds(), r.ff.wall.Seconds()/r.local.wall.Seconds(), mib(r.ff), mib(r.nats), mib(r.local))
	}
	lo, hi := rows[sizes[0]], rows[sizes[len(sizes)-1]]
	per := func(a, z measure) float64 {
		return (float64(z.rssKiB) - float64(a.rssKiB)) / float64(6*(sizes[len(sizes)-1]-sizes[0]))
	}
	fmt.Fprintf(b, "\nMemory per stage (peak RSS from %d to %d stages): ffmpeg %.0f KiB, avflow nats %.0f KiB, avflow local %.0f KiB. Ratio is ffmpeg's wall time over avflow's (1: as fast).\n\n",
		6*sizes[0], 6*sizes[len(sizes)-1], per(lo.ff, hi.ff), per(lo.nats, hi.nats), per(lo.local, hi.local))
}
