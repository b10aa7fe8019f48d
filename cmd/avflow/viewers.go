package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/urfave/cli/v2"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/natsauth"
	"github.com/avflow/avflow/pipeline/viewers"
)

// viewersCmd adds, lists and removes the viewers of a running pipeline
// with a personalise stage: profiles in its viewer bucket (JetStream KV).
func viewersCmd() *cli.Command {
	common := append([]cli.Flag{
		&cli.StringFlag{Name: "pipeline", Aliases: []string{"p"}, Required: true, Usage: "the pipeline (its deployment name: the file's name:, or its run's --name)"},
		&cli.StringFlag{Name: "nats", Usage: "the NATS server the pipeline runs on (default: the run of that name on this machine, from its run file)", EnvVars: []string{"AVFLOW_NATS_URL"}},
		&cli.DurationFlag{Name: "timeout", Value: 10 * time.Second, Usage: "how long to wait for the NATS server"},
	}, natsFlags()...)
	return &cli.Command{
		Name:  "viewers",
		Usage: "add, list and remove the viewers of a personalised pipeline while it runs",
		Description: "Each viewer's profile is stored in the pipeline's NATS key-value bucket avflow-viewers-<pipeline> " +
			"(key profile.<id>, JSON); the personalise stage gives each distinct look one render and encode, and writes " +
			"each viewer's playlist in manifest.<id>. See docs/personalisation.md.",
		Subcommands: []*cli.Command{
			{
				Name: "add", Usage: "add a viewer, or change their profile", ArgsUsage: "ID",
				Flags: append(slices.Clone(common),
					&cli.StringFlag{Name: "name", Usage: "display name ({{.Viewer.Name}} in overlays)"},
					&cli.StringFlag{Name: "layout", Usage: "landscape (16:9), vertical (9:16), square or source (default)"},
					&cli.StringFlag{Name: "privacy", Usage: "none (default) or blur-faces"},
					&cli.StringSliceFlag{Name: "overlay", Usage: "an overlay, repeatable: 'text=Hi {{.Viewer.Name}}' or 'image=logo.png', " +
						"with ';position=top-right;scale=0.2;opacity=0.8' after it"},
					&cli.IntFlag{Name: "max-height", Usage: "the rendition's height at most (pixels)"},
					&cli.StringFlag{Name: "max-bitrate", Usage: "the rendition's bitrate at most, e.g. 800k or 2M"},
					&cli.StringFlag{Name: "audio", Usage: "keep (default) or mute"},
				),
				Action: viewersAdd,
			},
			{Name: "ls", Usage: "list the viewers: their variant, playlist and state", Flags: append(slices.Clone(common),
				&cli.BoolFlag{Name: "json", Usage: "print JSON: profiles, refused profiles and the manifest"}), Action: viewersList},
			{Name: "rm", Usage: "remove viewers", ArgsUsage: "ID...", Flags: common, Action: viewersRemove},
		},
	}
}

// openViewers connects to the pipeline's server and binds its bucket.
func openViewers(c *cli.Context) (*viewers.Store, func(), error) {
	name := c.String("pipeline")
	if err := pipeline.CheckName(name); err != nil {
		return nil, nil, cli.Exit("avflow viewers: --pipeline: "+err.Error(), exitInvalid)
	}
	url := c.String("nats")
	cfg, opts, err := natsOptions(c, url)
	if err != nil {
		return nil, nil, err
	}
	if url == "" {
		rf, err := natsauth.ReadRunFile(name)
		if err != nil {
			return nil, nil, cli.Exit("avflow viewers: "+err.Error(), exitRun)
		}
		cfg = rf.Config()
		if opts, err = cfg.Options(); err != nil {
			return nil, nil, cli.Exit("avflow viewers: "+err.Error(), exitRun)
		}
	}
	opts = append(opts, nats.Name("avflow viewers"), nats.Timeout(c.Duration("timeout")))
	nc, err := nats.Connect(cfg.URL, opts...)
	if err != nil {
		return nil, nil, cli.Exit(fmt.Sprintf("avflow viewers: connecting to %s failed: %v", cfg, natsAuthError(err, cfg)), exitRun)
	}
	ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
	defer cancel()
	st, err := viewers.Attach(ctx, nc, name)
	if err != nil {
		nc.Close()
		return nil, nil, cli.Exit("avflow viewers: "+err.Error(), exitRun)
	}
	return st, nc.Close, nil
}

