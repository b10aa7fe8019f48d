package main

import (
	"math"
	"testing"
	"time"

	"github.com/avflow/avflow/pipeline/envelope"
	"github.com/nats-io/nats.go"
)

// TestSteadyFPS reads avflow run's progress lines (copied from a real
// run) and measures the rate between 10% and 90% of the frames.
func TestSteadyFPS(t *testing.T) {
	out := `time=2026-12-01T16:26:08.425Z level=INFO msg="remote stage found" pipeline=so stage=slow
time=2026-12-01T16:26:08.425Z level=INFO msg=progress frames=30 fps=26.7 total=400 percent=7.5 eta=12s drops=0
time=2026-12-01T16:26:08.925Z level=INFO msg=progress frames=40 fps=26.7 total=400 percent=10.0 eta=12s drops=0
time=2026-12-01T16:26:10.925Z level=INFO msg=progress frames=200 fps=30.3 total=400 percent=50.0 eta=8s drops=0
time=2026-12-01T16:26:12.925Z level=INFO msg=progress frames=360 fps=32.5 total=400 percent=90.0 eta=2s drops=0
time=2026-12-01T16:26:13.424Z level=INFO msg=progress frames=399 fps=32.9 total=400 percent=99.8 eta=0s drops=0
time=2026-12-01T16:26:13.425Z level=WARN msg=progress frames=1 note="not a progress line: another level"
`
	tests := []struct {
		name  string
		out   string
		total int64
		want  float64
		ok    bool
	}{
		{name: "10% to 90%", out: out, total: 400, want: 80, ok: true}, // 320 frames in 4 s
		{name: "none in range", out: out, total: 4000, want: 0, ok: false},
		{name: "a shorter run", out: out, total: 250, want: 68, ok: true},      // 30 -> 200 in 2.5 s
		{name: "one line in range", out: out, total: 3900, want: 0, ok: false}, // only 399
		{name: "no progress lines", out: "edge2: done in 411ms\n", total: 10, ok: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := steadyFPS(progressPoints(tc.out), tc.total)
			if ok != tc.ok || math.Abs(got-tc.want) > 0.01 {
				t.Errorf("steadyFPS = %v, %v; want %v, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
	if pts := progressPoints(out); len(pts) != 5 || pts[0].frames != 30 || pts[4].frames != 399 {
		t.Errorf("progress points %v, want the 5 info lines", pts)
	}
}

// TestStatCPU reads utime and stime from /proc/PID/stat lines, with a
// command name that holds spaces and parentheses.
func TestStatCPU(t *testing.T) {
	tests := []struct {
		stat string
		want time.Duration
	}{
		{"4321 (nats-server) S 1 4321 4321 0 -1 4194560 2345 0 0 0 150 25 0 0 20 0 9 0 123 0 0", 1750 * time.Millisecond},
		{"99 (a (b) c) R 1 99 99 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 5 0 0", 100 * time.Millisecond},
		{"99 (short) R 1", 0},
		{"no parenthesis", 0},
	}
	for _, tc := range tests {
		if got := statCPU(tc.stat); got != tc.want {
			t.Errorf("statCPU(%q) = %s, want %s", tc.stat, got, tc.want)
		}
	}
}

// TestBarepeerResult reads the bare peer's result line.
func TestBarepeerResult(t *testing.T) {
	m := barepeerRe.FindStringSubmatch("barepeer: 300 messages of 1382400 bytes in 1.617802 s\n")
	if m == nil || m[1] != "300" || m[2] != "1382400" || m[3] != "1.617802" {
		t.Errorf("parsed %q", m)
	}
}

func TestQuantile(t *testing.T) {
	v := []float64{5, 1, 4, 2, 3, 6, 7, 8, 9, 10}
	tests := []struct {
		q, want float64
	}{{0, 1}, {0.5, 6}, {0.99, 10}, {1, 10}}
	for _, tc := range tests {
		if got := quantile(v, tc.q); got != tc.want {
			t.Errorf("quantile(%v) = %v, want %v", tc.q, got, tc.want)
		}
	}
	if quantile(nil, 0.5) != 0 {
		t.Error("quantile of nothing is not 0")
	}
	if v[0] != 5 {
		t.Error("quantile sorted its input")
	}
}

// TestStampTap reads hop intervals from a message's stamps (as the tap
// stage publishes them), skipping what lacks a stamp and counting what
// is not an envelope.
func TestStampTap(t *testing.T) {
	tap := &stampTap{lat: map[string][]float64{}}
	ms := int64(time.Millisecond)
	msg := func(stamps ...envelope.Stamp) *nats.Msg {
		data, err := envelope.Marshal(&envelope.Envelope{Kind: envelope.KindPacket, Stamps: stamps})
		if err != nil {
			t.Fatal(err)
		}
		return &nats.Msg{Data: data}
	}
	tap.onMsg(msg(envelope.Stamp{Stage: "cam", At: 0}, envelope.Stamp{Stage: "gate", At: 100 * ms}, envelope.Stamp{Stage: "dec", At: 102 * ms},
		envelope.Stamp{Stage: "faces", At: 120 * ms}, envelope.Stamp{Stage: "track", At: 121 * ms}, envelope.Stamp{Stage: "blur", At: 150 * ms}))
	tap.onMsg(msg(envelope.Stamp{Stage: "gate", At: 0}, envelope.Stamp{Stage: "blur", At: 30 * ms}))
	tap.onMsg(&nats.Msg{Data: []byte("not msgpack")})
	want := map[string][]float64{"gate->blur": {50, 30}, "dec->faces": {18}, "faces->track": {1}}
	for k, w := range want {
		got := tap.lat[k]
		if len(got) != len(w) {
			t.Errorf("%s: %v, want %v", k, got, w)
			continue
		}
		for i := range w {
			if math.Abs(got[i]-w[i]) > 1e-9 {
				t.Errorf("%s: %v, want %v", k, got, w)
			}
		}
	}
	if tap.n != 2 || tap.bad != 1 {
		t.Errorf("read %d, bad %d; want 2 and 1", tap.n, tap.bad)
	}
}
