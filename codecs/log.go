package codecs

import (
	"context"
	"log/slog"
	"strings"

	"github.com/asticode/go-astiav"
	"github.com/avflow/avflow/pipeline/secret"
)

// RouteLogs sends FFmpeg's own log lines to log as structured records,
// with the credentials of any URL in them hidden.
// FFmpeg messages above maxLevel (by FFmpeg's scale, e.g. astiav.LogLevelWarning)
// are dropped before formatting.
func RouteLogs(log *slog.Logger, maxLevel astiav.LogLevel) {
	astiav.SetLogLevel(maxLevel)
	astiav.SetLogCallback(func(c astiav.Classer, l astiav.LogLevel, _, msg string) {
		if l > maxLevel {
			return
		}
		msg = secret.Text(strings.TrimSpace(msg)) // FFmpeg names URLs, credentials and all
		if msg == "" {
			return
		}
		lvl := slog.LevelDebug
		switch {
		case l <= astiav.LogLevelError:
			lvl = slog.LevelError
		case l <= astiav.LogLevelWarning:
			lvl = slog.LevelWarn
		case l <= astiav.LogLevelInfo:
			lvl = slog.LevelInfo
		}
		attrs := []any{}
		if c != nil {
			if cl := c.Class(); cl != nil {
				attrs = append(attrs, "component", cl.Name())
			}
		}
		log.Log(context.Background(), lvl, "ffmpeg: "+msg, attrs...)
	})
}
