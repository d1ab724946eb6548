package modtest

import (
	"fmt"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// NewGitOrigin returns the handler of a module's VCS host, as
// GOPROXY=direct reaches it: ?go-get=1 discovery naming
// https://<host>/<repo>.git, and git's smart HTTP (git http-backend) for
// one repository holding files (name to content) tagged v1.0.0. mod is
// "<host>/<repo>". The test is skipped when git is not installed.
func NewGitOrigin(t testing.TB, mod string, files map[string]string) http.Handler {
	t.Helper()
	gitBin, err := exec.LookPath("git")
	if err != nil {
		t.Skip("no git")
	}
	host, repo, ok := strings.Cut(mod, "/")
	if !ok || strings.Contains(repo, "/") {
		t.Fatalf("modtest: git module %q: want host/repo", mod)
	}
	root := t.TempDir()
	work := filepath.Join(root, "work")
	if err := os.MkdirAll(work, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(work, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	env := []string{"HOME=" + root, "GIT_CONFIG_NOSYSTEM=1", "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.test",
		"GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.test", "PATH=" + os.Getenv("PATH")}
	for _, args := range [][]string{
		{"init", "-q", "-b", "main", work},
		{"-C", work, "add", "."},
		{"-C", work, "commit", "-q", "-m", "v1"},
		{"-C", work, "tag", "v1.0.0"},
		{"clone", "-q", "--bare", work, filepath.Join(root, "repos", repo+".git")},
	} {
		cmd := exec.Command(gitBin, args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("modtest: git %v: %v\n%s", args, err, out)
		}
	}
	backend := &cgi.Handler{Path: gitBin, Args: []string{"http-backend"}, Dir: root,
		Env: []string{"GIT_PROJECT_ROOT=" + filepath.Join(root, "repos"), "GIT_HTTP_EXPORT_ALL=1"}}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("go-get") == "1" {
			fmt.Fprintf(w, `<html><head><meta name="go-import" content="%s git https://%s/%s.git"></head></html>`, mod, host, repo)
			return
		}
		backend.ServeHTTP(w, r)
	})
}
