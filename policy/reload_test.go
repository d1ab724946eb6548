package policy

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	denyEvil   = "rules: [{deny: \"github.com/evil/*\", reason: v1}]\n"
	denyOther  = "rules: [{deny: \"github.com/other/*\", reason: v2}]\n"
	badPolicy  = "rules:\n  - deny: \"github.com/evil/*\"\n  - deny: x\n    versions: \"<1.4.2\"\n"
	badMessage = ":4: rules[2].versions: invalid constraint \"<1.4.2\": version must start with v"
)

// replaceFile writes content the way editors and config tools do: to a
// temporary file, renamed over the old one.
func replaceFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// reasonFor returns the reason the store's current policy gives for
// denying github.com/evil/x, or "" if it allows it.
func reasonFor(s *Store, module string) string {
	return s.Load().Decide(Request{Module: module}).Reason
}

func newTestStore(t *testing.T, content string) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "policy.yaml")
	replaceFile(t, path, content)
	s, err := NewStore(path)
	if err != nil {
		t.Fatal(err)
	}
	return s, path
}

func TestStoreReload(t *testing.T) {
	s, path := newTestStore(t, denyEvil)
	old := s.Load()
	if reasonFor(s, "github.com/evil/x") != "v1" {
		t.Fatal("initial policy not loaded")
	}

	replaceFile(t, path, badPolicy)
	err := s.Reload()
	if err == nil || err.Error() != path+badMessage {
		t.Errorf("Reload(bad) = %v, want %q", err, path+badMessage)
	}
	if s.Load() != old {
		t.Error("a bad file replaced the policy")
	}
	if n := s.ReloadFailures(); n != 1 {
		t.Errorf("ReloadFailures = %d, want 1", n)
	}

	replaceFile(t, path, denyOther)
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if reasonFor(s, "github.com/other/x") != "v2" || reasonFor(s, "github.com/evil/x") != "" {
		t.Error("good file not loaded")
	}

	os.Remove(path)
	if err := s.Reload(); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Reload(missing) = %v", err)
	}
	if reasonFor(s, "github.com/other/x") != "v2" || s.ReloadFailures() != 2 {
		t.Error("a missing file changed the policy or was not counted")
	}
}

