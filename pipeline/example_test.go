package pipeline_test

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/asticode/go-astiav"

	"github.com/avflow/avflow/pipeline"
	_ "github.com/avflow/avflow/stages/all"
)

// Build a pipeline from YAML in a Go program and run it: 25 frames of a
// lavfi test pattern are decoded, encoded with x264 and muxed to nowhere.
func ExampleRunner() {
	cfg, err := pipeline.Parse([]byte(`
name: example
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2=size=320x240:rate=25", max_frames: 25}}
  - {name: dec, kind: decode, inputs: [src.video]}
  - {name: enc, kind: encode, inputs: [dec], params: {codec: libx264, preset: ultrafast}}
  - {name: out, kind: sink, inputs: [enc], params: {path: "null"}}
`), "example.yaml")
	if err != nil {
		fmt.Println(err)
		return
	}
	r, err := pipeline.NewRunner(pipeline.Default, cfg, pipeline.Options{Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := r.Run(context.Background()); err != nil {
		fmt.Println(err)
		return
	}
	for _, s := range r.Metrics().Snapshot() {
		fmt.Printf("%s: %d in, %d out\n", s.Name, s.In, s.Out)
	}
	// Output:
	// src: 25 in, 25 out
	// dec: 25 in, 25 out
	// enc: 25 in, 25 out
	// out: 25 in, 0 out
}

// Validation reports every problem with its file, line and column.
func ExampleEnvironment_Validate() {
	cfg, _ := pipeline.Parse([]byte(`name: broken
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2"}}
  - {name: dec, kind: decode, inputs: [src.vidoe], params: {threads: many}}
`), "broken.yaml")
	fmt.Println(pipeline.Default.Validate(cfg))
	// Output:
	// broken.yaml:4:70: stage "dec": param threads (int): want a whole number, got "many"
}

func init() {
	// Keep FFmpeg's own chatter (x264 statistics) out of test output.
	astiav.SetLogLevel(astiav.LogLevelError)
}
