package sink

import (
	"log/slog"
	"sync"
	"time"
)

// stallWarning is how long a write to a network output may block before
// the sink says so; after the sink's timeout it gives up.
const stallWarning = 2 * time.Second

// watchdog times the blocking FFmpeg calls of a network output, one at a
// time: it logs a warning naming the URL when one has made no progress for
// warnAfter, and interrupts it once it has been stuck for timeout (0: never).
type watchdog struct {
	log                *slog.Logger
	url                string
	warnAfter, timeout time.Duration
	interrupt          func()

	mu      sync.Mutex
	timer   *time.Timer
	busy    bool
	op      string
	started time.Time
	warned  bool
	tripped bool
}

func newWatchdog(log *slog.Logger, url string, timeout time.Duration, interrupt func()) *watchdog {
	w := &watchdog{log: log, url: url, warnAfter: stallWarning, timeout: timeout, interrupt: interrupt}
	if timeout > 0 && timeout/2 < w.warnAfter {
		w.warnAfter = timeout / 2
	}
	w.timer = time.AfterFunc(time.Hour, w.fire)
	w.timer.Stop()
	return w
}

// begin starts timing a call (op says what it does, for the warning).
func (w *watchdog) begin(op string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.busy, w.op, w.started, w.warned = true, op, time.Now(), false
	w.timer.Reset(w.warnAfter)
}

// end stops timing the call; it reports whether the call was interrupted
// for having stalled past the timeout.
func (w *watchdog) end() (tripped bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.timer.Stop()
	w.busy = false
	if w.warned && !w.tripped {
		w.log.Info("output moving again", "url", w.url, "stalled", time.Since(w.started).Round(time.Millisecond).String())
	}
	return w.tripped
}

func (w *watchdog) fire() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.busy || w.tripped {
		return
	}
	waited := time.Since(w.started)
	if waited < w.warnAfter { // a late fire from an earlier call
		w.timer.Reset(w.warnAfter - waited)
		return
	}
	if !w.warned {
		w.warned = true
		w.log.Warn("output stalled: a write to it makes no progress (is the receiver still reading?)",
			"url", w.url, "op", w.op, "waited", waited.Round(time.Millisecond).String(), "timeout", w.timeout.String())
	}
	if w.timeout <= 0 {
		return
	}
	if waited < w.timeout {
		w.timer.Reset(w.timeout - waited)
		return
	}
	w.tripped = true
	w.interrupt()
}

func (w *watchdog) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.timer.Stop()
	w.busy = false
}