func TestNewStore(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	replaceFile(t, bad, badPolicy)
	if _, err := NewStore(bad); err == nil || !strings.Contains(err.Error(), bad+":4:") {
		t.Errorf("NewStore(bad) = %v", err)
	}
	if _, err := NewStore(filepath.Join(dir, "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("NewStore(missing) = %v", err)
	}

	s, err := NewStore("")
	if err != nil {
		t.Fatal(err)
	}
	if d := s.Load().Decide(Request{Module: "x"}); !d.Allow || s.Path() != "" {
		t.Errorf("store without a file: %+v", d)
	}
	if err := s.Reload(); err != nil {
		t.Error(err)
	}
	if err := s.Watch(context.Background(), nil); err != nil {
		t.Error(err)
	}
	var zero Store
	if zero.Load() == nil {
		t.Error("zero Store has no policy")
	}
}

// watching runs s.Watch until the test ends and returns the results it
// reports. It returns once the watches are in place.
func watching(t *testing.T, s *Store) <-chan error {
	t.Helper()
	s.Debounce = 10 * time.Millisecond
	ready := make(chan struct{})
	s.testHookWatching = func() { close(ready) }
	ctx, cancel := context.WithCancel(context.Background())
	results := make(chan error)
	done := make(chan error, 1)
	go func() {
		done <- s.Watch(ctx, func(err error) {
			select {
			case results <- err:
			case <-ctx.Done():
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch = %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Watch returned early: %v", err)
	}
	return results
}

// await returns the next result that Watch reports that satisfies ok,
// failing the test if none does in time.
func await(t *testing.T, results <-chan error, what string, ok func(error) bool) error {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case err := <-results:
			if ok(err) {
				return err
			}
			t.Logf("waiting for %s; ignoring %v", what, err)
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func isNil(err error) bool { return err == nil }

func TestWatchRenameReplace(t *testing.T) {
	s, path := newTestStore(t, denyEvil)
	results := watching(t, s)

	replaceFile(t, path, denyOther)
	await(t, results, "reload", isNil)
	if reasonFor(s, "github.com/other/x") != "v2" {
		t.Fatal("policy not replaced")
	}

	// Written in place, as "echo >" does: there may be a moment when the file
	// is empty, which reports an error; the last word must be success.
	if err := os.WriteFile(path, []byte(denyEvil), 0o644); err != nil {
		t.Fatal(err)
	}
	await(t, results, "in-place reload", func(err error) bool { return err == nil && reasonFor(s, "github.com/evil/x") == "v1" })
}

func TestWatchInvalidKeepsOld(t *testing.T) {
	s, path := newTestStore(t, denyEvil)
	results := watching(t, s)
	old := s.Load()

	replaceFile(t, path, badPolicy)
	err := await(t, results, "error", func(err error) bool { return err != nil })
	if err.Error() != path+badMessage {
		t.Errorf("Watch reported %v, want %q", err, path+badMessage)
	}
	if s.Load() != old || s.ReloadFailures() != 1 {
		t.Errorf("bad file: policy replaced or failure not counted (%d)", s.ReloadFailures())
	}

	// Deleted, then back.
	os.Remove(path)
	await(t, results, "missing file", func(err error) bool { return errors.Is(err, os.ErrNotExist) })
	if s.Load() != old {
		t.Error("missing file replaced the policy")
	}
	replaceFile(t, path, denyOther)
	await(t, results, "reload", isNil)
	if reasonFor(s, "github.com/other/x") != "v2" {
		t.Error("policy not replaced")
	}
}

// TestWatchConfigMap swaps the file the way the kubelet updates a
// ConfigMap volume: the file is a symlink through ..data, and an update
// points ..data at a new directory by renaming a new symlink over it.
func TestWatchConfigMap(t *testing.T) {
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	version := func(name, content string) {
		must(os.Mkdir(filepath.Join(dir, name), 0o755))
		must(os.WriteFile(filepath.Join(dir, name, "policy.yaml"), []byte(content), 0o644))
	}
	version("..2025_01_01_00_00_00.1", denyEvil)
	must(os.Symlink("..2025_01_01_00_00_00.1", filepath.Join(dir, "..data")))
	path := filepath.Join(dir, "policy.yaml")
	must(os.Symlink(filepath.Join("..data", "policy.yaml"), path))
	s, err := NewStore(path)
	must(err)
	results := watching(t, s)

	version("..2025_01_01_00_00_00.2", denyOther)
	must(os.Symlink("..2025_01_01_00_00_00.2", filepath.Join(dir, "..data_tmp")))
	must(os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
	must(os.RemoveAll(filepath.Join(dir, "..2025_01_01_00_00_00.1")))

	await(t, results, "reload", isNil)
	if reasonFor(s, "github.com/other/x") != "v2" {
		t.Fatal("policy not replaced")
	}
}

// TestWatchSymlinkTarget edits the file a symlink points to, in another
// directory.
func TestWatchSymlinkTarget(t *testing.T) {
	target := filepath.Join(t.TempDir(), "real.yaml")
	replaceFile(t, target, denyEvil)
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	s, err := NewStore(path)
	if err != nil {
		t.Fatal(err)
	}
	results := watching(t, s)

	replaceFile(t, target, denyOther)
	await(t, results, "reload", isNil)
	if reasonFor(s, "github.com/other/x") != "v2" {
		t.Fatal("policy not replaced")
	}
}

func TestWatchMissingDirectory(t *testing.T) {
	s, path := newTestStore(t, denyEvil)
	if err := os.RemoveAll(filepath.Dir(path)); err != nil {
		t.Fatal(err)
	}
	if err := s.Watch(context.Background(), nil); err == nil {
		t.Error("Watch of a missing directory returned nil")
	}
}

// TestStoreConcurrentLoad reloads while readers decide; run with -race.
func TestStoreConcurrentLoad(t *testing.T) {
	s, path := newTestStore(t, denyEvil)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				p := s.Load() // once per request, as Load's comment asks
				r := p.Decide(Request{Module: "github.com/evil/x"}).Reason + p.Decide(Request{Module: "github.com/other/x"}).Reason
				if r != "v1" && r != "v2" {
					t.Errorf("a reader saw neither policy: %q", r)
					return
				}
			}
		})
	}
	for i := range 50 {
		replaceFile(t, path, []string{denyEvil, denyOther}[i%2])
		if err := s.Reload(); err != nil {
			t.Error(err)
		}
	}
	cancel()
	wg.Wait()
}
