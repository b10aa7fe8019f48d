package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// remoteInferStreams and remoteInferSize: the streams of the remote
// inference benchmark.
const (
	remoteInferStreams = 8
	remoteInferW       = 640
	remoteInferH       = 480
)

// remoteInferYAML is 8 lavfi streams (H.264 packets), each decoded, run through its own
// infer stage (local or remote: true) and encoded.
func remoteInferYAML(frames int, remote bool) string {
	var b strings.Builder
	b.WriteString("name: bench-remote-infer\nstages:\n")
	for i := range remoteInferStreams {
		fmt.Fprintf(&b, "  - {name: s%d, kind: source, params: {url: \"lavfi:testsrc2=size=%dx%d:rate=30\", max_frames: %d, audio: false}}\n", i, remoteInferW, remoteInferH, frames)
		fmt.Fprintf(&b, "  - {name: d%d, kind: decode, inputs: [s%d.video]}\n", i, i)
		fmt.Fprintf(&b, "  - {name: f%d, kind: infer, inputs: [d%d], params: {model: ultraface-rfb-320, remote: %t, threads: 1, timeout: 60s}}\n", i, i, remote)
		fmt.Fprintf(&b, "  - {name: e%d, kind: encode, inputs: [f%d], params: {codec: libx264, preset: ultrafast}}\n", i, i)
		fmt.Fprintf(&b, "  - {name: o%d, kind: sink, inputs: [e%d], params: {path: \"null\"}}\n", i, i)
	}
	return b.String()
}

// remoteInferSample is one run of the benchmark.
type remoteInferSample struct {
	wall     time.Duration
	cpu      time.Duration // every process: run, service, nats-server
	reqBytes float64       // request bytes per inferred frame (remote)
	batch    float64       // the service's mean batch (remote)
}

var (
	eventCount = regexp.MustCompile(`(remote_bytes|remote_requests)=(\d+)`)
	meanBatch  = regexp.MustCompile(`mean_batch=([0-9.]+)`) // the service's last log line
)

// remoteInferRun runs the pipeline once, local or with one serve --infer
// service, over one nats-server.
func remoteInferRun(bin, dir, natsBin string, frames int, remote bool) remoteInferSample {
	srv, err := startNATSServer(natsBin, dir, "")
	if err != nil {
		fail(err)
	}
	defer srv.stop()
	yaml := filepath.Join(dir, fmt.Sprintf("remote-infer-%t.yaml", remote))
	if err := os.WriteFile(yaml, []byte(remoteInferYAML(frames, remote)), 0o644); err != nil {
		fail(err)
	}
	var svc *proc
	if remote {
		if svc, err = startProc(os.Environ(), bin, "serve", "--infer", "ultraface-rfb-320", "--nats", srv.url, "--max-batch", "8", "--max-wait", "5ms", "--threads", "2"); err != nil {
			fail(err)
		}
		defer svc.kill()
		if err := svc.waitOutput("inference service ready", time.Minute); err != nil {
			fail(err)
		}
	}
	cpu0 := srv.cpu()
	run, err := startProc(os.Environ(), bin, "run", yaml, "--nats", srv.url)
	if err != nil {
		fail(err)
	}
	m, err := run.wait(20 * time.Minute)
	if err != nil {
		fail(err)
	}
	s := remoteInferSample{wall: m.wall, cpu: m.cpu + srv.cpu() - cpu0}
	if remote {
		_ = svc.cmd.Process.Signal(os.Interrupt)
		sm, err := svc.wait(time.Minute)
		if err != nil {
			fail(err)
		}
		s.cpu += sm.cpu
		if mb := meanBatch.FindStringSubmatch(svc.out.String()); mb != nil {
			s.batch, _ = strconv.ParseFloat(mb[1], 64)
		}
		var bytes, reqs float64
		for _, m := range eventCount.FindAllStringSubmatch(run.out.String(), -1) {
			v, _ := strconv.ParseFloat(m[2], 64)
			if m[1] == "remote_bytes" {
				bytes += v
			} else {
				reqs += v
			}
		}
		if reqs > 0 {
			s.reqBytes = bytes / reqs
		}
	}
	return s
}

// remoteInferBench: 8 streams, each with its own local infer stage, vs the
// same 8 through one shared serve --infer service with batching.
func remoteInferBench(b *strings.Builder, bin, natsBin string, rounds, frames int) {
	dir, err := os.MkdirTemp("", "avflow-bench-remote-infer")
	if err != nil {
		fail(err)
	}
	defer os.RemoveAll(dir)
	var local, remote []remoteInferSample
	for r := range rounds {
		slog.Info("remote inference round", "round", r+1, "of", rounds)
		local = append(local, remoteInferRun(bin, dir, natsBin, frames, false))
		remote = append(remote, remoteInferRun(bin, dir, natsBin, frames, true))
	}
	total := float64(remoteInferStreams * frames)
	raw := remoteInferW * remoteInferH * 3 / 2 // yuv420p
	fmt.Fprintf(b, "## Remote inference: %d streams through one shared service\n\n", remoteInferStreams)
	fmt.Fprintf(b, "%d `lavfi:testsrc2=size=%dx%d:rate=30` streams of %d frames, each -> decode -> infer (UltraFace RFB-320, every frame, `threads: 1`) -> libx264 ultrafast -> null, in one `avflow run --nats URL` over one `bin/nats-server`: (a) each stream with its own local infer stage; (b) the same stages with `remote: true` and one `avflow serve --infer ultraface-rfb-320 --max-batch 8 --max-wait 5ms --threads 2` on the same machine. CPU is every process's (run, service, nats-server). Median of %d interleaved rounds. Both share these 2 cores, so this measures batching and the wire, not a faster inference box.\n\n",
		remoteInferStreams, remoteInferW, remoteInferH, frames, rounds)
	b.WriteString("| layout | wall | total fps | CPU s per frame | bytes on the wire per inferred frame | service mean batch |\n|---|---:|---:|---:|---:|---:|\n")
	row := func(name string, ss []remoteInferSample, bytes string) {
		walls, cpus, batches := make([]float64, len(ss)), make([]float64, len(ss)), make([]float64, len(ss))
		for i, s := range ss {
			walls[i], cpus[i], batches[i] = s.wall.Seconds(), s.cpu.Seconds(), s.batch
		}
		w, c := medianOf(walls), medianOf(cpus)
		batch := "-"
		if mb := medianOf(batches); mb > 0 {
			batch = fmt.Sprintf("%.2f", mb)
		}
		fmt.Fprintf(b, "| %s | %.2fs | %.1f | %.4f | %s | %s |\n", name, w, total/w, c/total, bytes, batch)
	}
	row("(a) local infer stage per stream", local, fmt.Sprintf("%d (a raw frame, were the stage in another process)", raw))
	req := make([]float64, len(remote))
	for i, s := range remote {
		req[i] = s.reqBytes
	}
	row("(b) remote: true, one serve --infer", remote, fmt.Sprintf("%.0f (%.2fx a raw frame; a 1080p frame is 3110400)", medianOf(req), medianOf(req)/float64(raw)))
	b.WriteString("\n")
}
