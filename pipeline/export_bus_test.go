package pipeline

import "time"

// SetMaxNATSDown sets how long a lost connection to an external server
// may stay lost before the run fails, until restore is called.
func SetMaxNATSDown(d time.Duration) (restore func()) {
	old := maxNATSDown
	maxNATSDown = d
	return func() { maxNATSDown = old }
}
