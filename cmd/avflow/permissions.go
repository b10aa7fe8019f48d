package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/viewers"
)

func permissionsCmd() *cli.Command {
	return &cli.Command{
		Name: "permissions",
		Usage: "print the NATS publish/subscribe permissions (a nats-server config block) that a process of a pipeline needs: " +
			"with --stage, avflow serve of those stages; without, avflow run (--remote: with those stages served elsewhere); with both, the two together (one user for both)",
		ArgsUsage: "pipeline.yaml",
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "stage", Usage: "a stage that one avflow serve process serves (repeatable: one process serving them all)"},
			&cli.StringSliceFlag{Name: "remote", Usage: "a stage avflow run leaves to other processes, as run --remote (repeatable)"},
			&cli.StringFlag{Name: "transport", Usage: "the transport the processes use: auto (default: the file's) or nats"},
			&cli.StringFlag{Name: "delivery", Usage: "how edges between processes carry messages, as run/serve --delivery: live or job (default: the file's)"},
			&cli.StringFlag{Name: "name", Usage: "the deployment's name (run/serve --name): the file's name: by default"},
			&cli.StringSliceFlag{Name: "set", Usage: "override a param as the processes do: stage.param=value (repeatable)"},
			&cli.BoolFlag{Name: "viewers", Usage: "instead: what a client of the pipeline's viewer bucket needs (avflow viewers, a platform's backend): read the bucket, write profiles; not the manifest, which only the pipeline writes"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return cli.Exit("avflow permissions: want one pipeline file", exitInvalid)
			}
			cfg, err := load(c.Args().First(), c.StringSlice("set"))
			if err != nil {
				return err
			}
			if n := c.String("name"); n != "" {
				if err := pipeline.CheckName(n); err != nil {
					return cli.Exit("avflow permissions: --name: "+err.Error(), exitInvalid)
				}
				cfg.Name = n
			}
			if c.Bool("viewers") {
				return printViewerPermissions(os.Stdout, cfg)
			}
			return printPermissions(os.Stdout, cfg, c.String("name"), c.StringSlice("stage"), c.StringSlice("remote"), pipeline.Process{Transport: c.String("transport"), Delivery: c.String("delivery")})
		},
	}
}

// printPermissions writes the permissions of the processes that serve
// (avflow serve --stage) and run (avflow run --remote) the deployment
// (cfg, renamed to name when set): one block for them all, after comments
// naming them.
func printPermissions(w io.Writer, cfg *pipeline.Config, name string, serve, remote []string, how pipeline.Process) error {
	var procs []pipeline.Process
	if len(serve) > 0 {
		procs = append(procs, pipeline.Process{Serve: serve, Transport: how.Transport, Delivery: how.Delivery})
	}
	if len(serve) == 0 || len(remote) > 0 {
		procs = append(procs, pipeline.Process{Remote: remote, Transport: how.Transport, Delivery: how.Delivery})
	}
	var all pipeline.NATSPermissions
	for _, p := range procs {
		perms, err := pipeline.Permissions(cfg, p)
		if err != nil {
			return cli.Exit("avflow: "+err.Error(), exitInvalid)
		}
		all = all.Union(perms)
	}
	fmt.Fprintf(w, "# NATS permissions of deployment %q (%s) for:\n", cfg.Name, cfg.File)
	for _, p := range procs {
		fmt.Fprintf(w, "#   %s\n", command(cfg.File, name, p))
	}
	fmt.Fprintf(w, "# Put the block in a user of the server's authorization: users = [ {user: NAME, password: SECRET, permissions: {...}} ]\n%s", all.Config())
	return nil
}

// command is the avflow command line a process is started with.
func command(file, name string, p pipeline.Process) string {
	args := []string{"avflow", "run", file}
	if len(p.Serve) > 0 {
		args[1] = "serve"
	}
	for _, s := range p.Serve {
		args = append(args, "--stage", s)
	}
	for _, s := range p.Remote {
		args = append(args, "--remote", s)
	}
	if p.Transport != "" {
		args = append(args, "--transport", p.Transport)
	}
	if p.Delivery != "" {
		args = append(args, "--delivery", p.Delivery)
	}
	if name != "" {
		args = append(args, "--name", name)
	}
	return strings.Join(args, " ") + " --nats URL"
}

// printViewerPermissions writes what a client of the deployment's viewer
// bucket needs (avflow viewers add/ls/rm).
func printViewerPermissions(w io.Writer, cfg *pipeline.Config) error {
	var personalise bool
	for _, s := range cfg.Stages {
		personalise = personalise || s.Kind == "personalise"
	}
	if !personalise {
		return cli.Exit(fmt.Sprintf("avflow permissions: --viewers: %s has no personalise stage, so no viewer bucket", cfg.File), exitInvalid)
	}
	b := viewers.Bucket(cfg.Name)
	fmt.Fprintf(w, "# NATS permissions of a client of bucket %s (deployment %q, %s): avflow viewers add/ls/rm -p %s --nats URL\n", b, cfg.Name, cfg.File, cfg.Name)
	fmt.Fprintf(w, "# Put the block in a user of the server's authorization: users = [ {user: NAME, password: SECRET, permissions: {...}} ]\n%s",
		pipeline.KVPermissions(b, false, viewers.ProfileKey(">")).Config())
	return nil
}
