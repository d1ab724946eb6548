package cli

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestExplainStdin runs modgate explain as a process, the way it is used:
// go build 2>&1 | modgate explain.
func TestExplainStdin(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		in, want string
		code     int
	}{
		{[]string{"explain"}, "go: downloading fixture.test/dep01 v1.0.0\n", "found no go command error it recognises", 1},
		{[]string{"explain", "-"}, "go: fixture.test/dep01@v1.0.0: Get \"http://127.0.0.1:7070/fixture.test/dep01/@v/v1.0.0.info\": dial tcp 127.0.0.1:7070: connect: connection refused\n", "modgate run", 0},
	} {
		cmd, out := modgate(t, tc.args...)
		cmd.Stdin = strings.NewReader(tc.in)
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tc.code || !strings.Contains(out.String(), tc.want) {
			t.Errorf("modgate %s < %q: exit %d, want %d; printed:\n%s", strings.Join(tc.args, " "), tc.in, code, tc.code, out)
		}
	}
}

func TestExplainUsage(t *testing.T) {
	var stdout, stderr bytes.Buffer
	app := &App{Stdout: &stdout, Stderr: &stderr}
	if code := app.Run(context.Background(), []string{"explain", "a", "b"}); code != 2 {
		t.Errorf("two files: exit code %d, want 2", code)
	}
	if code := app.Run(context.Background(), []string{"explain", filepath.Join(t.TempDir(), "missing.txt")}); code != 1 {
		t.Errorf("missing file: exit code %d, want 1", code)
	}
	stdout.Reset()
	if code := app.Run(context.Background(), []string{"explain", "-h"}); code != 0 {
		t.Errorf("-h: exit code %d, want 0", code)
	}
}
