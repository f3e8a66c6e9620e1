package agent

import (
	"context"
	"io"
	"log/slog"
)

// redactingHandler is the only way the agent logs: every message and every
// string, error or Stringer attribute passes through the current vault's
// redactor before the JSON handler sees it, so a log line cannot carry a
// vault value or an obtained token.
type redactingHandler struct {
	next slog.Handler
	r    func() *redactor
}

// NewLogHandler returns a JSON slog handler writing to w that redacts with
// the redactor r returns at each record.
func newLogHandler(w io.Writer, level slog.Level, r func() *redactor) slog.Handler {
	return &redactingHandler{next: slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level}), r: r}
}

func (h *redactingHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.next.Enabled(ctx, l)
}

func (h *redactingHandler) Handle(ctx context.Context, rec slog.Record) error {
	r := h.r()
	out := slog.NewRecord(rec.Time, rec.Level, r.String(rec.Message), rec.PC)
	rec.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(redactAttr(r, a))
		return true
	})
	return h.next.Handle(ctx, out)
}

func redactAttr(r *redactor, a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, r.String(v.String()))
	case slog.KindGroup:
		attrs := v.Group()
		out := make([]any, len(attrs))
		for i, x := range attrs {
			out[i] = redactAttr(r, x)
		}
		return slog.Group(a.Key, out...)
	case slog.KindAny:
		switch x := v.Any().(type) {
		case error:
			return slog.String(a.Key, r.String(x.Error()))
		case interface{ String() string }:
			return slog.String(a.Key, r.String(x.String()))
		}
		// Anything else is formatted here, then redacted: the agent logs
		// only strings, numbers and errors, but nothing escapes the scrub.
		return slog.String(a.Key, r.String(v.String()))
	}
	return slog.Attr{Key: a.Key, Value: v}
}

func (h *redactingHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	r := h.r()
	red := make([]slog.Attr, len(attrs))
	for i, a := range attrs {
		red[i] = redactAttr(r, a)
	}
	return &redactingHandler{next: h.next.WithAttrs(red), r: h.r}
}

func (h *redactingHandler) WithGroup(name string) slog.Handler {
	return &redactingHandler{next: h.next.WithGroup(name), r: h.r}
}