func viewersAdd(c *cli.Context) error {
	if c.NArg() != 1 {
		return cli.Exit("avflow viewers add: want one viewer id", exitInvalid)
	}
	p, err := profileOf(c)
	if err != nil {
		return cli.Exit("avflow viewers add: "+err.Error(), exitInvalid)
	}
	return withViewers(c, func(ctx context.Context, st *viewers.Store) error {
		if err := st.Put(ctx, p); err != nil {
			return err
		}
		key, _ := p.VariantKey() // Put checked the profile
		fmt.Fprintf(c.App.Writer, "viewer %s: variant %s (avflow viewers ls -p %s: playlist and state)\n", p.ID, key, c.String("pipeline"))
		return nil
	})
}

// withViewers runs f on the pipeline's bucket, within --timeout; its
// error is the command's (exit 1).
func withViewers(c *cli.Context, f func(context.Context, *viewers.Store) error) error {
	st, closeConn, err := openViewers(c)
	if err != nil {
		return err
	}
	defer closeConn()
	ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
	defer cancel()
	if err := f(ctx, st); err != nil {
		return cli.Exit("avflow viewers "+c.Command.Name+": "+err.Error(), exitRun)
	}
	return nil
}

// profileOf builds the profile of avflow viewers add's flags, checked.
func profileOf(c *cli.Context) (*viewers.Profile, error) {
	p := &viewers.Profile{ID: c.Args().First(), Name: c.String("name"), Layout: c.String("layout"), Privacy: c.String("privacy"),
		Audio: c.String("audio"), Quality: viewers.Quality{MaxHeight: c.Int("max-height")}}
	if b := c.String("max-bitrate"); b != "" {
		bps, err := pipeline.ParseBitrate(b)
		if err != nil {
			return nil, fmt.Errorf("--max-bitrate: %w", err)
		}
		p.Quality.MaxBitrate = int(bps)
	}
	for i, spec := range c.StringSlice("overlay") {
		o, err := parseOverlay(spec)
		if err != nil {
			return nil, fmt.Errorf("--overlay %d (%q): %w", i+1, spec, err)
		}
		p.Overlays = append(p.Overlays, o)
	}
	return p, p.Check()
}

// parseOverlay reads 'text=...;position=...;scale=...;opacity=...'.
func parseOverlay(spec string) (viewers.Overlay, error) {
	var o viewers.Overlay
	for i, part := range strings.Split(spec, ";") {
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return o, fmt.Errorf("%q: want key=value", part)
		}
		var err error
		switch k = strings.TrimSpace(k); {
		case i == 0 && k == "text":
			o.Text = v
		case i == 0 && k == "image":
			o.Image = v
		case i == 0:
			return o, fmt.Errorf("want text= or image= first, got %q", k)
		case k == "position":
			o.Position = v
		case k == "scale":
			o.Scale, err = strconv.ParseFloat(v, 64)
		case k == "opacity":
			o.Opacity, err = strconv.ParseFloat(v, 64)
		default:
			return o, fmt.Errorf("unknown key %q (position, scale, opacity)", k)
		}
		if err != nil {
			return o, fmt.Errorf("%s: %w", k, err)
		}
	}
	return o, nil
}

func viewersList(c *cli.Context) error {
	return withViewers(c, func(ctx context.Context, st *viewers.Store) error {
		l, err := st.List(ctx)
		if err != nil {
			return err
		}
		if c.Bool("json") {
			return printListingJSON(c.App.Writer, l)
		}
		printListing(c.App.Writer, l)
		return nil
	})
}

func printListing(w io.Writer, l *viewers.Listing) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VIEWER\tVARIANT\tSTATE\tPLAYLIST\tERROR")
	for _, p := range l.Profiles {
		e, ok := l.Manifest[p.ID]
		if !ok {
			e = viewers.Entry{State: "pending"}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", p.ID, orDash(e.Variant), e.State, orDash(e.Playlist), e.Error)
	}
	ids := make([]string, 0, len(l.Bad))
	for id := range l.Bad {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		fmt.Fprintf(tw, "%s\t-\t%s\t-\t%s\n", id, viewers.StateRefused, l.Bad[id])
	}
	tw.Flush() //nolint:errcheck // the terminal
}

func printListingJSON(w io.Writer, l *viewers.Listing) error {
	bad := map[string]string{}
	for id, err := range l.Bad {
		bad[id] = err.Error()
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(struct {
		Profiles []*viewers.Profile       `json:"profiles"`
		Refused  map[string]string        `json:"refused"`
		Manifest map[string]viewers.Entry `json:"manifest"`
	}{l.Profiles, bad, l.Manifest})
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func viewersRemove(c *cli.Context) error {
	if c.NArg() == 0 {
		return cli.Exit("avflow viewers rm: want the ids of the viewers to remove", exitInvalid)
	}
	return withViewers(c, func(ctx context.Context, st *viewers.Store) error {
		var errs []error
		for _, id := range c.Args().Slice() {
			if err := st.Delete(ctx, id); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	})
}
