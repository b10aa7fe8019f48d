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

// wireYAML: raw 720p frames made in the run's process go to a
// pass-through stage served by another process and come back. The
// source is lavfi's color (cheap to make, so the frames' cost is the
// transport's); wrapped_avframe hands the frames to the null sink by
// reference.
const wireYAML = `name: bench-wire
queue: %d
stages:
  - {name: src, kind: source, params: {url: "lavfi:color=c=gray:size=1280x720:rate=30", max_frames: %d, audio: false}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: fwd, kind: pace, inputs: [dec], params: {rate: 1000000000}}
  - {name: enc, kind: encode, inputs: [fwd], params: {codec: wrapped_avframe}}
  - {name: out, kind: sink, inputs: [enc], params: {path: "null"}}
`

var barepeerRe = regexp.MustCompile(`barepeer: (\d+) messages of (\d+) bytes in ([0-9.]+) s`)

// buildBarepeer builds the bare nats.go peer (cmd/avflow-bench/barepeer) into dir.
func buildBarepeer(dir string) string {
	bin := filepath.Join(dir, "barepeer")
	if _, err := timed("go", "build", "-o", bin, "./cmd/avflow-bench/barepeer"); err != nil {
		fail(err)
	}
	return bin
}

// wireRun is one measured run of a two-process comparison.
type wireRun struct {
	fps  float64       // steady messages per second
	wall time.Duration // the driving process, start to exit
	cpu  time.Duration // both processes and the server
	// CPU of each: the driving process (bare drive, avflow run), the
	// echoing one (bare echo, avflow serve), the server.
	driveCPU, echoCPU, serverCPU time.Duration
}

// bareWire runs the bare peer: echo in one process, drive in another.
func bareWire(bin string, srv *natsServer, n, window int) wireRun {
	c0 := srv.cpu()
	echo, err := startProc(os.Environ(), bin, "-nats", srv.url, "-role", "echo", "-n", fmt.Sprint(n))
	if err != nil {
		fail(err)
	}
	defer echo.kill()
	if err := echo.waitOutput("ready", 30*time.Second); err != nil {
		fail(err)
	}
	drive, err := startProc(os.Environ(), bin, "-nats", srv.url, "-role", "drive", "-n", fmt.Sprint(n), "-size", fmt.Sprint(frameBytes), "-window", fmt.Sprint(window))
	if err != nil {
		fail(err)
	}
	md, err := drive.wait(5 * time.Minute)
	if err != nil {
		fail(err)
	}
	me, err := echo.wait(time.Minute)
	if err != nil {
		fail(err)
	}
	m := barepeerRe.FindStringSubmatch(drive.out.String())
	if m == nil || m[1] != fmt.Sprint(n) {
		fail(fmt.Errorf("barepeer drive printed no result:\n%s", drive.out.String()))
	}
	secs, _ := strconv.ParseFloat(m[3], 64)
	sc := srv.cpu() - c0
	return wireRun{fps: float64(n) / secs, wall: md.wall, cpu: md.cpu + me.cpu + sc, driveCPU: md.cpu, echoCPU: me.cpu, serverCPU: sc}
}

// avflowWire runs `avflow serve --stage fwd` and `avflow run --remote fwd`.
func avflowWire(bin, yaml string, srv *natsServer, n int) wireRun {
	c0 := srv.cpu()
	serve, err := startProc(os.Environ(), bin, "--log-level", "warn", "serve", yaml, "--stage", "fwd", "--nats", srv.url)
	if err != nil {
		fail(err)
	}
	defer serve.kill()
	run, err := startProc(os.Environ(), bin, "run", "--progress-interval", "200ms", yaml, "--nats", srv.url, "--remote", "fwd")
	if err != nil {
		fail(err)
	}
	mr, err := run.wait(5 * time.Minute)
	if err != nil {
		fail(err)
	}
	ms, err := serve.wait(time.Minute)
	if err != nil {
		fail(err)
	}
	for _, row := range endTable(run.out.String()) {
		if row["stage"] == "out" && row["in"] != fmt.Sprint(n) {
			fail(fmt.Errorf("the sink took %s frames, want %d:\n%s", row["in"], n, tail(run.out.String(), 3000)))
		}
	}
	sc := srv.cpu() - c0
	return wireRun{fps: runFPS(run.out.String(), int64(n)), wall: mr.wall, cpu: mr.cpu + ms.cpu + sc, driveCPU: mr.cpu, echoCPU: ms.cpu, serverCPU: sc}
}

