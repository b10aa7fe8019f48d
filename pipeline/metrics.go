package pipeline

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/avflow/avflow/pipeline/stage"
)

// eventCounter counts events beyond the messages a stage takes and
// emits: a stage's own (see stageCounts), and those of the transport's
// inlets and publishers (forged messages dropped, credits clamped). Read
// at every snapshot while the stage runs.
type eventCounter interface {
	Counts() map[string]int64
}

// stageCounts are a stage instance's Status.Counts.
type stageCounts struct{ st stage.Stage }

func (c stageCounts) Counts() map[string]int64 { return c.st.Status().Counts }

// stageMetrics are one stage's live counters.
type stageMetrics struct {
	name, kind string
	device     string
	reporter   stage.Stage    // its first instance, whose Status.Device is read at each snapshot
	counters   []eventCounter // its instances' Status.Counts and its transport's counters
	in, out    atomic.Int64
	videoIn    atomic.Int64
	busyNS     atomic.Int64
	latSumNS   atomic.Int64
	latCount   atomic.Int64
	latMaxNS   atomic.Int64
	q          *queue
	terminal   bool

	busy, lat samples // recent processing times and latencies
}

// samples keeps the latest durations (ns) for percentiles, in a ring.
type samples struct {
	mu   sync.Mutex
	v    []int64
	next int
}

const keptSamples = 2048

func (s *samples) add(d int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.v) < keptSamples {
		s.v = append(s.v, d)
		return
	}
	s.v[s.next] = d
	s.next = (s.next + 1) % keptSamples
}

// percentiles are the median and the 99th percentile, in ms.
func (s *samples) percentiles() (p50, p99 float64) {
	s.mu.Lock()
	v := slices.Clone(s.v)
	s.mu.Unlock()
	if len(v) == 0 {
		return 0, 0
	}
	slices.Sort(v)
	at := func(q float64) float64 { return float64(v[min(len(v)-1, int(q*float64(len(v))))]) / 1e6 }
	return at(0.50), at(0.99)
}

func (m *stageMetrics) observeBusy(d time.Duration) {
	m.busyNS.Add(int64(d))
	m.busy.add(int64(d))
}

func (m *stageMetrics) observeLatency(e *stage.Msg, now int64) {
	if len(e.Stamps) == 0 {
		return
	}
	d := now - e.Stamps[0].At
	if d < 0 {
		return
	}
	m.latSumNS.Add(d)
	m.latCount.Add(1)
	m.lat.add(d)
	for {
		cur := m.latMaxNS.Load()
		if d <= cur || m.latMaxNS.CompareAndSwap(cur, d) {
			return
		}
	}
}

// StageStats is a snapshot of one stage.
type StageStats struct {
	Name, Kind string
	Device     string  // the device the stage is bound to
	In, Out    int64   // messages taken and emitted
	VideoIn    int64   // video messages taken
	FPS        float64 // messages emitted per second of run time
	BusyMs     float64 // mean processing time per input message
	BusyP50Ms  float64 // median processing time of recent messages
	BusyP99Ms  float64
	LatencyMs  float64 // mean time from the source's stamp to this stage's output
	LatP50Ms   float64 // median of recent latencies
	LatP99Ms   float64
	MaxLatMs   float64
	Depth      int   // messages waiting in the input queue
	Drops      int64 // messages dropped by drop-oldest flow control
	Terminal   bool  // the stage has no outputs (a sink)
	// Events are the stage's own counters (stage.Status.Counts), summed over its
	// replicas: corrupt_packets, undecodable_packets...
	Events map[string]int64 `json:",omitempty"`
}

// Metrics are the live counters of a run. They may be read (a Prometheus
// scrape) before and while the run starts: the stages appear once they are
// all built.
type Metrics struct {
	mu     sync.RWMutex
	start  time.Time
	stages []*stageMetrics
	total  atomic.Int64 // expected frames, 0 if unknown
}

// begin restarts the run clock.
func (m *Metrics) begin(at time.Time) {
	m.mu.Lock()
	m.start = at
	m.mu.Unlock()
}

// show makes the stages' counters visible, once every stage is built.
func (m *Metrics) show(stages []*stageMetrics) {
	m.mu.Lock()
	m.stages = stages
	m.mu.Unlock()
}

// now returns the run clock's start and the visible stages.
func (m *Metrics) now() (time.Time, []*stageMetrics) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.start, m.stages
}

// deviceNow is where the stage runs now: a GPU decoder that meets a
// stream its hardware cannot decode, or an NVENC that will not open at
// the first frame, moves to the CPU after the stage was built.
func (s *stageMetrics) deviceNow() string {
	if s.reporter != nil {
		if d := s.reporter.Status().Device; d != "" {
			return d
		}
	}
	return s.device
}

// Elapsed returns the run time so far.
func (m *Metrics) Elapsed() time.Duration {
	start, _ := m.now()
	return time.Since(start)
}

// ExpectedFrames is the number of video frames the sources announced (0: unknown/live).
func (m *Metrics) ExpectedFrames() int64 { return m.total.Load() }

// Snapshot returns every stage's numbers.
func (m *Metrics) Snapshot() []StageStats {
	start, stages := m.now()
	el := time.Since(start).Seconds()
	out := make([]StageStats, 0, len(stages))
	for _, s := range stages {
		out = append(out, s.stats(el))
	}
	return out
}

// stageStats returns one stage's numbers (a stage's metrics endpoint asks
// for its own, not for the whole pipeline's).
func (m *Metrics) stageStats(s *stageMetrics) StageStats {
	start, _ := m.now()
	return s.stats(time.Since(start).Seconds())
}

