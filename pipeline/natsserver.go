package pipeline

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/avflow/avflow/pipeline/secret"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// EmbeddedMaxPayload is the max message size of the embedded server (8 MiB,
// the largest NATS recommends). Larger messages are chunked.
const EmbeddedMaxPayload = 8 << 20

// Reconnecting to an external server.
const (
	reconnectWait    = 100 * time.Millisecond
	reconnectBufSize = 8 << 20 // what a connection holds for the server while it is away
)

// maxNATSDown is how long a connection to an external server may stay
// lost before the run fails (a variable: tests shorten it).
var maxNATSDown = 10 * time.Second

// StartEmbeddedNATS starts an in-process NATS server that takes in-process
// connections only (nats.InProcessServer): it opens no port.
func StartEmbeddedNATS() (*server.Server, error) {
	e, err := startEmbeddedNATS(false, false)
	if err != nil {
		return nil, err
	}
	return e.srv, nil
}

// embeddedNATS is a run's own server. With a listener (Options.Listen) it
// also takes TCP clients on a loopback port, with a user and password made
// for the run, which the run's own connections use too.
type embeddedNATS struct {
	srv            *server.Server
	url            string // the listener's URL, without credentials ("" without one)
	user, password string
	storeDir       string // JetStream's, removed at Shutdown ("" without JetStream)
}

// listenUser is the user of the embedded server's listener.
const listenUser = "avflow"

// embeddedJetStreamMemory bounds what the embedded server's JetStream
// keeps (in memory): a run's viewer bucket holds kilobytes.
const embeddedJetStreamMemory = 64 << 20

func startEmbeddedNATS(listen, jetStream bool) (*embeddedNATS, error) {
	opts := &server.Options{
		ServerName: "avflow-embedded",
		DontListen: !listen,
		NoLog:      true,
		NoSigs:     true,
		MaxPayload: EmbeddedMaxPayload,
		// Raw frames are large: give slow links room before the server cuts them off.
		MaxPending:    256 << 20,
		WriteDeadline: 10 * time.Second,
	}
	e := &embeddedNATS{}
	if jetStream {
		dir, err := os.MkdirTemp("", "avflow-jetstream-")
		if err != nil {
			return nil, fmt.Errorf("%w: making the embedded server's JetStream folder failed: %w", ErrTransport, err)
		}
		e.storeDir = dir
		opts.JetStream, opts.StoreDir = true, dir
		opts.JetStreamMaxMemory, opts.JetStreamMaxStore = embeddedJetStreamMemory, embeddedJetStreamMemory
	}
	if listen {
		pw := make([]byte, 18)
		if _, err := rand.Read(pw); err != nil {
			return nil, fmt.Errorf("%w: making the embedded NATS server's password failed: %w", ErrTransport, err)
		}
		e.user, e.password = listenUser, base64.RawURLEncoding.EncodeToString(pw)
		opts.Host, opts.Port = "127.0.0.1", server.RANDOM_PORT
		opts.Users = []*server.User{{Username: e.user, Password: e.password}}
	}
	s, err := server.NewServer(opts)
	if err != nil {
		e.removeStore()
		return nil, fmt.Errorf("%w: starting embedded NATS server failed: %w", ErrTransport, err)
	}
	go s.Start()
	e.srv = s
	if !s.ReadyForConnections(10 * time.Second) {
		e.Shutdown()
		return nil, fmt.Errorf("%w: embedded NATS server did not start within 10s", ErrTransport)
	}
	if listen {
		addr, ok := s.Addr().(*net.TCPAddr)
		if !ok {
			e.Shutdown()
			return nil, fmt.Errorf("%w: the embedded NATS server has no TCP listener", ErrTransport)
		}
		e.url = "nats://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(addr.Port))
	}
	return e, nil
}

// Shutdown stops the server and waits for it.
func (e *embeddedNATS) Shutdown() {
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
	e.removeStore()
}

func (e *embeddedNATS) removeStore() {
	if e.storeDir != "" {
		os.RemoveAll(e.storeDir) //nolint:errcheck // a temporary folder
	}
}

