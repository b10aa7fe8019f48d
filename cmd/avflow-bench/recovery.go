package main

import (
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// recoverySample is one run of the privacy pipeline in which one of the
// two faces workers is killed (SIGKILL) a third of the way through.
type recoverySample struct {
	frames      int           // frames in the output
	disorder    int           // output frames whose timestamp is not above the one before
	recovery    time.Duration // job: from the kill to the survivor's first redelivered message done
	redelivered int64         // job: messages the survivor took that the server had sent before
	duplicates  int64         // job: outputs the stream already had (the killed worker had published them)
	stall       time.Duration // the longest time the sink's frame count stood still after the kill
}

// tookOver is the line a job input writes at the first redelivered
// message done of a burst.
var tookOver = regexp.MustCompile(`(?m)^time=(\S+) level=WARN msg="took a message the server had sent before`)

// recoveryRun runs yaml with faces served by two processes, kills the
// first once the sink has a third of the frames, and reads what the
// survivor and the run say.
func recoveryRun(bin, yaml, out string, srv *natsServer, env []string, delivery string, frames int) recoverySample {
	sets := []string{"--name", "bench-recovery-" + delivery, "--delivery", delivery,
		"--set", "cam.loop=true", "--set", fmt.Sprintf("cam.max_frames=%d", frames)}
	var serves []*proc
	defer func() {
		for _, s := range serves {
			s.kill()
		}
	}()
	for range 2 {
		p, err := startProc(env, bin, append([]string{"--log-level", "warn", "serve", yaml, "--stage", "faces", "--nats", srv.url}, sets...)...)
		if err != nil {
			fail(err)
		}
		serves = append(serves, p)
	}
	run, err := startProc(env, bin, append([]string{"run", "--progress-interval", "100ms", yaml, "--nats", srv.url, "--remote", "faces"}, sets...)...)
	if err != nil {
		fail(err)
	}
	if err := waitFrames(run, int64(frames/3), 5*time.Minute); err != nil {
		fail(err)
	}
	serves[0].kill()
	killed := time.Now()
	if _, err := run.wait(10 * time.Minute); err != nil {
		fail(err)
	}
	if _, err := serves[1].wait(time.Minute); err != nil {
		fail(err)
	}
	s := recoverySample{stall: longestStall(progressPoints(run.out.String()), killed)}
	if s.frames, s.disorder, err = disorderCount(out); err != nil {
		fail(err)
	}
	if delivery == "job" && (s.frames != frames || s.disorder != 0) {
		fail(fmt.Errorf("job delivery after a SIGKILL: %d frames of %d, %d out of order", s.frames, frames, s.disorder))
	}
	survivor := serves[1].out.String()
	for _, m := range tookOver.FindAllStringSubmatch(survivor, -1) {
		// The first burst after the kill (one at the start is of messages
		// whose producer an instance did not know yet).
		if at, err := time.Parse(time.RFC3339Nano, m[1]); err == nil && at.After(killed) {
			s.recovery = at.Sub(killed)
			break
		}
	}
	for _, row := range endTable(survivor) {
		if row["stage"] == "faces" {
			s.redelivered = eventCell(row["events"], "redelivered")
			s.duplicates = eventCell(row["events"], "duplicate_outputs")
		}
	}
	return s
}

// waitFrames waits until the run's progress lines say n frames reached
// its sinks.
func waitFrames(p *proc, n int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if pts := progressPoints(p.out.String()); len(pts) > 0 && pts[len(pts)-1].frames >= n {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("the run ended before %d frames:\n%s", n, tail(p.out.String(), 3000))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the run had not %d frames after %s", n, timeout)
		}
	}
}

// longestStall is the longest time after since between two progress
// lines with more frames (from since, for the first), up to the last line.
func longestStall(pts []progressPoint, since time.Time) time.Duration {
	var longest time.Duration
	var last progressPoint
	from := func() time.Time {
		if last.at.Before(since) {
			return since
		}
		return last.at
	}
	for _, p := range pts {
		switch {
		case p.at.Before(since):
			last = p
		case p.frames > last.frames:
			longest = max(longest, p.at.Sub(from()))
			last = p
		}
	}
	if n := len(pts); n > 0 && !pts[n-1].at.Before(since) {
		longest = max(longest, pts[n-1].at.Sub(from()))
	}
	return longest
}

// eventCell is the value of one counter in an end table's events cell
// ("a=1,b=2"), 0 when it is not there.
func eventCell(cell, name string) int64 {
	for _, kv := range strings.Split(cell, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok && k == name {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

// recoveryBench: a faces worker killed mid-run, in job and in live
// delivery.
func recoveryBench(b *strings.Builder, bin, natsBin string, rounds, frames int) {
	rig := newPrivacyRig(natsBin, "avflow-bench-recovery")
	defer rig.close()
	yaml, out, srv, env := rig.yaml, rig.out, rig.srv, rig.env
	samples := map[string][]recoverySample{}
	deliveries := []string{"job", "live"}
	for i := range rounds {
		for _, d := range deliveries {
			slog.Info("recovery round", "delivery", d, "round", i+1, "of", rounds)
			s := recoveryRun(bin, yaml, out, srv, env, d, frames)
			slog.Info("recovery", "delivery", d, "frames", s.frames, "recovery", s.recovery, "redelivered", s.redelivered, "stall", s.stall)
			samples[d] = append(samples[d], s)
		}
	}
	fmt.Fprintf(b, "## A worker killed mid-run: job against live delivery\n\n")
	fmt.Fprintf(b, "The privacy pipeline of the split benchmark (%d frames, unpaced) with faces served by two `avflow serve --delivery job|live` processes and `avflow run --remote faces`, one `bin/nats-server` with JetStream (file storage, one replica). "+
		"Once the sink has a third of the frames, the first faces worker gets SIGKILL. Recovery: from the kill to the surviving worker's first message done that the server had sent before (its log line `took a message the server had sent before`); the server redelivers a message once its ack wait (%s) has passed since the dead worker's last in-progress ack, so this is at most the ack wait plus the frame's work. "+
		"Redelivered: the messages the survivor took again (the dead worker's unacknowledged window); duplicates: the outputs of those the stream already had (the dead worker had published them before it died), dropped by `Nats-Msg-Id`. Stall: the longest time the sink's frame count stood still after the kill (progress lines every 100 ms). %d rounds, each value per round.\n\n",
		frames, "6s", rounds)
	fmt.Fprintf(b, "| delivery | output frames (of %d) | out of order | recovery | redelivered | duplicates dropped | longest stall |\n|---|---:|---:|---:|---:|---:|---:|\n", frames)
	for _, d := range deliveries {
		var fr, dis, rec, red, dup, st []string
		for _, s := range samples[d] {
			fr = append(fr, strconv.Itoa(s.frames))
			dis = append(dis, strconv.Itoa(s.disorder))
			rec = append(rec, fmt.Sprintf("%.2f s", s.recovery.Seconds()))
			red = append(red, strconv.FormatInt(s.redelivered, 10))
			dup = append(dup, strconv.FormatInt(s.duplicates, 10))
			st = append(st, fmt.Sprintf("%.2f s", s.stall.Seconds()))
		}
		if d == "live" {
			rec, red, dup = []string{"-"}, []string{"-"}, []string{"-"}
		}
		j := func(v []string) string { return strings.Join(v, ", ") }
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %s |\n", d, j(fr), j(dis), j(rec), j(red), j(dup), j(st))
	}
	fmt.Fprintf(b, "\n")
}
