package secret

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
)

// Handler wraps next so that the message and every attribute of each
// record are redacted with [Text], whoever logged them.
func Handler(next slog.Handler) slog.Handler { return handler{next} }

// handler redacts the message and every attribute of the records it
// passes on, whoever logged them: the CLI, the runner, a stage, FFmpeg.
type handler struct{ next slog.Handler }

func (h handler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.next.Enabled(ctx, l)
}

func (h handler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, Text(r.Message), r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(attr(a))
		return true
	})
	return h.next.Handle(ctx, out)
}

func (h handler) WithAttrs(as []slog.Attr) slog.Handler {
	red := make([]slog.Attr, len(as))
	for i, a := range as {
		red[i] = attr(a)
	}
	return handler{h.next.WithAttrs(red)}
}

func (h handler) WithGroup(name string) slog.Handler {
	return handler{h.next.WithGroup(name)}
}

func attr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, Text(v.String()))
	case slog.KindGroup:
		g := v.Group()
		red := make([]any, len(g))
		for i, ga := range g {
			red[i] = attr(ga)
		}
		return slog.Group(a.Key, red...)
	case slog.KindAny:
		// Errors, URLs and anything else whose text holds a URL.
		if s := fmt.Sprint(v.Any()); strings.Contains(s, "://") {
			return slog.String(a.Key, Text(s))
		}
	}
	return slog.Attr{Key: a.Key, Value: v}
}
