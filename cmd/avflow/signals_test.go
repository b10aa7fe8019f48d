package main

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestSignalPolicy(t *testing.T) {
	t0 := time.Unix(1000, 0)
	tests := []struct {
		name    string
		after   []time.Duration // when each signal comes, after t0
		started bool
		want    []signalAction
	}{
		{"one signal drains", []time.Duration{0}, true, []signalAction{drainRun}},
		{"GNU timeout's pair is one request", []time.Duration{0, 20 * time.Microsecond}, true, []signalAction{drainRun, ignoreSignal}},
		{"a slow relay is still the same", []time.Duration{0, signalRepeat - time.Millisecond}, true, []signalAction{drainRun, ignoreSignal}},
		{"a second one later aborts", []time.Duration{0, signalRepeat}, true, []signalAction{drainRun, cancelRun}},
		{"the pair, then a user's second", []time.Duration{0, time.Millisecond, 3 * time.Second}, true, []signalAction{drainRun, ignoreSignal, cancelRun}},
		{"while starting there is nothing to finish", []time.Duration{0}, false, []signalAction{cancelRun}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p signalPolicy
			for i, d := range tt.after {
				if got := p.next(t0.Add(d), tt.started); got != tt.want[i] {
					t.Errorf("signal %d at +%s: %v, want %v", i+1, d, got, tt.want[i])
				}
			}
		})
	}
}

// TestExitOnNextSignal: after an abort, the next signal ends the process at
// once (exit 1), whatever a stuck stage is doing. The test runs itself as
// the child that waits.
func TestExitOnNextSignal(t *testing.T) {
	if os.Getenv("AVFLOW_TEST_EXIT_ON_NEXT") == "1" {
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGINT)
		fmt.Println("ready")
		exitOnNext(sigs, time.Now().Add(-2*signalRepeat)) // aborted a while ago
		os.Exit(0)                                        // not reached: exitOnNext exits
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestExitOnNextSignal$")
	cmd.Env = append(os.Environ(), "AVFLOW_TEST_EXIT_ON_NEXT=1")
	p := startProc(t, cmd)
	p.waitLog(t, "ready", 10*time.Second)
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, 5*time.Second); code != exitRun {
		t.Fatalf("exit %d after the signal, want %d:\n%s", code, exitRun, p.out)
	}
	if !strings.Contains(p.out.String(), "exiting now") {
		t.Errorf("no message saying why:\n%s", p.out)
	}
}
