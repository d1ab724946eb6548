package store_test

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/modgate/modgate/sidecar/store"
)

// TestPrivateFileStoreIsOwnerOnly: a file:// store of private modules
// makes its folders 0700 and its files 0600, whatever the umask: their
// names are private module paths. (It made them 0755 and 0644.)
func TestPrivateFileStoreIsOwnerOnly(t *testing.T) {
	old := syscall.Umask(0o002)
	defer syscall.Umask(old)
	dir := t.TempDir()
	s, err := store.Open(context.Background(), "file://"+dir, store.Options{Private: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	body := []byte("private zip")
	if err := s.Put(context.Background(), "corp.example.test/secret/m/@v/v1.0.0.zip", bytes.NewReader(body), object(body)); err != nil {
		t.Fatal(err)
	}
	var files int
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		info, _ := d.Info()
		switch {
		case d.IsDir() && info.Mode().Perm() != 0o700:
			t.Errorf("folder %s is %v; want 0700", p, info.Mode().Perm())
		case !d.IsDir() && !strings.HasSuffix(p, ".attrs") && info.Mode().Perm() != 0o600:
			t.Errorf("file %s is %v; want 0600", p, info.Mode().Perm())
		case !d.IsDir():
			files++
		}
		return nil
	})
	if files == 0 {
		t.Fatal("no file stored")
	}
	if entries, _ := os.ReadDir(os.TempDir()); len(entries) > 0 {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), "v1.0.0.zip.") {
				t.Errorf("a temporary file of the private store is in %s: %s", os.TempDir(), e.Name())
			}
		}
	}
	// The public store is left to the umask.
	pub := t.TempDir()
	ps, err := store.Open(context.Background(), "file://"+pub, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	if err := ps.Put(context.Background(), "example.test/m/@v/v1.0.0.zip", bytes.NewReader(body), object(body)); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(pub, "example.test")); err != nil || st.Mode().Perm() != 0o775 {
		t.Errorf("public store folder: %v %v; want the umask's 0775", st.Mode().Perm(), err)
	}
}
