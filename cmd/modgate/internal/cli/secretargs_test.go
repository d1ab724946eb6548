package cli

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// TestWarnSecretArgs: a password or key on the command line is warned
// about, naming the flag and never the secret; a command line without
// one is not.
func TestWarnSecretArgs(t *testing.T) {
	args := []string{"--upstream", "https://ci:pw-S3CRET@mods.example.test", "--fleet-redis=redis://:redis-S3CRET@redis.example.test:6379/0",
		"--cache-shared", "s3://b?endpoint=http%3A%2F%2Fk%3As3-S3CRET%40s3.example.test&region=r", "--listen", "127.0.0.1:7070"}
	var buf bytes.Buffer
	warnSecretArgs(slog.New(slog.NewTextHandler(&buf, nil)), args)
	out := buf.String()
	for _, f := range []string{"--upstream", "--fleet-redis", "--cache-shared"} {
		if !strings.Contains(out, f) {
			t.Errorf("the warning does not name %s: %s", f, out)
		}
	}
	if strings.Contains(out, "S3CRET") || strings.Contains(out, "--listen") || !strings.Contains(out, "level=WARN") {
		t.Errorf("warning: %s", out)
	}
	buf.Reset()
	warnSecretArgs(slog.New(slog.NewTextHandler(&buf, nil)), []string{"--upstream", "https://mods.example.test", "--listen", "127.0.0.1:7070"})
	if buf.Len() != 0 {
		t.Errorf("a warning without a secret: %s", buf.String())
	}
}
