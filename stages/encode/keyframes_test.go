package encode

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/stage"
)

// gappy is 25 fps frame numbers with holes, as drop-oldest leaves them under
// load: short gaps, one across an interval boundary, one across several.
func gappy() []int64 {
	var pts []int64
	for _, r := range [][2]int64{{0, 19}, {27, 40}, {52, 53}, {90, 120}, {121, 175}, {260, 300}} {
		for p := r[0]; p <= r[1]; p++ {
			pts = append(pts, p)
		}
	}
	return pts
}

// firstInEachInterval is what keyframes by time must be: the first frame,
// and each frame that is the first in its interval [k*every, (k+1)*every)
// after it.
func firstInEachInterval(pts []int64, every int64) []int64 {
	var want []int64
	for i, p := range pts {
		if i == 0 || (p-pts[0])/every != (pts[i-1]-pts[0])/every {
			want = append(want, p)
		}
	}
	return want
}

// TestKeyframesByTime: frames with gaps in their pts (drops) get keyframes
// at the multiples of the interval (the first frame at or after each),
// not every N frames: gop_duration sets it, live runs default to 2s, 0s
// and file runs leave keyframes to the encoder's GOP.
func TestKeyframesByTime(t *testing.T) {
	if astiav.FindEncoderByName("libx264") == nil {
		t.Skip("needs FFmpeg with libx264")
	}
	pts := gappy()
	tests := []struct {
		name   string
		params pipeline.Params
		live   bool
		every  int64 // in frames at 25 fps; 0: only the encoder's first keyframe
	}{
		{"live default", pipeline.Params{}, true, 50},
		{"gop_duration", pipeline.Params{"gop_duration": time.Second}, false, 25},
		{"gop_duration with a gop", pipeline.Params{"gop_duration": 3 * time.Second, "gop": 250}, true, 75},
		{"live, off", pipeline.Params{"gop_duration": time.Duration(0)}, true, 0},
		{"file", pipeline.Params{}, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.params["codec"], tt.params["preset"] = "libx264", "veryfast"
			enc, logs := newEncoder(t, tt.params, tt.live)
			var keys []int64
			collect := func(out stage.Batch) {
				for _, e := range out {
					if e.Key {
						keys = append(keys, e.PTS)
					}
					e.Release()
				}
			}
			for _, p := range pts {
				out, err := enc.Process(context.Background(), stage.Batch{halves(t, 320, 240, p)})
				if err != nil {
					t.Fatal(err)
				}
				collect(out)
			}
			out, err := enc.Flush(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			collect(out)
			slices.Sort(keys)
			want := []int64{pts[0]}
			if tt.every > 0 {
				want = firstInEachInterval(pts, tt.every)
			}
			if !slices.Equal(keys, want) {
				t.Errorf("keyframes at %v, want %v\n%s", keys, want, logs)
			}
		})
	}
}

func TestKeyClock(t *testing.T) {
	tests := []struct {
		name    string
		d       time.Duration
		tb      astiav.Rational
		pts     []int64
		want    []bool
		aligned bool
	}{
		{"25 fps", 2 * time.Second, astiav.NewRational(1, 25), []int64{0, 49, 50, 51, 99, 100}, []bool{true, false, true, false, false, true}, false},
		{"gap over two intervals", 2 * time.Second, astiav.NewRational(1, 25), []int64{0, 10, 130, 149, 150}, []bool{true, false, true, false, true}, false},
		{"90 kHz, late start", time.Second, astiav.NewRational(1, 90000), []int64{900000, 986000, 990000, 1079999, 1080000}, []bool{true, false, true, false, true}, false},
		{"no pts", time.Second, astiav.NewRational(1, 25), []int64{astiav.NoPtsValue, 0, astiav.NoPtsValue, 25}, []bool{false, true, false, true}, false},
		{"coarse time base", 500 * time.Millisecond, astiav.NewRational(1, 1), []int64{0, 1, 2}, []bool{true, true, true}, false},
		// A publisher that reconnects starts its timestamps again: the clock follows.
		{"timestamps jump back", 2 * time.Second, astiav.NewRational(1, 25), []int64{0, 50, 100, 5000, 5050, 10, 49, 60, 110}, []bool{true, true, true, true, true, true, false, true, true}, false},
		// A little reordering (B-frames, a late frame) is not a restart.
		{"small step back", 2 * time.Second, astiav.NewRational(1, 25), []int64{0, 50, 48, 99, 100}, []bool{true, true, false, false, true}, false},
		// Aligned: a clock starting at 37 puts its next keyframes at 50 and
		// 100, as one that started at 0 does; unaligned, at 87.
		{"aligned, late start", 2 * time.Second, astiav.NewRational(1, 25), []int64{37, 49, 50, 87, 99, 100}, []bool{true, false, true, false, false, true}, true},
		{"unaligned, late start", 2 * time.Second, astiav.NewRational(1, 25), []int64{37, 49, 50, 87, 99, 100}, []bool{true, false, false, true, false, false}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := newKeyClock(tt.d, tt.tb)
			k.aligned = tt.aligned
			for i, p := range tt.pts {
				if got := k.due(p); got != tt.want[i] {
					t.Errorf("pts %d: due %v, want %v", p, got, tt.want[i])
				}
			}
		})
	}
}

func TestGopDurationChecked(t *testing.T) {
	for _, tt := range []struct {
		d  time.Duration
		ok bool
	}{{2 * time.Second, true}, {0, true}, {-time.Second, false}} {
		if err := checkParams(pipeline.Params{"gop_duration": tt.d}, ""); (err == nil) != tt.ok {
			t.Errorf("gop_duration %s: %v", tt.d, err)
		}
	}
}
