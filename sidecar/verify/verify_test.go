package verify_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/verify"
)

const dbName = "sum.fixture.test"

// rig is a real checksum database on loopback and a verifier of it whose
// Remote can be pointed at a fault per kind of path.
type rig struct {
	fx    *modtest.Fixtures
	db    *modtest.SumDB
	url   string
	fault sync.Map // "lookup", "tile" -> fault name
	calls atomic.Int64
	down  atomic.Bool
}

func newRig(t *testing.T) *rig {
	fx := modtest.MustLoadFixtures(t, modtest.FixtureDir(t))
	db := modtest.NewSumDB(t, dbName, fx)
	db.Preload(t)
	return &rig{fx: fx, db: db, url: db.Serve(t)}
}

func (r *rig) remote(ctx context.Context, path string) ([]byte, error) {
	r.calls.Add(1)
	if r.down.Load() {
		return nil, errors.New("connection refused")
	}
	url := r.url + path
	for _, k := range []string{"lookup", "tile"} {
		if f, ok := r.fault.Load(k); ok && strings.HasPrefix(path, "/"+k) {
			url = r.url + "/f/" + f.(string) + path
		}
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusNotFound {
		return nil, fmt.Errorf("%s: %w", path, verify.ErrNotFound)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", path, resp.Status)
	}
	return body, err
}

func (r *rig) verifier(t *testing.T, store verify.Store) *verify.Verifier {
	v, err := verify.New(verify.Config{Key: r.db.VerifierKey, Remote: r.remote, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func (r *rig) module(t *testing.T, path string) modtest.Module {
	m, ok := r.fx.Lookup(path, "v1.0.0")
	if !ok {
		t.Fatalf("no fixture %s", path)
	}
	return m
}

func writeFile(t *testing.T, data []byte) string {
	p := filepath.Join(t.TempDir(), "m.zip")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheckModAndZip(t *testing.T) {
	r := newRig(t)
	v := r.verifier(t, nil)
	ctx := context.Background()
	m := r.module(t, "fixture.test/dep01")
	if err := v.CheckMod(ctx, m.Path, m.Version, m.Mod); err != nil {
		t.Fatalf("good go.mod: %v", err)
	}
	if err := v.CheckZip(ctx, m.Path, m.Version, writeFile(t, m.Zip)); err != nil {
		t.Fatalf("good zip: %v", err)
	}

	var mm *verify.MismatchError
	err := v.CheckMod(ctx, m.Path, m.Version, append(append([]byte(nil), m.Mod...), "// changed\n"...))
	if !errors.As(err, &mm) || mm.File != "go.mod" || mm.Want == "" || mm.Got == mm.Want {
		t.Fatalf("changed go.mod: %v, want a mismatch naming both hashes", err)
	}
	if !strings.Contains(err.Error(), mm.Got) || !strings.Contains(err.Error(), mm.Want) {
		t.Errorf("message %q does not name both hashes", err)
	}
	other := r.module(t, "fixture.test/dep02")
	if err := v.CheckZip(ctx, m.Path, m.Version, writeFile(t, other.Zip)); !errors.As(err, &mm) || mm.File != "zip" {
		t.Fatalf("another module's zip: %v, want a mismatch", err)
	}
	if err := v.CheckZip(ctx, m.Path, m.Version, writeFile(t, []byte("this is not a zip\n"))); !errors.As(err, &mm) {
		t.Fatalf("not a zip: %v, want a mismatch", err)
	}
	// An unknown module: the database says 404, nothing can be verified.
	if err := v.CheckMod(ctx, "fixture.test/nosuch", "v1.0.0", m.Mod); !errors.Is(err, verify.ErrUnverifiable) {
		t.Fatalf("unknown module: %v, want ErrUnverifiable", err)
	}
}

// TestHashAskedAgain: a hash the database was asked for once is answered
// again from the verifier's memory, without a lookup (its goroutine, its
// timeout), and still tells a wrong hash from the right one.
func TestHashAskedAgain(t *testing.T) {
	r := newRig(t)
	v := r.verifier(t, nil)
	ctx := context.Background()
	m := r.module(t, "fixture.test/dep05")
	h1, err := verify.GoModHash(m.Mod)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.CheckHash(ctx, m.Path, m.Version+"/go.mod", h1); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { v.CheckHash(ctx, m.Path, m.Version+"/go.mod", h1) }); n > 1 {
		t.Errorf("checking a hash asked for before allocates %v times", n)
	}
	var mm *verify.MismatchError
	if err := v.CheckHash(ctx, m.Path, m.Version+"/go.mod", "h1:wrong"); !errors.As(err, &mm) || mm.Want != h1 {
		t.Errorf("a wrong hash asked again: %v, want a mismatch naming %s", err, h1)
	}
}

func TestLookupsAreCachedAndReplayed(t *testing.T) {
	r := newRig(t)
	store := &mapStore{m: map[string][]byte{}}
	v := r.verifier(t, store)
	ctx := context.Background()
	m := r.module(t, "fixture.test/dep03")
	data, err := v.Lookup(ctx, m.Path, m.Version)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), m.Path+" "+m.Version+" h1:") {
		t.Fatalf("lookup answer %q lacks the record", data)
	}
	if store.get(dbName+"/lookup/"+m.Path+"@"+m.Version) == nil {
		t.Errorf("verified lookup not kept; store has %v", store.keys())
	}
	if len(store.keys()) < 2 {
		t.Errorf("tiles not kept: %v", store.keys())
	}
	// A second verifier over the same store (a restart, another replica)
	// asks the database nothing.
	r.down.Store(true)
	v2 := r.verifier(t, store)
	if err := v2.CheckMod(ctx, m.Path, m.Version, m.Mod); err != nil {
		t.Fatalf("from the store alone: %v", err)
	}
}

func TestDatabaseDownThenUp(t *testing.T) {
	r := newRig(t)
	v := r.verifier(t, nil)
	ctx := context.Background()
	m := r.module(t, "fixture.test/dep04")
	r.down.Store(true)
	if err := v.CheckMod(ctx, m.Path, m.Version, m.Mod); !errors.Is(err, verify.ErrUnverifiable) {
		t.Fatalf("database down: %v, want ErrUnverifiable", err)
	}
	// The Client keeps a failed lookup for its lifetime; the verifier
	// must not.
	r.down.Store(false)
	if err := v.CheckMod(ctx, m.Path, m.Version, m.Mod); err != nil {
		t.Fatalf("database back: %v", err)
	}
}

func TestTamperedDatabase(t *testing.T) {
	for _, kind := range []string{"lookup", "tile"} {
		t.Run(kind, func(t *testing.T) {
			r := newRig(t)
			r.fault.Store(kind, "tamper")
			v := r.verifier(t, nil)
			m := r.module(t, "fixture.test/dep05")
			err := v.CheckMod(context.Background(), m.Path, m.Version, m.Mod)
			if !errors.Is(err, verify.ErrMisbehaving) {
				t.Fatalf("tampered %s: %v, want ErrMisbehaving", kind, err)
			}
		})
	}
}

func TestCheckLatest(t *testing.T) {
	r := newRig(t)
	v := r.verifier(t, nil)
	good, err := r.remote(context.Background(), "/latest")
	if err != nil {
		t.Fatal(err)
	}
	if err := v.CheckLatest(good); err != nil {
		t.Fatalf("signed tree head: %v", err)
	}
	resp, err := http.Get(r.url + "/f/tamper/latest")
	if err != nil {
		t.Fatal(err)
	}
	bad, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(bad) == string(good) {
		t.Fatal("the tamper fault did not change the tree head")
	}
	if err := v.CheckLatest(bad); !errors.Is(err, verify.ErrMisbehaving) {
		t.Fatalf("tampered tree head: %v, want ErrMisbehaving", err)
	}
}

func TestCheckTile(t *testing.T) {
	r := newRig(t)
	store := &mapStore{m: map[string][]byte{}}
	v := r.verifier(t, store)
	ctx := context.Background()
	tree := treeOf(t, r)
	level0 := tlog.TileForIndex(8, tlog.StoredHashIndex(0, tree.N-1))
	path := "/" + level0.Path()
	// Before any lookup the verifier knows no tree: nothing to check against.
	good, err := r.remote(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.CheckTile(ctx, path, good); !errors.Is(err, verify.ErrUnverifiable) {
		t.Fatalf("tile before any tree head: %v, want ErrUnverifiable", err)
	}
	m := r.module(t, "fixture.test/dep06")
	if err := v.CheckMod(ctx, m.Path, m.Version, m.Mod); err != nil {
		t.Fatal(err)
	}
	if err := v.CheckTile(ctx, path, good); err != nil {
		t.Fatalf("good tile: %v", err)
	}
	bad := append([]byte(nil), good...)
	bad[len(bad)-1] ^= 0xff
	if err := v.CheckTile(ctx, path, bad); !errors.Is(err, verify.ErrMisbehaving) {
		t.Fatalf("tampered tile: %v, want ErrMisbehaving", err)
	}
	// A narrower partial tile of the same tree is a prefix of the proven one.
	if level0.W > 1 {
		narrow := level0
		narrow.W--
		if err := v.CheckTile(ctx, "/"+narrow.Path(), good[:narrow.W*tlog.HashSize]); err != nil {
			t.Fatalf("narrower tile: %v", err)
		}
	}
	wider := level0
	wider.W++
	if wider.W < 256 {
		if err := v.CheckTile(ctx, "/"+wider.Path(), append(good, make([]byte, 32)...)); !errors.Is(err, verify.ErrUnverifiable) {
			t.Fatalf("tile beyond the tree: %v, want ErrUnverifiable", err)
		}
	}
	if err := v.CheckTile(ctx, "/tile/8/data/000", good); !errors.Is(err, verify.ErrUnverifiable) {
		t.Fatalf("data tile: %v, want ErrUnverifiable", err)
	}
}

// treeOf reads the database's current tree.
func treeOf(t *testing.T, r *rig) tlog.Tree {
	data, err := r.remote(context.Background(), "/latest")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitN(string(data), "\n", 4)
	tree, err := tlog.ParseTree([]byte(strings.Join(lines[:3], "\n") + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

func TestTreeHeadSurvivesRestart(t *testing.T) {
	r := newRig(t)
	file := verify.FileTree(filepath.Join(t.TempDir(), "latest"))
	v, err := verify.New(verify.Config{Key: r.db.VerifierKey, Remote: r.remote, Tree: file})
	if err != nil {
		t.Fatal(err)
	}
	m := r.module(t, "fixture.test/dep07")
	if err := v.CheckMod(context.Background(), m.Path, m.Version, m.Mod); err != nil {
		t.Fatal(err)
	}
	saved, err := file.Read()
	if err != nil || !strings.Contains(string(saved), "go.sum database tree") {
		t.Fatalf("tree head not saved: %q, %v", saved, err)
	}
}

type mapStore struct {
	mu sync.Mutex
	m  map[string][]byte
}

func (s *mapStore) Get(name string) ([]byte, error) {
	if d := s.get(name); d != nil {
		return d, nil
	}
	return nil, os.ErrNotExist
}

func (s *mapStore) get(name string) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[name]
}

func (s *mapStore) Put(name string, data []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[name] = data
}

func (s *mapStore) keys() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ks []string
	for k := range s.m {
		ks = append(ks, k)
	}
	return ks
}

// TestNotFoundIsKept: a database that has no record says so, and the
// caller can tell (a lookup answered 404, not a failure).
func TestNotFoundIsKept(t *testing.T) {
	r := newRig(t)
	v := r.verifier(t, nil)
	m := r.module(t, "fixture.test/dep01")
	err := v.CheckMod(context.Background(), "fixture.test/nosuch", "v1.0.0", m.Mod)
	if !errors.Is(err, verify.ErrUnverifiable) || !errors.Is(err, verify.ErrNotFound) {
		t.Fatalf("unknown module: %v, want ErrUnverifiable wrapping ErrNotFound", err)
	}
}
