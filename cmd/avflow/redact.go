package main

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"strings"

	"github.com/avflow/avflow/pipeline"
)

// urlInText finds the URLs in free text (log messages, errors, FFmpeg's own
// lines such as "Connection to srt://host?passphrase=... failed").
var urlInText = regexp.MustCompile(`[A-Za-z][A-Za-z0-9+.-]*://[^\s"'<>]+`)

// redactText hides the credentials of every URL in s (pipeline.RedactURL
// on each one): nothing the CLI prints or logs shows a password, a token,
// an SRT passphrase or an RTMP stream key.
func redactText(s string) string {
	if !strings.Contains(s, "://") {
		return s
	}
	return urlInText.ReplaceAllStringFunc(s, func(u string) string {
		// Punctuation after a URL ("failed: rtmp://h/app/key: refused") is the text's.
		url := strings.TrimRight(u, ".,:;)]}!?")
		return pipeline.RedactURL(url) + u[len(url):]
	})
}

// redactHandler redacts the message and every attribute of the records it
// passes on, whoever logged them: the CLI, the runner, a stage, FFmpeg.
type redactHandler struct{ next slog.Handler }

func (h redactHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.next.Enabled(ctx, l)
}

func (h redactHandler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, redactText(r.Message), r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(redactAttr(a))
		return true
	})
	return h.next.Handle(ctx, out)
}

func (h redactHandler) WithAttrs(as []slog.Attr) slog.Handler {
	red := make([]slog.Attr, len(as))
	for i, a := range as {
		red[i] = redactAttr(a)
	}
	return redactHandler{h.next.WithAttrs(red)}
}

func (h redactHandler) WithGroup(name string) slog.Handler {
	return redactHandler{h.next.WithGroup(name)}
}

func redactAttr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, redactText(v.String()))
	case slog.KindGroup:
		g := v.Group()
		red := make([]any, len(g))
		for i, ga := range g {
			red[i] = redactAttr(ga)
		}
		return slog.Group(a.Key, red...)
	case slog.KindAny:
		// Errors, URLs and anything else whose text holds a URL.
		if s := fmt.Sprint(v.Any()); strings.Contains(s, "://") {
			return slog.String(a.Key, redactText(s))
		}
	}
	return slog.Attr{Key: a.Key, Value: v}
}
