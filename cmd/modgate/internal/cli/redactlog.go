package cli

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/modgate/modgate/sidecar/upstream"
)

// redactHandler hides the credentials of any URL in a log record (its
// message and its attributes, errors included) before h writes it: the
// data plane never logs an upstream's password, and this keeps a
// forgotten error message or a client's URL from doing so either.
type redactHandler struct{ h slog.Handler }

func (r redactHandler) Enabled(ctx context.Context, l slog.Level) bool { return r.h.Enabled(ctx, l) }

func (r redactHandler) Handle(ctx context.Context, rec slog.Record) error {
	if plain(rec) {
		return r.h.Handle(ctx, rec) // nothing to hide: no copy of the record
	}
	out := slog.NewRecord(rec.Time, rec.Level, redactString(rec.Message), rec.PC)
	rec.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(redactAttr(a))
		return true
	})
	return r.h.Handle(ctx, out)
}

func (r redactHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	red := make([]slog.Attr, len(attrs))
	for i, a := range attrs {
		red[i] = redactAttr(a)
	}
	return redactHandler{r.h.WithAttrs(red)}
}

func (r redactHandler) WithGroup(name string) slog.Handler { return redactHandler{r.h.WithGroup(name)} }

// plain reports whether redaction would leave rec as it is: its message
// and every attribute hold no text that redactString would change, and no
// attribute is one (a group, an error, a Stringer, a LogValuer) that
// redactAttr has to look into. Most records, the access log line's
// included, are plain, and are passed on without a copy.
func plain(rec slog.Record) bool {
	if mayHoldCredential(rec.Message) {
		return false
	}
	ok := true
	rec.Attrs(func(a slog.Attr) bool {
		switch a.Value.Kind() {
		case slog.KindString:
			ok = !mayHoldCredential(a.Value.String())
		case slog.KindInt64, slog.KindUint64, slog.KindFloat64, slog.KindBool, slog.KindDuration, slog.KindTime:
		default:
			ok = false
		}
		return ok
	})
	return ok
}

// mayHoldCredential reports whether s may hold a URL with user information
// or a credential written as a header: the strings redactString passes to
// upstream.RedactText.
func mayHoldCredential(s string) bool {
	return (strings.Contains(s, "@") && strings.Contains(s, "://")) || strings.Contains(s, "uthorization") ||
		strings.Contains(s, "UTHORIZATION") || strings.Contains(s, "Bearer") || strings.Contains(s, "Basic")
}

// redactString is upstream.RedactText, cheap for the strings (nearly all)
// that hold no URL with user information and no credential written as a
// header (an auth command's standard error, an upstream's error answer).
func redactString(s string) string {
	if !mayHoldCredential(s) {
		return s
	}
	return upstream.RedactText(s)
}

func redactAttr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, redactString(v.String()))
	case slog.KindGroup:
		group := v.Group()
		red := make([]slog.Attr, len(group))
		for i, g := range group {
			red[i] = redactAttr(g)
		}
		return slog.Attr{Key: a.Key, Value: slog.GroupValue(red...)}
	case slog.KindAny:
		switch x := v.Any().(type) {
		case error:
			if s := x.Error(); s != redactString(s) {
				return slog.String(a.Key, redactString(s))
			}
		case fmt.Stringer:
			if s := x.String(); s != redactString(s) {
				return slog.String(a.Key, redactString(s))
			}
		}
	}
	return slog.Attr{Key: a.Key, Value: v}
}
