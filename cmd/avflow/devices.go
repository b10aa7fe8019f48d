package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/avflow/avflow/accelerators"
	"github.com/avflow/avflow/stages/infer/onnx"
	"github.com/urfave/cli/v2"
)

func devicesCmd() *cli.Command {
	return &cli.Command{
		Name:  "devices",
		Usage: "what this machine has, what each device can do, and why anything is missing",
		Action: func(c *cli.Context) error {
			lib := onnx.LibraryPath()
			if _, err := os.Stat(lib); err != nil {
				lib = ""
			}
			inv := accelerators.Discover(accelerators.Options{Probe: accelerators.ProbeFFmpeg, ProbeEncoder: accelerators.ProbeEncoder, ORTLibrary: lib})
			tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "KIND\tDEVICE\tNAME\tUSABLE\tCAPABILITIES / REASON")
			for _, d := range inv.Devices {
				info := strings.Join(d.Caps, ", ")
				usable := "yes"
				if !d.Usable {
					usable = "no"
					info += " — " + d.Reason
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", d.Kind, d.ID, d.Name, usable, info)
			}
			tw.Flush()
			if len(inv.Absent) > 0 {
				fmt.Println("\nnot found:")
				for _, d := range inv.Absent {
					fmt.Printf("  %-4s %-40s %s\n", d.Kind, d.Name, d.Reason)
				}
			}
			return nil
		},
	}
}
