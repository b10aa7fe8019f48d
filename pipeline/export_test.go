package pipeline

import "time"

// SetSlowConsumerAfter sets how long a producer waits before it warns of a
// slow consumer, until the returned restore is called.
func SetSlowConsumerAfter(d time.Duration) (restore func()) {
	old := slowConsumerAfter
	slowConsumerAfter = d
	return func() { slowConsumerAfter = old }
}
