package main

import (
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
