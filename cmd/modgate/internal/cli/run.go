package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"golang.org/x/term"

	"github.com/modgate/modgate/sidecar"
)

func (a *App) run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("modgate run", flag.ContinueOnError)
	fs.SetOutput(a.Stderr)
	var f runFlags
	f.register(fs)
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(a.Stderr, "modgate run: unexpected argument %q\n", fs.Arg(0))
		return errUsage
	}
	l := loader{getenv: a.Getenv, goenv: a.GoEnv}
	cfg, sc, err := l.load(fs, &f)
	if err != nil {
		return fmt.Errorf("config:\n%w", err)
	}
	sc.Logger = newLogger(a.Stderr, cfg.Log)
	sc.Version = Version()
	srv, err := sidecar.New(sc)
	if err != nil {
		return err
	}
	return srv.Run(ctx)
}

// newLogger writes text to a terminal and JSON lines anywhere else (a
// container's log collector).
func newLogger(w io.Writer, c LogConfig) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(c.Level)) // validated already
	opts := &slog.HandlerOptions{Level: level}
	format := c.Format
	if format == "auto" {
		format = "json"
		if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			format = "text"
		}
	}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
