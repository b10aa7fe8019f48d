package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline/e2e"
)

// proc is a child process the test runs in the background: its output is
// kept (locked), its end is a channel, and it is killed when the test ends.
type proc struct {
	cmd    *exec.Cmd
	out    *e2e.Buffer // stdout and stderr
	done   chan struct{}
	err    error // set when done is closed
	killed bool  // by kill
}

// startProc starts cmd in the background.
func startProc(t testing.TB, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{cmd: cmd, out: &e2e.Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", cmd.Path, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
	})
	return p
}

// startAvflow runs the CLI in the background with the given environment additions.
func startAvflow(t testing.TB, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(avflowBin, args...)
	cmd.Env = append(os.Environ(), env...)
	return startProc(t, cmd)
}

// wait waits at most d for the process to end and returns its exit code.
// kill kills the process (SIGKILL) and waits until it has exited.
func (p *proc) kill(t testing.TB) {
	t.Helper()
	p.killed = true
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-p.done
}

// exitCode is the exit status of a process that has ended (-1: it did
// not start or was not waited for).
func (p *proc) exitCode() int {
	var ee *exec.ExitError
	switch {
	case errors.As(p.err, &ee):
		return ee.ExitCode()
	case p.err != nil:
		return -1
	}
	return 0
}

func (p *proc) wait(t testing.TB, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		t.Fatalf("%s still running after %s:\n%s", filepath.Base(p.cmd.Path), d, p.out.String())
	}
	var ee *exec.ExitError
	if p.err != nil && !errors.As(p.err, &ee) {
		t.Fatalf("%s: %v", filepath.Base(p.cmd.Path), p.err)
	}
	return p.exitCode()
}

// waitLog waits until the process's output contains s.
func (p *proc) waitLog(t testing.TB, s string, d time.Duration) {
	t.Helper()
	waitFor(t, func() bool { return strings.Contains(p.out.String(), s) }, d, p.out)
}

// waitFor polls cond until it holds; it fails the test, showing log, after d
// or when the condition cannot come any more.
func waitFor(t testing.TB, cond func() bool, d time.Duration, log fmt.Stringer) {
	t.Helper()
	e2e.WaitFor(t, d, func() string { return "the condition; the log:\n" + log.String() }, cond)
}

var progressFrames = regexp.MustCompile(`msg=progress frames=(\d+)`)

// framesDone is the frame count of the last progress line in a run's log.
func framesDone(log string) int {
	m := progressFrames.FindAllStringSubmatch(log, -1)
	if len(m) == 0 {
		return 0
	}
	n, _ := strconv.Atoi(m[len(m)-1][1])
	return n
}

var progressAt = regexp.MustCompile(`(?m)^time=(\S+) level=INFO msg=progress frames=(\d+)`)

// stalls reads a run's progress lines: the longest time the frame count
// stood still between its first frame and at, and after at.
func stalls(log string, at time.Time) (before, after time.Duration) {
	var last time.Time
	lastN := 0
	for _, m := range progressAt.FindAllStringSubmatch(log, -1) {
		ts, err := time.Parse(time.RFC3339Nano, m[1])
		n, _ := strconv.Atoi(m[2])
		if err != nil || n <= lastN {
			continue
		}
		switch {
		case lastN == 0: // the first frame: the start does not count
		case ts.Before(at):
			before = max(before, ts.Sub(last))
		case last.Before(at):
			after = max(after, ts.Sub(at))
		default:
			after = max(after, ts.Sub(last))
		}
		last, lastN = ts, n
	}
	return before, after
}

// endEvent is one event counter of a stage's row in a run's end table.
func endEvent(log, stage, event string) int {
	m := regexp.MustCompile(`(?m)^\s+`+regexp.QuoteMeta(stage)+`\s.*\b`+regexp.QuoteMeta(event)+`=(\d+)`).FindAllStringSubmatch(log, -1)
	if len(m) == 0 {
		return 0
	}
	n, _ := strconv.Atoi(m[len(m)-1][1])
	return n
}

func portOf(l net.Listener) int { return l.Addr().(*net.TCPAddr).Port }

// hangUp closes a connection at once.
func hangUp(c net.Conn) { _ = c.Close() }

// silent reads what the client sends and never answers.
func silent(c net.Conn) { _, _ = bufio.NewReader(c).WriteTo(discard{}) }

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// startListening starts a child process that listens on a loopback port it
// is given (ffmpeg -listen, nats-server), and returns it with the port once
// the process has bound it. Programs that cannot pick a free port and report
// it are given a port that was free a moment ago: when another process took
// it meanwhile, the child fails to bind and exits, and it is started again
// on another port.
func startListening(t testing.TB, proto string, start func(port int) *exec.Cmd) (*proc, int) {
	t.Helper()
	for attempt := 0; attempt < 5; attempt++ {
		port := unusedPort(t, proto)
		p := startProc(t, start(port))
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			if bound(p.cmd.Process.Pid, proto, port) {
				return p, port
			}
			select {
			case <-p.done:
				t.Logf("%s exited before binding port %d (taken?), starting it again:\n%s", filepath.Base(p.cmd.Path), port, p.out.String())
				deadline = time.Time{}
			case <-time.After(20 * time.Millisecond):
			}
		}
		if !deadline.IsZero() {
			t.Fatalf("%s did not bind %s port %d:\n%s", filepath.Base(p.cmd.Path), proto, port, p.out.String())
		}
	}
	t.Fatalf("no free %s port could be bound", proto)
	return nil, 0
}

// unusedPort is a loopback port nothing is bound to right now.
func unusedPort(t testing.TB, proto string) int {
	t.Helper()
	if proto == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return portOf(l)
}

// bound says whether process pid has a socket bound to the port (a TCP
// socket listening, or a UDP socket), from /proc: the test learns it
// without connecting, which a one-shot listener (ffmpeg -listen 1) would
// take as its client.
func bound(pid int, proto string, port int) bool {
	inodes := map[string]bool{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	for _, table := range []string{proto, proto + "6"} {
		b, err := os.ReadFile("/proc/net/" + table)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || !inodes[f[9]] {
				continue
			}
			_, hexPort, _ := strings.Cut(f[1], ":")
			p, err := strconv.ParseInt(hexPort, 16, 32)
			if err == nil && int(p) == port && (proto != "tcp" || f[3] == "0A") {
				return true
			}
		}
	}
	return false
}

// runContext is the most a single CLI run in these tests may take.
func runContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// writeFile writes a test input, failing the test when it cannot.
func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
