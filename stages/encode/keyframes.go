package encode

import (
	"fmt"
	"strings"
	"time"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/pipeline"
)

// LiveKeyframeInterval is the keyframe interval by time of a video encoder
// in a live run (flow: drop-oldest) unless its gop_duration says
// otherwise: the sink's default hls_time, so that every HLS segment can
// end on time.
const LiveKeyframeInterval = 2 * time.Second

// keyClock forces keyframes by time, as the ffmpeg CLI's
// -force_key_frames expr:gte(t,n_forced*2) does: at the first frame, then
// at the first frame whose pts reaches each next multiple of the interval
// after it, however many frames came in between (drop-oldest drops some
// under load; a frame count would put the keyframe late).
//
// An aligned clock counts the multiples from the stream's time 0 instead
// of from its first frame: encoders that start on one stream at different
// times (personalised variants joining a live stream) then put their
// keyframes on the same frames, so a player can move between them.
type keyClock struct {
	every       int64 // the interval, in the encoder's time base
	start, next int64
	started     bool
	aligned     bool
}

func newKeyClock(d time.Duration, tb astiav.Rational) *keyClock {
	every := astiav.RescaleQ(d.Nanoseconds(), astiav.NewRational(1, int(time.Second)), tb)
	return &keyClock{every: max(every, 1)}
}

// due reports whether the frame at pts must be a keyframe.
func (k *keyClock) due(pts int64) bool {
	switch {
	case pts == astiav.NoPtsValue:
		return false
	case !k.started || pts < k.next-2*k.every:
		// The first frame, or timestamps that jumped back (a publisher that
		// reconnected): the clock starts again here.
		k.started, k.start, k.next = true, pts, pts+k.every
		if k.aligned {
			k.start = 0
			k.next = k.after(pts)
		}
		return true
	case pts < k.next:
		return false
	}
	k.next = k.after(pts)
	return true
}

// after is the first multiple of the interval (from start) past pts.
func (k *keyClock) after(pts int64) int64 {
	n := (pts - k.start) / k.every
	if pts-k.start < 0 && (pts-k.start)%k.every != 0 {
		n-- // floor, below start
	}
	return k.start + (n+1)*k.every
}

// keyInterval is the stage's keyframe interval by time: gop_duration if
// set, else LiveKeyframeInterval in a live run; 0: none (the encoder's
// own GOP, by frame count).
func keyInterval(in pipeline.Init) time.Duration {
	if in.Params.Has("gop_duration") {
		return in.Params.Duration("gop_duration")
	}
	if in.Live {
		return LiveKeyframeInterval
	}
	return 0
}

// checkParams refuses a negative gop_duration at validation.
func checkParams(p pipeline.Params, _ string) error {
	if d := p.Duration("gop_duration"); d < 0 {
		return fmt.Errorf("gop_duration %s: want a positive interval such as 2s (0s: keyframes by frame count only)", d)
	}
	return nil
}

// forcedIDR names the option that makes an encoder's forced keyframes IDR
// frames (where a new segment, or a new viewer, can start decoding), or "".
func forcedIDR(encoder string) string {
	switch {
	case encoder == "libx264", encoder == "libx264rgb", encoder == "libx265", strings.HasSuffix(encoder, "_nvenc"):
		return "forced-idr"
	case strings.HasSuffix(encoder, "_qsv"):
		return "forced_idr"
	}
	return ""
}
