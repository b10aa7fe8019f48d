package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/nats-io/nats.go"
)

// Helpers of the benchmarks that run several processes around one real
// nats-server on a free loopback port.

// proc is a started process.
type proc struct {
	cmd  *exec.Cmd
	out  *e2e.Buffer // stdout and stderr
	t0   time.Time
	done chan struct{}
	m    measure
	err  error
}

func startProc(env []string, name string, args ...string) (*proc, error) {
	p := &proc{cmd: exec.Command(name, args...), out: &e2e.Buffer{}, done: make(chan struct{})}
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.t0 = time.Now()
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() {
		defer close(p.done)
		p.err = p.cmd.Wait()
		p.m.wall = time.Since(p.t0)
		if ru, ok := p.cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			p.m.rssKiB = ru.Maxrss
			p.m.cpu = tv(ru.Utime) + tv(ru.Stime)
		}
	}()
	return p, nil
}

// wait waits for the process to exit 0, killing it after timeout.
func (p *proc) wait(timeout time.Duration) (measure, error) {
	select {
	case <-p.done:
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		return p.m, fmt.Errorf("%s did not end within %s:\n%s", strings.Join(p.cmd.Args, " "), timeout, tail(p.out.String(), 3000))
	}
	if p.err != nil {
		return p.m, fmt.Errorf("%s: %w\n%s", strings.Join(p.cmd.Args, " "), p.err, tail(p.out.String(), 3000))
	}
	return p.m, nil
}

// waitOutput waits until the process has written s, or has exited.
func (p *proc) waitOutput(s string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for !strings.Contains(p.out.String(), s) {
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before writing %q: %v\n%s", strings.Join(p.cmd.Args, " "), s, p.err, tail(p.out.String(), 3000))
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s wrote no %q within %s", strings.Join(p.cmd.Args, " "), s, timeout)
		}
	}
	return nil
}

// kill ends a process that is still running (after a failure).
func (p *proc) kill() {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// freePort is a loopback TCP port nothing listens on now.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// natsServer is a real nats-server process on a free loopback port.
type natsServer struct {
	p   *proc
	url string
}

// startNATSServer starts bin with a config file in dir; maxPayload ("8MB")
// raises the largest message, "" keeps the server's default (1 MB).
func startNATSServer(bin, dir, maxPayload string, extra ...string) (*natsServer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	conf := fmt.Sprintf("listen: 127.0.0.1:%d\n", port)
	if maxPayload != "" {
		conf += "max_payload: " + maxPayload + "\n"
	}
	for _, line := range extra {
		conf += line + "\n"
	}
	path := filepath.Join(dir, fmt.Sprintf("nats-%d.conf", port))
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	p, err := startProc(os.Environ(), bin, "-c", path)
	if err != nil {
		return nil, err
	}
	s := &natsServer{p: p, url: fmt.Sprintf("nats://127.0.0.1:%d", port)}
	deadline := time.Now().Add(15 * time.Second)
	for {
		nc, err := nats.Connect(s.url, nats.Timeout(time.Second))
		if err == nil {
			nc.Close()
			return s, nil
		}
		if time.Now().After(deadline) {
			p.kill()
			return nil, fmt.Errorf("nats-server at %s did not accept connections: %w\n%s", s.url, err, p.out.String())
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("nats-server exited: %v\n%s", p.err, p.out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// cpu is the CPU time the server has used so far (from /proc).
func (s *natsServer) cpu() time.Duration { return pidCPU(s.p.cmd.Process.Pid) }

func (s *natsServer) stop() {
	_ = s.p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.p.done:
	case <-time.After(10 * time.Second):
		s.p.kill()
	}
}

// pidCPU is a running process's user + system time, from /proc/PID/stat
// (0 when it cannot be read).
func pidCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	return statCPU(string(b))
}

// clockTicks is USER_HZ, 100 on Linux.
const clockTicks = 100

// statCPU reads utime + stime (fields 14 and 15) from a /proc/PID/stat
// line; the command name in parentheses may hold spaces.
func statCPU(stat string) time.Duration {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(stat[i+1:]) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return time.Duration(u+s) * time.Second / clockTicks
}

// progressLine is one "progress" log line of avflow run (text logs, at
// info level, with --progress-interval when stderr is not a terminal).
var progressLine = regexp.MustCompile(`(?m)^time=(\S+) level=INFO msg=progress frames=(\d+)\b`)

type progressPoint struct {
	at     time.Time
	frames int64
}

// progressPoints reads the progress lines of avflow's output.
func progressPoints(out string) []progressPoint {
	var pts []progressPoint
	for _, m := range progressLine.FindAllStringSubmatch(out, -1) {
		at, err := time.Parse(time.RFC3339Nano, m[1])
		n, err2 := strconv.ParseInt(m[2], 10, 64)
		if err == nil && err2 == nil {
			pts = append(pts, progressPoint{at, n})
		}
	}
	return pts
}

// steadyFPS is the rate at which frames reached the sinks between the
// first progress line at or past 10% of total and the last one at or
// below 90%: the run's throughput without its start (connecting, finding
// remote stages) and its end (flushing). false when fewer than two lines
// fall in that range.
func steadyFPS(pts []progressPoint, total int64) (float64, bool) {
	in := slices.DeleteFunc(slices.Clone(pts), func(p progressPoint) bool {
		return 10*p.frames < total || 10*p.frames > 9*total
	})
	if len(in) < 2 {
		return 0, false
	}
	a, z := in[0], in[len(in)-1]
	if d := z.at.Sub(a.at).Seconds(); d > 0 && z.frames > a.frames {
		return float64(z.frames-a.frames) / d, true
	}
	return 0, false
}

// runFPS is the steady rate of an avflow run's output, failing the
// benchmark when the output has too few progress lines to tell.
func runFPS(out string, total int64) float64 {
	fps, ok := steadyFPS(progressPoints(out), total)
	if !ok {
		fail(fmt.Errorf("too few progress lines between 10%% and 90%% of %d frames to measure a rate (a run too short for its --progress-interval?):\n%s", total, tail(out, 3000)))
	}
	return fps
}

// quantile is the q-quantile (0..1) of a sample, nearest rank; 0 for none.
func quantile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}
