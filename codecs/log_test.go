package codecs

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/asticode/go-astiav"

	"github.com/avflow/avflow/pipeline/e2e"
)

// FFmpeg's own lines name URLs with their credentials; routed into avflow's
// log they keep the host and lose the secrets.
func TestRouteLogsHidesCredentials(t *testing.T) {
	buf := &e2e.Buffer{}
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