// options are what the run's own connections need: in process, and the
// listener's credentials when it has one.
func (e *embeddedNATS) options() []nats.Option {
	opts := []nats.Option{nats.InProcessServer(e.srv)}
	if e.user != "" {
		opts = append(opts, nats.UserInfo(e.user, e.password))
	}
	return opts
}

// connPool is a run's NATS connections, shared by its stages: one per CPU
// at most (they parse and copy messages in parallel), not one per stage,
// whose buffers, goroutines and server-side clients made a pipeline of
// thousands of stages cost gigabytes.
//
// Connections to an external server reconnect when it goes away: the run
// fails only when one stays lost for maxNATSDown. Once one is back, the
// hooks run (onReconnect): publishers and subscribers send again what may
// have been lost.
type connPool struct {
	conns []*nats.Conn
	url   string // for messages, without credentials
	onErr func(*nats.Subscription, error)
	log   *slog.Logger

	mu       sync.Mutex
	hooks    map[int]func()
	nextHook int
	down     map[*nats.Conn]*time.Timer // lost connections, until they fail the run
}

// connectPool opens min(stages, GOMAXPROCS) connections, in process to
// srv when it is set, else to the server at url with extra (credentials,
// TLS). onErr gets the asynchronous errors of a connection, with the
// subscription they concern (nil for the connection's own).
func connectPool(srv *embeddedNATS, url string, extra []nats.Option, name string, stages int, onErr func(*nats.Subscription, error), log *slog.Logger) (*connPool, error) {
	p := &connPool{url: secret.URL(url), onErr: onErr, log: log, hooks: map[int]func(){}, down: map[*nats.Conn]*time.Timer{}}
	for i := range max(1, min(stages, runtime.GOMAXPROCS(0))) {
		nc, err := connect(srv, url, extra, name+" "+strconv.Itoa(i), p.events())
		if err != nil {
			p.Close()
			return nil, err
		}
		p.conns = append(p.conns, nc)
	}
	return p, nil
}

// connEvents are what a connection tells its owner.
type connEvents struct {
	err  func(*nats.Subscription, error) // an asynchronous error
	lost func(*nats.Conn, error)         // the server went away: reconnecting
	back func(*nats.Conn)                // reconnected
}

func (p *connPool) events() connEvents {
	return connEvents{err: p.onErr, lost: p.lost, back: p.back}
}

// lost starts the clock of a lost connection: the run fails if it is not
// back within maxNATSDown.
func (p *connPool) lost(nc *nats.Conn, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down[nc] != nil {
		return
	}
	bound := maxNATSDown
	p.log.Warn("lost the connection to the NATS server: reconnecting", "url", p.url, "err", err, "fails_after", bound)
	p.down[nc] = time.AfterFunc(bound, func() {
		p.onErr(nil, fmt.Errorf("%w: lost the connection to the NATS server at %s, not back within %s: %w", ErrTransport, p.url, bound, err))
	})
}

// back stops the clock of a connection that is back and runs the hooks.
func (p *connPool) back(nc *nats.Conn) {
	p.mu.Lock()
	if t := p.down[nc]; t != nil {
		t.Stop()
		delete(p.down, nc)
	}
	hooks := slices.Collect(maps.Values(p.hooks))
	p.mu.Unlock()
	p.log.Info("reconnected to the NATS server", "url", p.url)
	for _, h := range hooks {
		h()
	}
}

// onReconnect registers f to run each time a connection is back after
// the server was away; the returned func unregisters it.
func (p *connPool) onReconnect(f func()) (remove func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	id := p.nextHook
	p.nextHook++
	p.hooks[id] = f
	return func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		delete(p.hooks, id)
	}
}

// connFor is the connection of a stage (spread by name).
func (p *connPool) connFor(stage string) *nats.Conn {
	h := fnv.New32a()
	_, _ = h.Write([]byte(stage))
	return p.conns[int(h.Sum32()%uint32(len(p.conns)))]
}

