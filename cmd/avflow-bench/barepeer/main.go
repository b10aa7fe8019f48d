// Command barepeer is the bare nats.go peer of avflow-bench's two-process
// benchmarks: the same payloads over the same NATS server as avflow, with
// no envelope, no stage and no chunking.
//
//	barepeer -nats URL -role echo  -n N                         # process B: takes each message on bare.in, publishes it on bare.out
//	barepeer -nats URL -role drive -n N -size BYTES -window W   # process A: publishes N messages on bare.in, at most W not yet back on bare.out
//
// A frame goes A -> server -> B -> server -> A, as a frame goes to an
// avflow stage served by another process and back; the window is what
// avflow's block-mode credits (the pipeline's queue) allow in flight, as
// a publisher over TCP must have some flow control, or the server cuts it
// off as a slow consumer. drive prints "barepeer: N messages of BYTES
// bytes in SECONDS s" when every message has come back.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
)

func main() {
	url := flag.String("nats", nats.DefaultURL, "NATS server")
	role := flag.String("role", "", "echo or drive")
	n := flag.Int("n", 600, "messages")
	size := flag.Int("size", 1280*720*3/2, "payload bytes (drive)")
	window := flag.Int("window", 4, "messages in flight (drive)")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up after")
	flag.Parse()
	nc, err := nats.Connect(*url, nats.Name("barepeer "+*role))
	if err != nil {
		fail(err)
	}
	defer nc.Close()
	switch *role {
	case "echo":
		err = echo(nc, *n, *timeout)
	case "drive":
		var d time.Duration
		if d, err = drive(nc, *n, *size, *window, *timeout); err == nil {
			fmt.Printf("barepeer: %d messages of %d bytes in %.6f s\n", *n, *size, d.Seconds())
		}
	default:
		err = fmt.Errorf("-role must be echo or drive, got %q", *role)
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "barepeer:", err)
	os.Exit(1)
}

// echo publishes every message of bare.in on bare.out, n of them. It
// prints "ready" once subscribed, so the driver can start.
func echo(nc *nats.Conn, n int, timeout time.Duration) error {
	done := make(chan struct{})
	got := 0
	var pubErr error
	sub, err := nc.Subscribe("bare.in", func(m *nats.Msg) {
		if err := nc.Publish("bare.out", m.Data); err != nil && pubErr == nil {
			pubErr = err
		}
		if got++; got == n {
			close(done)
		}
	})
	if err != nil {
		return err
	}
	_ = sub.SetPendingLimits(-1, -1)
	if err := nc.Flush(); err != nil {
		return err
	}
	fmt.Println("ready")
	select {
	case <-done:
	case <-time.After(timeout):
		return fmt.Errorf("echo: %d of %d messages in %s", got, n, timeout)
	}
	if pubErr != nil {
		return pubErr
	}
	return nc.Flush()
}

// drive publishes n messages of size bytes on bare.in, at most window of
// them not yet back on bare.out, and returns the time from the first
// publish to the last message back.
func drive(nc *nats.Conn, n, size, window int, timeout time.Duration) (time.Duration, error) {
	back := make(chan int, n)
	sub, err := nc.Subscribe("bare.out", func(m *nats.Msg) { back <- len(m.Data) })
	if err != nil {
		return 0, err
	}
	_ = sub.SetPendingLimits(-1, -1)
	if err := nc.Flush(); err != nil {
		return 0, err
	}
	t0 := time.Now()
	deadline := time.After(timeout)
	sent, got := 0, 0
	for got < n {
		for sent < n && sent-got < window {
			// A fresh buffer per frame, as a producer of new frames has.
			if err := nc.Publish("bare.in", make([]byte, size)); err != nil {
				return 0, err
			}
			sent++
		}
		select {
		case b := <-back:
			if b != size {
				return 0, fmt.Errorf("drive: a message of %d bytes came back, want %d", b, size)
			}
			got++
		case <-deadline:
			return 0, fmt.Errorf("drive: %d of %d messages back in %s", got, n, timeout)
		}
	}
	return time.Since(t0), nil
}
