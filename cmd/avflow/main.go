// Command avflow runs streaming-media AI pipelines written as YAML files.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/codecs"
	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/avflow/avflow/pipeline/secret"
	_ "github.com/avflow/avflow/stages/all"
	"github.com/avflow/avflow/stages/infer/onnx"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"
)

// Exit codes.
const (
	exitRun     = 1 // the run failed
	exitInvalid = 2 // the pipeline file or the command line is wrong
)

func main() {
	os.Exit(run(os.Args))
}

func run(args []string) int {
	app := &cli.App{
		Name:                 "avflow",
		Usage:                "run streaming-media AI pipelines: stages on CPU, GPU and NPU, connected by NATS",
		EnableBashCompletion: true,
		HideHelpCommand:      true,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-format", Value: "text", Usage: "log format: text or json"},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
			&cli.StringFlag{Name: "onnxruntime", Usage: "path of libonnxruntime.so (default: third_party/onnxruntime next to the binary)", EnvVars: []string{"AVFLOW_ORT_LIB"}},
			&cli.StringFlag{Name: "cpuprofile", Usage: "write a Go CPU profile of the command to this file (go tool pprof)", EnvVars: []string{"AVFLOW_CPUPROFILE"}},
		},
		Before: func(c *cli.Context) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(c.String("log-level"))); err != nil {
				return cli.Exit("avflow: --log-level: "+err.Error(), exitInvalid)
			}
			opts := &slog.HandlerOptions{Level: lvl}
			var h slog.Handler = slog.NewTextHandler(os.Stderr, opts)
			if c.String("log-format") == "json" {
				h = slog.NewJSONHandler(os.Stderr, opts)
			}
			slog.SetDefault(slog.New(secret.Handler(h)))
			ff := astiav.LogLevelWarning
			if lvl <= slog.LevelDebug {
				ff = astiav.LogLevelVerbose
			}
			codecs.RouteLogs(slog.Default(), ff)
			if p := c.String("onnxruntime"); p != "" {
				onnx.SetLibraryPath(p)
			}
			return startCPUProfile(c.String("cpuprofile"))
		},
		After: func(*cli.Context) error {
			pprof.StopCPUProfile()
			return nil
		},
		Commands: []*cli.Command{runCmd(), serveCmd(), viewersCmd(), permissionsCmd(), validateCmd(), stagesCmd(), modelsCmd(), devicesCmd(), calibrateCmd(), planCmd(), versionCmd()},
		ExitErrHandler: func(c *cli.Context, err error) {
			if err == nil {
				return
			}
			var ec cli.ExitCoder
			if errors.As(err, &ec) {
				if msg := err.Error(); msg != "" {
					fmt.Fprintln(os.Stderr, secret.Text(msg))
				}
				return
			}
			fmt.Fprintln(os.Stderr, "avflow:", secret.Text(err.Error()))
		},
	}
	if err := app.Run(flagsFirst(app, args)); err != nil {
		var ec cli.ExitCoder
		if errors.As(err, &ec) {
			return ec.ExitCode()
		}
		// urfave/cli returns command-line mistakes (a required flag
		// missing) without handing them to ExitErrHandler.
		fmt.Fprintln(os.Stderr, "avflow:", secret.Text(err.Error()))
		return exitInvalid
	}
	return 0
}

// startCPUProfile starts writing a CPU profile to path (none when empty);
// After stops it, once the command has returned.
func startCPUProfile(path string) error {
	if path == "" {
		return nil
	}
	f, err := os.Create(path)
	if err != nil {
		return cli.Exit("avflow: --cpuprofile: "+err.Error(), exitInvalid)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return cli.Exit("avflow: --cpuprofile: "+err.Error(), exitInvalid)
	}
	return nil
}

// flagsFirst moves a subcommand's flags in front of its other arguments, so
// that `avflow plan pipeline.yaml --profile p.yaml` works as users type it
// (urfave/cli stops reading flags at the first argument). "--" ends flags.
func flagsFirst(app *cli.App, args []string) []string {
	find := func(cmds []*cli.Command, name string) *cli.Command {
		for _, c := range cmds {
			if c.HasName(name) {
				return c
			}
		}
		return nil
	}
	var cmd *cli.Command
	i := 1
	for ; i < len(args); i++ {
		if cmd = find(app.Commands, args[i]); cmd != nil {
			break
		}
	}
	if cmd == nil {
		return args
	}
	for i+1 < len(args) { // a command's own subcommands (models pull)
		sub := find(cmd.Subcommands, args[i+1])
		if sub == nil {
			break
		}
		cmd, i = sub, i+1
	}
	boolean := map[string]bool{"help": true, "h": true}
	for _, f := range cmd.Flags {
		if _, ok := f.(*cli.BoolFlag); ok {
			for _, n := range f.Names() {
				boolean[n] = true
			}
		}
	}
	var flags, rest []string
	tail := args[i+1:]
	for j := 0; j < len(tail); j++ {
		a := tail[j]
		switch {
		case a == "--":
			rest = append(rest, tail[j:]...)
			j = len(tail)
		case strings.HasPrefix(a, "-") && a != "-":
			flags = append(flags, a)
			name := strings.TrimLeft(a, "-")
			if !strings.Contains(name, "=") && !boolean[name] && j+1 < len(tail) {
				j++
				flags = append(flags, tail[j])
			}
		default:
			rest = append(rest, a)
		}
	}
	return append(append(append([]string{}, args[:i+1]...), flags...), rest...)
}

