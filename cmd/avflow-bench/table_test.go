package main

import (
	"testing"
	"time"
)

// TestEndTable reads the table avflow run prints (copied from a real run),
// with its multi-word headers and the events column.
func TestEndTable(t *testing.T) {
	out := `unread: done in 5ms
  stage    kind  in  out    fps  busy ms  latency ms  max ms  queue  drops  device                 events
    src  source   3    3  549.4     0.12         0.0     0.0      0      0   cpu:0      corrupt_packets=0
    dec  decode   3    3  549.4     0.10         0.3     0.4      0      2   cpu:0  undecodable_packets=0
    out    sink   3    0  549.4     0.78         2.5     2.6      0      0   cpu:0                      -
`
	rows := endTable(out)
	if len(rows) != 3 {
		t.Fatalf("%d rows, want 3: %v", len(rows), rows)
	}
	if r := rows[2]; r["stage"] != "out" || r["kind"] != "sink" || r["fps"] != "549.4" || r["in"] != "3" {
		t.Errorf("sink row %v", r)
	}
	if r := rows[1]; r["drops"] != "2" || r["events"] != "undecodable_packets=0" || r["busy ms"] != "0.10" {
		t.Errorf("decode row %v", r)
	}
}

// TestLongestStall: the longest time between two moves of the frame
// count after the kill, counted from the kill when the count last moved
// before it.
func TestLongestStall(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	at := func(ms int, frames int64) progressPoint {
		return progressPoint{at: t0.Add(time.Duration(ms) * time.Millisecond), frames: frames}
	}
	tests := []struct {
		name  string
		pts   []progressPoint
		since int
		want  time.Duration
	}{
		{"moves every line", []progressPoint{at(0, 1), at(100, 2), at(200, 3)}, 50, 100 * time.Millisecond},
		{"stands still after the kill", []progressPoint{at(0, 1), at(100, 2), at(200, 2), at(900, 2), at(1000, 3)}, 150, 850 * time.Millisecond},
		{"two stalls, the longer counts", []progressPoint{at(0, 1), at(100, 1), at(300, 2), at(400, 2), at(500, 3)}, 0, 300 * time.Millisecond},
		{"a stall before the kill does not count", []progressPoint{at(0, 1), at(500, 1), at(600, 2)}, 550, 50 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := longestStall(tt.pts, t0.Add(time.Duration(tt.since)*time.Millisecond)); got != tt.want {
				t.Errorf("longestStall = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestEventCell(t *testing.T) {
	for _, tt := range []struct {
		cell, name string
		want       int64
	}{
		{"redelivered=7,duplicate_outputs=2", "duplicate_outputs", 2},
		{"redelivered=7,duplicate_outputs=2", "redelivered", 7},
		{"-", "redelivered", 0},
		{"redelivered_duplicates=3", "redelivered", 0},
	} {
		if got := eventCell(tt.cell, tt.name); got != tt.want {
			t.Errorf("eventCell(%q, %q) = %d, want %d", tt.cell, tt.name, got, tt.want)
		}
	}
}
