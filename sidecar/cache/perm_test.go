//go:build unix

package cache

import (
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestFoldersArePrivate: a cache's file names are module paths, private
// ones among them; no other user may list or read them.
func TestFoldersArePrivate(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	for _, fresh := range []bool{true, false} {
		dir := filepath.Join(t.TempDir(), "cache")
		if !fresh {
			// A folder made by hand (or a volume) that others can read.
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		c, err := Open(dir, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		put(t, c, "corp.example.test/secret/@v/v1.0.0.info", `{"Version":"v1.0.0"}`)
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				t.Fatal(err)
			}
			st, _ := d.Info()
			want := fs.FileMode(0o600)
			if d.IsDir() {
				want = 0o700
			}
			if st.Mode().Perm() != want {
				t.Errorf("fresh %v: %s is %v; want %v", fresh, p, st.Mode().Perm(), want)
			}
			return nil
		})
	}

	// A shared folder (sticky, like /tmp) is left as it is; what the
	// cache makes in it is private.
	shared := filepath.Join(t.TempDir(), "shared")
	if err := os.Mkdir(shared, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	os.Chmod(shared, 0o777|os.ModeSticky)
	c, err := Open(shared, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	put(t, c, "corp.example.test/secret/@v/v1.0.0.info", `{}`)
	if st, _ := os.Stat(shared); st.Mode().Perm() != 0o777 {
		t.Errorf("a sticky shared folder was changed to %v", st.Mode())
	}
	if st, _ := os.Stat(filepath.Join(shared, "data", "corp.example.test")); st.Mode().Perm() != 0o700 {
		t.Errorf("entry folder %v", st.Mode().Perm())
	}
}