// load parses, applies --set and validates a pipeline file.
func load(path string, sets []string) (*pipeline.Config, error) {
	cfg, err := pipeline.Load(path)
	if err != nil {
		return nil, cli.Exit(err.Error(), exitInvalid)
	}
	for _, s := range sets {
		if err := cfg.Set(s); err != nil {
			return nil, cli.Exit(err.Error(), exitInvalid)
		}
	}
	if err := pipeline.Default.Validate(cfg); err != nil {
		return nil, cli.Exit(err.Error(), exitInvalid)
	}
	return cfg, nil
}

func runCmd() *cli.Command {
	return &cli.Command{
		Name:      "run",
		Usage:     "run a pipeline until its sources end (Ctrl-C, SIGTERM or SIGHUP: finish cleanly; a second one: abort)",
		ArgsUsage: "pipeline.yaml",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "nats", Usage: "use the NATS server at this URL instead of the embedded one", EnvVars: []string{"AVFLOW_NATS_URL"}},
			&cli.BoolFlag{Name: "listen", Usage: "open the embedded NATS server to other clients (nats sub, nats micro ls) on a loopback port, with a user and password made for this run, printed once"},
			&cli.StringFlag{Name: "transport", Usage: "override the pipeline's transport: auto (default: in-process edges zero-copy, NATS for services, metadata and unread ports), nats (every edge a NATS subject) or local (in-process only, no NATS)"},
			&cli.StringSliceFlag{Name: "set", Usage: "override a param: stage.param=value (repeatable)"},
			&cli.StringFlag{Name: "name", Usage: "the deployment's name (its subjects and services): the file's name: by default"},
			&cli.StringSliceFlag{Name: "remote", Usage: "a stage served by other processes (avflow serve): not run here, waited for (repeatable)"},
			&cli.StringFlag{Name: "delivery", Usage: "override the pipeline's delivery between processes: live (core NATS: lowest latency) or job (a JetStream stream made for the run: a process that dies loses nothing; needs JetStream on the server)"},
			&cli.DurationFlag{Name: "remote-timeout", Value: 30 * time.Second, Usage: "how long to wait for each remote stage's service"},
			&cli.StringFlag{Name: "placement", Usage: "apply a placement from avflow plan (each stage's device, and replicas where the stage allows them)"},
			&cli.StringFlag{Name: "metrics-addr", Usage: "serve Prometheus metrics on this address, e.g. 127.0.0.1:9464"},
			&cli.StringFlag{Name: "serve-hls", Usage: "serve the pipeline's HLS playlists and segments over HTTP on this address, e.g. 127.0.0.1:8080 (personalise: the manifest's playlist URLs point here)"},
			&cli.DurationFlag{Name: "progress-interval", Value: 5 * time.Second, Usage: "how often to log progress when stderr is not a terminal"},
		}, natsFlags()...),
		Action: func(c *cli.Context) error { return runPipeline(c, "run", nil) },
	}
}