// wireBench: raw 720p frames between two processes through one
// nats-server (TCP loopback), avflow against a bare nats.go peer with the
// same payload on the same path.
func wireBench(b *strings.Builder, bin, natsBin, work string, rounds, n int) {
	tmp, err := os.MkdirTemp("", "avflow-bench-wire")
	if err != nil {
		fail(err)
	}
	defer os.RemoveAll(tmp)
	const window = 4 // avflow's default queue: the credits each edge has
	peer := buildBarepeer(tmp)
	big, err := startNATSServer(natsBin, tmp, "8MB")
	if err != nil {
		fail(err)
	}
	defer big.stop()
	std, err := startNATSServer(natsBin, tmp, "")
	if err != nil {
		fail(err)
	}
	defer std.stop()
	yaml := filepath.Join(tmp, "wire.yaml")
	if err := os.WriteFile(yaml, []byte(fmt.Sprintf(wireYAML, window, n)), 0o644); err != nil {
		fail(err)
	}
	runs := []struct {
		name string
		run  func() wireRun
		got  []wireRun
	}{
		{name: "bare nats.go, 2 processes", run: func() wireRun { return bareWire(peer, big, n, window) }},
		{name: "avflow serve + run --remote", run: func() wireRun { return avflowWire(bin, yaml, big, n) }},
		{name: "avflow, server's default 1 MB max payload (each frame in 2 chunks)", run: func() wireRun { return avflowWire(bin, yaml, std, n) }},
	}
	for i := 0; i < rounds; i++ {
		slog.Info("two-process edge round", "round", i+1, "of", rounds)
		for j := range runs {
			r := runs[j].run()
			slog.Info("two-process edge", "run", runs[j].name, "fps", fmt.Sprintf("%.1f", r.fps), "wall", r.wall.Round(time.Millisecond))
			runs[j].got = append(runs[j].got, r)
		}
	}
	med := func(rs []wireRun) (fps float64, wall, cpu time.Duration) {
		var f []float64
		var w, c []measure
		for _, r := range rs {
			f = append(f, r.fps)
			w, c = append(w, measure{wall: r.wall}), append(c, measure{wall: r.cpu})
		}
		return medianOf(f), median(w).wall, median(c).wall
	}
	// perFrame is the median CPU ms per frame of one process.
	perFrame := func(rs []wireRun, of func(wireRun) time.Duration) float64 {
		var v []float64
		for _, r := range rs {
			v = append(v, float64(of(r).Microseconds())/1000/float64(n))
		}
		return medianOf(v)
	}
	bareFPS, _, bareCPU := med(runs[0].got)
	fmt.Fprintf(b, "## Raw 720p frames between two processes through one NATS server (%d frames of %d bytes)\n\n", n, frameBytes)
	fmt.Fprintf(b, "A real `bin/nats-server` on a TCP loopback port (`max_payload: 8MB`, so that a frame is one message for both; the last row uses a server's default of 1 MB). "+
		"avflow: `avflow serve wire.yaml --stage fwd --nats URL` and `avflow run wire.yaml --nats URL --remote fwd`, where wire.yaml is "+
		"`lavfi:color=c=gray:size=1280x720` source -> decode -> fwd (`pace` with a rate of 1e9/s: a pass-through) -> encode(wrapped_avframe) -> sink(null): each frame goes run -> server -> serve -> server -> run, "+
		"as msgpack envelopes with block-mode credits (queue %d). "+
		"Peer: the same path with nats.go and nothing else, `barepeer -role echo` (subscribes, publishes each message back) and `barepeer -role drive -size %d -window %d` (publishes %d messages, at most %d not yet back; a publisher over TCP needs some flow control or the server cuts it off as a slow consumer), two processes, built from cmd/avflow-bench/barepeer. "+
		"frames/s is the steady rate (avflow: between 10%% and 90%% of the frames, from its progress lines; bare: first publish to last message back); wall is the driving process from start to exit (avflow connects, finds the remote stage and its instance, flushes); CPU is both processes and the server.\n\n",
		window, frameBytes, window, n, window)
	fmt.Fprintf(b, "| run | frames/s (steady) | MB/s each way | ratio vs bare | wall, start to exit | CPU s | CPU ratio (bare/avflow) | CPU ms/frame: driver (drive, run) / echo (echo, serve) / server |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range runs {
		fps, wall, cpu := med(r.got)
		fmt.Fprintf(b, "| %s | %.1f | %.0f | %.3f | %.2fs | %.2f | %.3f | %.2f / %.2f / %.2f |\n", r.name, fps, fps*frameBytes/1e6, fps/bareFPS, wall.Seconds(), cpu.Seconds(), bareCPU.Seconds()/cpu.Seconds(),
			perFrame(r.got, func(w wireRun) time.Duration { return w.driveCPU }), perFrame(r.got, func(w wireRun) time.Duration { return w.echoCPU }), perFrame(r.got, func(w wireRun) time.Duration { return w.serverCPU }))
	}
	var rs []string
	for _, r := range runs {
		var f []string
		for _, g := range r.got {
			f = append(f, fmt.Sprintf("%.1f", g.fps))
		}
		rs = append(rs, r.name+" "+strings.Join(f, ", "))
	}
	fmt.Fprintf(b, "\nTarget: avflow at least 0.85 of the bare peer's throughput. Rounds (frames/s): %s.\n\n", strings.Join(rs, "; "))
}