// stats are the stage's numbers after el seconds of run time.
func (s *stageMetrics) stats(el float64) StageStats {
	st := StageStats{Name: s.name, Kind: s.kind, Device: s.deviceNow(), In: s.in.Load(), Out: s.out.Load(), VideoIn: s.videoIn.Load(), Terminal: s.terminal}
	if el > 0 {
		st.FPS = float64(st.Out) / el
		if st.Terminal {
			st.FPS = float64(st.In) / el
		}
	}
	if st.In > 0 {
		st.BusyMs = float64(s.busyNS.Load()) / float64(st.In) / 1e6
	}
	st.BusyP50Ms, st.BusyP99Ms = s.busy.percentiles()
	st.LatP50Ms, st.LatP99Ms = s.lat.percentiles()
	if n := s.latCount.Load(); n > 0 {
		st.LatencyMs = float64(s.latSumNS.Load()) / float64(n) / 1e6
	}
	st.MaxLatMs = float64(s.latMaxNS.Load()) / 1e6
	if s.q != nil {
		st.Depth = s.q.Len()
		st.Drops = s.q.drops.Load()
	}
	for _, c := range s.counters {
		for k, v := range c.Counts() {
			if st.Events == nil {
				st.Events = map[string]int64{}
			}
			st.Events[k] += v
		}
	}
	return st
}

// eventsText renders a stage's event counters for the end table, e.g.
// "corrupt_packets=1" ("-" when there are none).
func eventsText(ev map[string]int64) string {
	if len(ev) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(ev))
	for k := range ev {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, ev[k])
	}
	return strings.Join(parts, ",")
}

// Progress returns the video frames that reached the sinks (the least of them).
func (m *Metrics) Progress() int64 {
	var p int64 = -1
	_, stages := m.now()
	for _, s := range stages {
		if s.terminal {
			if v := s.videoIn.Load(); p < 0 || v < p {
				p = v
			}
		}
	}
	return max(p, 0)
}

// WriteTable prints the per-stage summary.
func (m *Metrics) WriteTable(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "stage\tkind\tin\tout\tfps\tbusy ms\tlatency ms\tmax ms\tqueue\tdrops\tdevice\tevents\t")
	for _, s := range m.Snapshot() {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%.1f\t%.2f\t%.1f\t%.1f\t%d\t%d\t%s\t%s\t\n", s.Name, s.Kind, s.In, s.Out, s.FPS, s.BusyMs, s.LatencyMs, s.MaxLatMs, s.Depth, s.Drops, s.Device, eventsText(s.Events))
	}
	tw.Flush()
}

// WritePrometheus writes the metrics in the Prometheus text format (0.0.4).
// Hand-written: the format is a few lines and client_golang would pull in a
// dozen modules for it.
func (m *Metrics) WritePrometheus(w io.Writer, pipeline string) {
	snap := m.Snapshot()
	sort.Slice(snap, func(i, j int) bool { return snap[i].Name < snap[j].Name })
	type series struct {
		name, help, typ string
		val             func(StageStats) float64
	}
	all := []series{
		{"avflow_stage_messages_in_total", "Messages taken by the stage.", "counter", func(s StageStats) float64 { return float64(s.In) }},
		{"avflow_stage_messages_out_total", "Messages emitted by the stage.", "counter", func(s StageStats) float64 { return float64(s.Out) }},
		{"avflow_stage_drops_total", "Messages dropped by drop-oldest flow control.", "counter", func(s StageStats) float64 { return float64(s.Drops) }},
		{"avflow_stage_queue_depth", "Messages waiting in the stage's input queue.", "gauge", func(s StageStats) float64 { return float64(s.Depth) }},
		{"avflow_stage_busy_seconds", "Mean processing time per input message.", "gauge", func(s StageStats) float64 { return s.BusyMs / 1e3 }},
		{"avflow_stage_latency_seconds", "Mean time from the source to this stage's output.", "gauge", func(s StageStats) float64 { return s.LatencyMs / 1e3 }},
		{"avflow_stage_latency_p50_seconds", "Median time from the source to this stage's output, of recent messages.", "gauge", func(s StageStats) float64 { return s.LatP50Ms / 1e3 }},
		{"avflow_stage_latency_p99_seconds", "99th percentile of the time from the source to this stage's output, of recent messages.", "gauge", func(s StageStats) float64 { return s.LatP99Ms / 1e3 }},
		{"avflow_stage_latency_max_seconds", "Longest time from the source to this stage's output.", "gauge", func(s StageStats) float64 { return s.MaxLatMs / 1e3 }},
		{"avflow_stage_fps", "Messages emitted per second of run time (taken, for a sink).", "gauge", func(s StageStats) float64 { return s.FPS }},
	}
	esc := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	lbl := func(s StageStats) string {
		return fmt.Sprintf(`{pipeline="%s",stage="%s",kind="%s",device="%s"}`, esc.Replace(pipeline), esc.Replace(s.Name), esc.Replace(s.Kind), esc.Replace(s.Device))
	}
	for _, se := range all {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", se.name, se.help, se.name, se.typ)
		for _, s := range snap {
			fmt.Fprintf(w, "%s%s %g\n", se.name, lbl(s), se.val(s))
		}
	}
	const events = "avflow_stage_events_total"
	fmt.Fprintf(w, "# HELP %s Events a stage counts itself (corrupt_packets, undecodable_packets...).\n# TYPE %s counter\n", events, events)
	for _, s := range snap {
		keys := make([]string, 0, len(s.Events))
		for k := range s.Events {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			l := lbl(s)
			fmt.Fprintf(w, "%s%s,event=\"%s\"} %d\n", events, l[:len(l)-1], esc.Replace(k), s.Events[k])
		}
	}
}