func serveCmd() *cli.Command {
	return &cli.Command{
		Name: "serve",
		Usage: "run stages of a pipeline as NATS services for a run elsewhere (avflow run --remote); any number of processes may serve one stage " +
			"and share its messages; the process ends when the stage's inputs end (SIGTERM: finish the messages taken, then exit 0). " +
			"With --infer MODEL (no pipeline file): a shared inference service for the infer stages with remote: true of any pipeline, batching their frames (until SIGTERM)",
		ArgsUsage: "pipeline.yaml | --infer MODEL",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "nats", Required: true, Usage: "the NATS server (or cluster) the run uses", EnvVars: []string{"AVFLOW_NATS_URL"}},
			&cli.StringSliceFlag{Name: "stage", Usage: "a stage to serve (repeatable)"},
			&cli.StringFlag{Name: "infer", Usage: "serve this model (a card name or file) as the shared inference service avflow-infer-<model>"},
			&cli.IntFlag{Name: "max-batch", Value: 8, Usage: "--infer: images per model run, from any callers"},
			&cli.DurationFlag{Name: "max-wait", Value: 5 * time.Millisecond, Usage: "--infer: how long a model run waits for more images"},
			&cli.IntFlag{Name: "threads", Usage: "--infer: ONNX Runtime intra-op threads (0: one per core)"},
			&cli.StringFlag{Name: "transport", Usage: "auto (default) or nats"},
			&cli.StringFlag{Name: "delivery", Usage: "override the pipeline's delivery: live or job (as the run's --delivery: both must agree)"},
			&cli.StringSliceFlag{Name: "set", Usage: "override a param: stage.param=value (repeatable)"},
			&cli.StringFlag{Name: "name", Usage: "the deployment to join (its run's --name; the file's name: by default)"},
			&cli.StringFlag{Name: "metrics-addr", Usage: "serve Prometheus metrics on this address, e.g. 127.0.0.1:9464"},
			&cli.DurationFlag{Name: "progress-interval", Value: 5 * time.Second, Usage: "how often to log progress when stderr is not a terminal"},
		}, natsFlags()...),
		Action: func(c *cli.Context) error {
			switch {
			case c.String("infer") != "" && (len(c.StringSlice("stage")) > 0 || c.NArg() > 0):
				return cli.Exit("avflow serve: --infer serves a model, without a pipeline file or --stage", exitInvalid)
			case c.String("infer") != "":
				return serveInfer(c)
			case len(c.StringSlice("stage")) == 0:
				return cli.Exit("avflow serve: want --stage NAME (a stage of the pipeline file) or --infer MODEL", exitInvalid)
			}
			return runPipeline(c, "serve", c.StringSlice("stage"))
		},
	}
}

// runPipeline is avflow run, and avflow serve for the stages serve names.
func runPipeline(c *cli.Context, cmd string, serve []string) error {
	if c.NArg() != 1 {
		return cli.Exit("avflow "+cmd+": want one pipeline file", exitInvalid)
	}
	if every := c.Duration("progress-interval"); every <= 0 {
		return cli.Exit(fmt.Sprintf("avflow %s: --progress-interval must be more than 0, got %s", cmd, every), exitInvalid)
	}
	auth, natsOpts, err := natsOptions(c, c.String("nats"))
	if err != nil {
		return err
	}
	cfg, err := load(c.Args().First(), c.StringSlice("set"))
	if err != nil {
		return err
	}
	if n := c.String("name"); n != "" {
		if err := pipeline.CheckName(n); err != nil {
			return cli.Exit("avflow "+cmd+": --name: "+err.Error(), exitInvalid)
		}
		cfg.Name = n
	}
	if p := c.String("placement"); p != "" {
		if err := applyPlacement(cfg, p); err != nil {
			return cli.Exit("avflow: "+err.Error(), exitInvalid)
		}
	}
	if addr := c.String("serve-hls"); addr != "" {
		stop, err := servePlaylists(addr, cfg)
		if err != nil {
			return cli.Exit("avflow "+cmd+": "+err.Error(), exitInvalid)
		}
		defer stop()
	}
	if serve == nil {
		for _, w := range cfg.WarningsFor(c.String("transport")) {
			slog.Warn(w)
		}
	}
	if auth.URL != "" {
		slog.Info("external NATS server", "url", secret.URL(auth.URL), "nats", auth)
	}
	opts := pipeline.Options{NATSURL: auth.URL, NATSOptions: natsOpts, Transport: c.String("transport"), Delivery: c.String("delivery"),
		Remote: c.StringSlice("remote"), RemoteTimeout: c.Duration("remote-timeout"), Serve: serve, Listen: c.Bool("listen")}
	if opts.Listen && auth.URL != "" {
		return cli.Exit("avflow "+cmd+": --listen opens the embedded NATS server; with --nats, other clients connect to that server", exitInvalid)
	}
	if auth.URL == "" && (len(opts.Remote) > 0 || cfg.HasRemote()) {
		return cli.Exit("avflow "+cmd+": remote stages need --nats: the server their services use", exitInvalid)
	}
	r, err := pipeline.NewRunner(pipeline.Default, cfg, opts)
	if err != nil {
		return cli.Exit("avflow: "+err.Error(), exitInvalid)
	}
	ctx, cancel := context.WithCancel(c.Context)
	defer cancel()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, stopSignals...)
	defer signal.Stop(sigs)
	go onSignals(sigs, r, cancel)
	if addr := c.String("metrics-addr"); addr != "" {
		stop, err := serveMetrics(addr, r, cfg.Name)
		if err != nil {
			return cli.Exit("avflow: "+err.Error(), exitInvalid)
		}
		defer stop()
	}
	done := make(chan struct{})
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		// Progress stops once the run has failed or been aborted,
		// though stages may take a while to close.
		stopped := make(chan struct{})
		go func() {
			defer close(stopped)
			select {
			case <-r.Failed():
			case <-ctx.Done():
			case <-done:
			}
		}()
		showProgress(r, done, stopped, c.Duration("progress-interval"))
	}()
	var unannounce func()
	if r.Listening() {
		unannounce = announceListener(r, cfg.Name, opts.Listen, done)
	}
	start := time.Now()
	err = r.Run(ctx)
	close(done)
	if unannounce != nil {
		unannounce()
	}
	<-progressDone
	fmt.Fprintf(os.Stderr, "\n%s: %s in %s\n", cfg.Name, status(err), time.Since(start).Round(time.Millisecond))
	r.Metrics().WriteTable(os.Stderr)
	if err != nil {
		return cli.Exit("avflow: "+natsAuthError(err, auth).Error(), exitRun)
	}
	return nil
}

