package main

import "testing"

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
