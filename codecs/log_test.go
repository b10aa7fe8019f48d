package codecs

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/asticode/go-astiav"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// FFmpeg's own lines name URLs with their credentials; routed into avflow's
// log they keep the host and lose the secrets.
func TestRouteLogsHidesCredentials(t *testing.T) {
	buf := &lockedBuffer{}
	RouteLogs(slog.New(slog.NewTextHandler(buf, nil)), astiav.LogLevelWarning)
	defer RouteLogs(slog.Default(), astiav.LogLevelWarning)
	astiav.Log(nil, astiav.LogLevelError, "%s", "Failed to connect to rtmp://alice:s3cretpw@127.0.0.1:1935/live/streamkey42\n")
	got := buf.String()
	if !strings.Contains(got, "127.0.0.1:1935") {
		t.Fatalf("the routed line lost the host: %q", got)
	}
	for _, s := range []string{"s3cretpw", "streamkey42"} {
		if strings.Contains(got, s) {
			t.Fatalf("the routed line holds %q: %q", s, got)
		}
	}
}