func status(err error) string {
	if err != nil {
		return "failed"
	}
	return "done"
}

func serveMetrics(addr string, r *pipeline.Runner, name string) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listening on %s failed: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		r.Metrics().WritePrometheus(w, name)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	slog.Info("metrics endpoint", "url", "http://"+ln.Addr().String()+"/metrics")
	return func() { _ = srv.Close() }, nil
}

func validateCmd() *cli.Command {
	return &cli.Command{
		Name:      "validate",
		Usage:     "check pipeline files; every problem is reported with file:line:column",
		ArgsUsage: "pipeline.yaml...",
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return cli.Exit("avflow validate: want at least one pipeline file", exitInvalid)
			}
			var failed []string
			for _, path := range c.Args().Slice() {
				cfg, err := load(path, nil)
				if err != nil {
					failed = append(failed, err.Error())
					continue
				}
				for _, w := range cfg.Warnings() {
					fmt.Fprintln(os.Stderr, "warning:", secret.Text(w))
				}
				fmt.Printf("%s: ok (%d stages)\n", path, len(cfg.Stages))
			}
			if len(failed) > 0 {
				return cli.Exit(strings.Join(failed, "\n"), exitInvalid)
			}
			return nil
		},
	}
}

func stagesCmd() *cli.Command {
	return &cli.Command{
		Name:  "stages",
		Usage: "list every stage kind with its params, defaults and docs",
		Action: func(c *cli.Context) error {
			pipeline.Default.WriteDocs(os.Stdout)
			return nil
		},
	}
}

func versionCmd() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print version information",
		Action: func(c *cli.Context) error {
			v := "(devel)"
			if bi, ok := debug.ReadBuildInfo(); ok {
				v = bi.Main.Version
				for _, s := range bi.Settings {
					if s.Key == "vcs.revision" && len(s.Value) >= 12 {
						v += " " + s.Value[:12]
					}
				}
			}
			fmt.Printf("avflow %s\nenvelope v%d\n", v, envelope.Version)
			return nil
		},
	}
}

// showProgress draws a progress bar on a terminal, or logs progress lines,
// until the run is done or has failed.
func showProgress(r *pipeline.Runner, done, failed <-chan struct{}, every time.Duration) {
	select {
	case <-r.Ready():
	case <-done:
		return
	case <-failed:
		return
	}
	if term.IsTerminal(int(os.Stderr.Fd())) {
		progressBar(r, done, failed)
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-failed:
			return
		case <-t.C:
			select {
			case <-r.Failed(): // failed as the tick came: no line after the failure
				return
			default:
			}
			logProgress(r)
		}
	}
}

// eta is the time left at fps to reach total frames, to the second; false
// when it is unknown or longer than a time.Duration holds (a max_frames of
// billions of frames).
func eta(frames, total int64, fps float64) (time.Duration, bool) {
	if fps <= 0 || frames >= total {
		return 0, false
	}
	secs := float64(total-frames) / fps
	if secs >= float64(math.MaxInt64/int64(time.Second)) {
		return 0, false
	}
	return (time.Duration(secs * float64(time.Second))).Round(time.Second), true
}

func logProgress(r *pipeline.Runner) {
	m := r.Metrics()
	frames, total := m.Progress(), m.ExpectedFrames()
	el := m.Elapsed().Seconds()
	fps := float64(frames) / el
	attrs := []any{"frames", frames, "fps", fmt.Sprintf("%.1f", fps)}
	if total > 0 {
		attrs = append(attrs, "total", total, "percent", fmt.Sprintf("%.1f", 100*float64(frames)/float64(total)))
		if left, ok := eta(frames, total, fps); ok {
			attrs = append(attrs, "eta", left.String())
		}
	}
	var drops int64
	for _, s := range m.Snapshot() {
		drops += s.Drops
	}
	attrs = append(attrs, "drops", drops)
	slog.Info("progress", attrs...)
}
