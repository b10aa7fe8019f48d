package e2e

import (
	"bytes"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Buffer is a bytes.Buffer that one goroutine may write (a run's logger, a
// child process's output copier) while the test reads it.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String is what was written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Grep is the lines written so far that hold any of words: what a
// failure shows of a long log, whose middle a CI report may leave out.
func (s *Buffer) Grep(words ...string) string {
	var b strings.Builder
	for line := range strings.Lines(s.String()) {
		if slices.ContainsFunc(words, func(w string) bool { return strings.Contains(line, w) }) {
			b.WriteString(line)
		}
	}
	return b.String()
}

// Logger is a text slog.Logger writing into the buffer.
func (s *Buffer) Logger() *slog.Logger { return slog.New(slog.NewTextHandler(s, nil)) }

// Listen opens a TCP listener on a free loopback port, closed when the test ends.
func Listen(t testing.TB) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// Serve accepts connections on l and hands each to handle in a goroutine
// of its own, until the test ends; then l and every connection are closed
// and Serve's goroutines waited for.
func Serve(t testing.TB, l net.Listener, handle func(net.Conn)) {
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() { defer wg.Done(); handle(c) }()
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// StartNATS starts an in-process nats-server with opts (a free loopback
// port unless opts say otherwise; no logs, no signal handlers) and waits
// until it takes connections. The caller shuts it down.
func StartNATS(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.Port == 0 {
		opts.Port = server.RANDOM_PORT
	}
	opts.NoLog, opts.NoSigs = true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server did not start")
	}
	return s
}

// NATSServer is StartNATS, shut down when the test ends.
func NATSServer(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	s := StartNATS(t, opts)
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}
