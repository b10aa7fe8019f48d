package render

import (
	"fmt"
	"math"
	"time"

	"github.com/avflow/avflow/pipeline/stage"
)

// The look-ahead: each frame is held until the frames after it span
// look_ahead, so the window's aim on a frame is the subject's mean
// position from look_ahead before it to look_ahead after it (the same
// number of frames either side). For a subject moving steadily that
// mean is where it is (no lag, no lead);
// the window starts moving as the subject starts, and slows as it is
// about to stop, rather than after; the detector's jitter averages out.
// A jump (a cut) is never anticipated: the mean stops at the first jump
// either way, so the window jumps on the frame the subject does.

// Look-ahead bounds: the default holds every frame 0.3 s, which a live
// viewer (HLS segments of seconds) does not notice; at most 2 s.
const (
	DefaultLookAhead = 300 * time.Millisecond
	MaxLookAhead     = 2 * time.Second
)

// CheckLookAhead says why d cannot be a look-ahead (nil when it can):
// render's and the personalise stage's look_ahead param.
func CheckLookAhead(d time.Duration) error {
	if d < 0 || d > MaxLookAhead {
		return fmt.Errorf("look_ahead must be in [0, %s], got %s", MaxLookAhead, d)
	}
	return nil
}

// maxRate is the frame rate the look-ahead's bound on frames held
// assumes: frames without a duration would otherwise be held forever;
// with one, at most the look-ahead's length at 60 fps is held.
const maxRate = 60

// maxHeld is the most frames held for a look-ahead of lookAhead seconds.
func maxHeld(lookAhead float64) int { return int(math.Ceil(lookAhead * maxRate)) }

// aim is where a frame's subject is, in source pixels (found: there is
// one).
type aim struct {
	x, y  float64
	found bool
}

// point is one frame of the subject's path: its duration and its aim.
type point struct {
	dt float64
	a  aim
}

type heldFrame struct {
	msg *stage.Msg
	point
}

// path is the subject's path around the frame rendered next: the frames
// held (the oldest first) and the points of the frames rendered within
// the look-ahead before it (the newest last).
type path struct {
	ahead  []heldFrame
	behind []point
}

func (p *path) add(m *stage.Msg, dt float64, a aim) {
	p.ahead = append(p.ahead, heldFrame{msg: m, point: point{dt: dt, a: a}})
}

func (p *path) held() int { return len(p.ahead) }

// due says whether the oldest frame held has its look-ahead: the frames
// after it last lookAhead seconds (or there are maxHeld of them).
func (p *path) due(lookAhead float64) bool {
	if len(p.ahead) == 0 {
		return false
	}
	if len(p.ahead)-1 >= maxHeld(lookAhead) {
		return true
	}
	span := 0.0
	for _, h := range p.ahead[1:] {
		span += h.dt
	}
	return span >= lookAhead
}

// next takes the oldest frame held and returns it with its duration and
// its aim: the subject's mean position around it (see mean). A move of
// more than jumpX or jumpY between two frames with a subject is a jump.
func (p *path) next(jumpX, jumpY, lookAhead float64) (*stage.Msg, float64, aim) {
	cur := p.ahead[0]
	a := p.mean(cur.a, jumpX, jumpY)
	p.ahead[0] = heldFrame{}
	p.ahead = p.ahead[1:]
	p.behind = append(p.behind, cur.point)
	p.trim(lookAhead)
	return cur.msg, cur.dt, a
}

// mean is the mean position of the subject on the current frame (cur)
// and on as many frames with a subject either side of it, out from it up
// to the first jump either way: the window is kept the same either side,
// so a subject moving steadily is aimed where it is even when a jump (or
// the stream's end) is near on one side. Without a subject on the
// current frame there is none.
func (p *path) mean(cur aim, jumpX, jumpY float64) aim {
	if !cur.found {
		return cur
	}
	walk := func(count int, at func(int) aim) []aim {
		var run []aim
		prev := cur
		for i := range count {
			a := at(i)
			if !a.found {
				continue
			}
			if math.Abs(a.x-prev.x) > jumpX || math.Abs(a.y-prev.y) > jumpY {
				break
			}
			run, prev = append(run, a), a
		}
		return run
	}
	after := walk(len(p.ahead)-1, func(i int) aim { return p.ahead[i+1].a })
	before := walk(len(p.behind), func(i int) aim { return p.behind[len(p.behind)-1-i].a })
	k := min(len(after), len(before))
	sx, sy := cur.x, cur.y
	for _, a := range append(after[:k], before[:k]...) {
		sx, sy = sx+a.x, sy+a.y
	}
	n := float64(2*k + 1)
	return aim{x: sx / n, y: sy / n, found: true}
}

// trim keeps the points of the frames rendered within lookAhead.
func (p *path) trim(lookAhead float64) {
	span, i := 0.0, len(p.behind)
	for i > 0 && len(p.behind)-i < maxHeld(lookAhead) && span+p.behind[i-1].dt <= lookAhead {
		span += p.behind[i-1].dt
		i--
	}
	p.behind = append(p.behind[:0], p.behind[i:]...)
}

// release frees the frames still held.
func (p *path) release() {
	for _, h := range p.ahead {
		h.msg.Release()
	}
	p.ahead = nil
}