// Flush waits until the server has processed everything sent on every connection.
func (p *connPool) Flush() error {
	for _, nc := range p.conns {
		if err := nc.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// Close closes every connection; a nil pool is fine.
func (p *connPool) Close() {
	if p == nil {
		return
	}
	p.mu.Lock()
	for nc, t := range p.down {
		t.Stop()
		delete(p.down, nc)
	}
	p.mu.Unlock()
	for _, nc := range p.conns {
		nc.Close()
	}
}

// connect opens a NATS connection, in process when srv is set; extra
// (credentials, TLS) applies to an external server, whose connections
// reconnect, with a bounded buffer, when it goes away.
func connect(srv *embeddedNATS, url string, extra []nats.Option, name string, ev connEvents) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.Timeout(5 * time.Second),
		nats.ErrorHandler(func(nc *nats.Conn, sub *nats.Subscription, err error) {
			if srv == nil && sub == nil && netError(err) {
				ev.lost(nc, err) // the server went away: the connection reconnects
				return
			}
			subj := ""
			if sub != nil {
				subj = " on " + sub.Subject
			}
			ev.err(sub, fmt.Errorf("%w: NATS error%s: %w", ErrTransport, subj, err))
		}),
	}
	if srv != nil {
		// Nothing to reconnect to: the server is gone only at the end.
		opts = append(opts, nats.MaxReconnects(0), nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				ev.err(nil, fmt.Errorf("%w: lost the connection to the embedded NATS server: %w", ErrTransport, err))
			}
		}))
		opts = append(opts, srv.options()...)
		url = srv.srv.ClientURL()
	} else {
		opts = append(opts, nats.MaxReconnects(-1), nats.ReconnectWait(reconnectWait), nats.ReconnectJitter(reconnectWait, reconnectWait),
			nats.ReconnectBufSize(reconnectBufSize),
			nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
				if err == nil {
					err = errors.New("disconnected")
				}
				if !nc.IsClosed() {
					ev.lost(nc, err)
				}
			}),
			nats.ReconnectHandler(ev.back))
		opts = append(opts, extra...)
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: connecting to NATS at %s failed: %w", ErrTransport, secret.URL(url), err)
	}
	return nc, nil
}

// netError says err is the connection's own I/O failing (a server that
// went away), which nats.go reports as an asynchronous error as well.
func netError(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// ErrRunning refuses a second run of a deployment already running on the server.
var ErrRunning = errors.New("deployment already running")

// refuseSecondRun fails when a stage that this run would run already
// answers on the server under the same deployment name: two runs of one
// deployment would share its subjects and exchange frames. Processes that
// serve stages (avflow serve) join a deployment and are not checked.
func (r *Runner) refuseSecondRun() error {
	if r.embedded != nil || len(r.opts.Serve) > 0 {
		return nil
	}
	// Another driver would run the same stages: asking the service of
	// one of them is enough (and needs one permission, not every service's).
	probe := r.firstLocalStage()
	if probe == "" {
		return nil
	}
	var first *micro.Ping
	for _, ping := range pingService(r.pool.conns[0], ServiceName(r.cfg.Name, probe), 300*time.Millisecond) {
		stage := ping.Metadata["stage"]
		if ping.Metadata["pipeline"] != r.cfg.Name || r.cfg.Stage(stage) == nil || r.remote[stage] || ping.Metadata["instance"] == r.instance {
			continue
		}
		if first == nil || stage < first.Metadata["stage"] {
			first = &ping
		}
	}
	if first == nil {
		return nil
	}
	host := first.Metadata["host"]
	if host == "" {
		host = "an unknown host"
	}
	return fmt.Errorf("%w: deployment %q already runs on the NATS server at %s: its stage %q answers from instance %s on %s; a second run would exchange frames with it: stop that one, or give this one another name (--name)",
		ErrRunning, r.cfg.Name, secret.URL(r.opts.NATSURL), first.Metadata["stage"], first.Metadata["instance"], host)
}

// firstLocalStage is the first stage, in topological order, that this
// process runs ("" if none).
func (r *Runner) firstLocalStage() string {
	for _, s := range r.cfg.order {
		if !r.remote[s.Name] {
			return s.Name
		}
	}
	return ""
}
