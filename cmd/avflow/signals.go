package main

import (
	"context"
	"log/slog"
	"os"
	"syscall"
	"time"

	"github.com/avflow/avflow/pipeline"
)

// stopSignals stop a run: the first finishes it cleanly, a second aborts it.
var stopSignals = []os.Signal{os.Interrupt, syscall.SIGTERM, syscall.SIGHUP}

// signalRepeat is how soon after the first a signal is taken as the same
// request: GNU timeout (and other supervisors) send their signal to the
// process and then to its process group, so avflow gets it twice within a
// few microseconds, and a user's second Ctrl-C comes later than this.
const signalRepeat = time.Second

type signalAction int

const (
	ignoreSignal signalAction = iota
	drainRun                  // finish the frames in flight, finalise the outputs
	cancelRun                 // stop everything now
)

// signalPolicy decides what each stop signal does.
type signalPolicy struct {
	first time.Time // when the first signal came (zero: none yet)
}

// next is what a signal coming at `at` does. started says whether every
// stage is running: a run still starting (a source waiting for a server
// to answer) has nothing to finish, so its first signal cancels it.
func (p *signalPolicy) next(at time.Time, started bool) signalAction {
	switch {
	case p.first.IsZero():
		p.first = at
		if !started {
			return cancelRun
		}
		return drainRun
	case at.Sub(p.first) < signalRepeat:
		return ignoreSignal
	default:
		return cancelRun
	}
}

// exitOnNext ends the process at the next signal after an abort (a
// repeat within a second is still the same request): a stage stuck in a
// call nothing interrupts must not leave the user only SIGKILL.
func exitOnNext(sigs <-chan os.Signal, aborted time.Time) {
	for sig := range sigs {
		if time.Since(aborted) < signalRepeat {
			continue
		}
		slog.Error("exiting now: the run was aborted but has not ended", "signal", sig.String())
		os.Exit(exitRun)
	}
}

// onSignals applies the signal policy to a run until sigs is closed or
// the run is cancelled.
func onSignals(sigs <-chan os.Signal, r *pipeline.Runner, cancel context.CancelFunc) {
	var p signalPolicy
	for sig := range sigs {
		started := false
		select {
		case <-r.Ready():
			started = true
		default:
		}
		switch p.next(time.Now(), started) {
		case drainRun:
			slog.Info("stopping: finishing the frames in flight (press Ctrl-C again to abort)", "signal", sig.String())
			r.Drain()
		case cancelRun:
			if started {
				slog.Warn("aborting: the frames in flight are dropped and unfinished outputs removed", "signal", sig.String())
			} else {
				slog.Warn("aborting: the pipeline was still starting", "signal", sig.String())
			}
			cancel()
			exitOnNext(sigs, time.Now())
			return
		default:
			slog.Debug("the same signal again at once (sent to the process and its group): taken as one", "signal", sig.String())
		}
	}
}
