package render

import "math"

// Camera moves a crop window along one axis of the source so that it
// follows a subject, as a camera operator would: it holds still while the
// subject stays near the window's centre (the dead zone), then pans with
// bounded speed and acceleration, braking so that it stops on the subject
// rather than past it; a subject that has left the window altogether
// (a jump) is a cut: the window goes there at once. Without a subject it
// holds for Hold seconds, then eases back to the middle of the source.
// All lengths are in source pixels; the zero value is not usable (see
// NewCamera).
type Camera struct {
	// MaxSpeed and MaxAccel bound the pan, in window sizes per second and
	// per second squared.
	MaxSpeed, MaxAccel float64
	// DeadZone is the fraction of the window around its centre that the
	// subject may move in without moving the camera.
	DeadZone float64
	// Hold is how long, in seconds, the camera stays where it is after it
	// lost its subject, before it eases back to the middle.
	Hold float64

	window, size float64 // the window's and the source's length
	pos, vel     float64 // the window's centre and its speed
	lost         float64 // seconds without a subject
	moving       bool
	started      bool
	Cuts         int // jumps taken as cuts
}

// Camera defaults: a pan may cross the window in about half a second and
// reaches full speed in a quarter; a tenth of the window either side of
// its centre is the dead zone; one second of hold.
const (
	DefaultMaxSpeed = 2.0
	DefaultMaxAccel = 8.0
	DefaultDeadZone = 0.1
	DefaultHold     = 1.0
)

// NewCamera returns a camera moving a window of length window over a
// source of length size (window <= size), starting in the middle.
func NewCamera(window, size float64) *Camera {
	return &Camera{MaxSpeed: DefaultMaxSpeed, MaxAccel: DefaultMaxAccel, DeadZone: DefaultDeadZone, Hold: DefaultHold,
		window: window, size: size, pos: size / 2}
}

// Step advances the camera by dt seconds towards the subject at target
// (its centre; found false: no subject on this frame) and returns the
// window's start (its left or top edge), within the source.
func (c *Camera) Step(dt, target float64, found bool) float64 {
	if !c.started {
		c.started = true
		if found {
			c.pos = target
		}
		return c.edge()
	}
	goal := c.goal(dt, target, found)
	if math.Abs(goal-c.pos) > c.window/2 && found {
		c.pos, c.vel, c.moving = goal, 0, false // the subject jumped out of the window: cut
		c.Cuts++
		return c.edge()
	}
	c.pan(dt, goal)
	return c.edge()
}

// goal is where the camera's centre should head for.
func (c *Camera) goal(dt, target float64, found bool) float64 {
	if !found {
		c.lost += dt
		c.moving = c.moving && c.lost < c.Hold
		if c.lost < c.Hold {
			return c.pos
		}
		c.moving = true
		return c.size / 2
	}
	c.lost = 0
	off := math.Abs(target - c.pos)
	switch {
	case off > c.DeadZone*c.window:
		c.moving = true
	case off < c.DeadZone*c.window/4:
		c.moving = false // settled on the subject
	}
	if !c.moving {
		return c.pos
	}
	return target
}

// pan moves towards goal, at most MaxSpeed, changing speed by at most
// MaxAccel, and slowing in time to stop there.
func (c *Camera) pan(dt, goal float64) {
	if dt <= 0 {
		return
	}
	vmax, amax := c.MaxSpeed*c.window, c.MaxAccel*c.window
	d := goal - c.pos
	// The fastest speed from which braking at amax, one frame at a time,
	// stops at the goal: v = a·dt·(√(1/4 + 2|d|/(a·dt²)) − 1/2).
	brake := amax * dt * (math.Sqrt(0.25+2*math.Abs(d)/(amax*dt*dt)) - 0.5)
	want := math.Copysign(math.Min(vmax, brake), d)
	dv := math.Max(-amax*dt, math.Min(amax*dt, want-c.vel))
	c.vel += dv
	step := c.vel * dt
	if math.Abs(step) > math.Abs(d) && math.Signbit(step) == math.Signbit(d) {
		step, c.vel = d, 0 // arrived
	}
	c.pos += step
}

// edge clamps the centre so that the window stays in the source and
// returns its start.
func (c *Camera) edge() float64 {
	half := c.window / 2
	if c.pos < half {
		c.pos, c.vel = half, 0
	}
	if c.pos > c.size-half {
		c.pos, c.vel = c.size-half, 0
	}
	return c.pos - half
}
