// Package verify checks module artifacts against a checksum database, as
// the go command does before it trusts a download
// (cmd/go/internal/modfetch/fetch.go, checkModSum and checkSumDB).
//
// golang.org/x/mod/sumdb's Client does the looking up: it checks each
// signed tree head against the database's key, that every tree head it
// sees is consistent with the one it knew (Merkle proofs over tiles), and
// that the record is in the tree. The artifact's h1: hash
// (golang.org/x/mod/sumdb/dirhash) must then be the record's.
//
// The Client asks for what it needs through [Config.Remote] (modgate's own
// route to the database: its upstream chain and caches) and keeps what it
// verified in [Config.Store], so that the go command's lookups and tiles
// that follow are answered from there.
package verify

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/mod/module"
	"golang.org/x/mod/sumdb"
	"golang.org/x/mod/sumdb/dirhash"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// ErrUnverifiable wraps the reason an artifact could not be checked: the
// database could not be asked, or has no record of it. Such an artifact may
// be passed on (the go command decides for itself, with its own go.sum and
// GONOSUMDB) but is not to be kept.
var ErrUnverifiable = errors.New("cannot be verified against the checksum database")

// ErrMisbehaving wraps a database answer that contradicts what the
// database signed before (a fork of its log, a tile or record that is not
// in the signed tree): the database, or a mirror of it, is lying.
var ErrMisbehaving = errors.New("checksum database misbehaving")

// MismatchError is an artifact whose hash is not the one the checksum
// database holds for it.
type MismatchError struct {
	Module, Version string
	File            string // "go.mod" or "zip"
	Got, Want       string // h1: hashes; Want is empty when the record has none
}

func (e *MismatchError) Error() string {
	want := e.Want
	if want == "" {
		want = "no hash"
	}
	return fmt.Sprintf("checksum mismatch: %s@%s %s is %s, the checksum database has %s", e.Module, e.Version, e.File, e.Got, want)
}

// Remote reads path ("/lookup/<mod>@<ver>" or "/tile/...") from the
// database. A database that answers "not found" is an error that wraps
// [ErrNotFound].
type Remote func(ctx context.Context, path string) ([]byte, error)

// ErrNotFound is what a Remote wraps when the database has no such record
// or tile.
var ErrNotFound = errors.New("not found")

// Store keeps lookups and tiles once they are verified. Its names are the
// Client's: "<name>/lookup/<escaped mod>@<escaped ver>" and
// "<name>/tile/<H>/<L>/<N>[.p/<W>]". Get may return lookups from anywhere
// (the Client checks them again); a tile it returns is trusted, so it must
// return only tiles that Put was given.
type Store interface {
	Get(name string) ([]byte, error)
	Put(name string, data []byte)
}

// Config configures a Verifier.
type Config struct {
	// Key is the database's verifier key, as in GOSUMDB's "name+key" form
	// ("sum.example.test+1a2b3c4d+AQ...").
	Key string
	// Remote reads from the database. Required.
	Remote Remote
	// Store keeps verified lookups and tiles. If nil, they are kept in
	// memory, at most 32 MiB.
	Store Store
	// Tree keeps the latest tree head across restarts, so that a
	// database that rolls its log back is caught. If nil, it is kept in
	// memory.
	Tree TreeFile
	// Timeout bounds one lookup and the tiles it needs. If zero, 60 s.
	Timeout time.Duration
	// Logger receives security errors. If nil, they are discarded.
	Logger *slog.Logger
}

// TreeFile is where the latest signed tree head is kept.
type TreeFile interface {
	Read() ([]byte, error)
	Write(data []byte) error
}

// rotateEvery bounds the Client's in-memory caches: it keeps every
// record and tile it read for its lifetime (and every failure, which a
// long-running server must not keep), so it is replaced after this many
// lookups, or after one that failed. What it verified is in the Store.
const rotateEvery = 4096

// Verifier checks artifacts against one checksum database. Its methods
// are safe for concurrent use.
type Verifier struct {
	name      string
	key       string
	verifiers note.Verifiers
	remote    Remote
	store     Store
	timeout   time.Duration
	log       *slog.Logger

	treeMu   sync.Mutex
	tree     TreeFile
	treeMsg  []byte // the latest signed tree head, as the Client last wrote it
	treeRead bool

	client  atomic.Pointer[generation]
	lookups atomic.Int64 // made by the current generation

	// securityErrors counts what the Client reported as misbehaviour.
	securityErrors atomic.Int64
	// remoteErrs holds the failure of each lookup's remote read until the
	// lookup takes it: the Client reports it with %v, which loses what it
	// wraps (ErrNotFound, the route's attempts).
	remoteErrs sync.Map
}

// generation is one sumdb.Client and its ops.
type generation struct {
	c *sumdb.Client
	// hashes holds the hash each lookup c answered found (lookupKey to
	// string): asked again, as every request for a verified .mod or zip
	// asks, c would answer from its own cache, and this answers without
	// the goroutine that waits for c. No larger than c's caches.
	hashes sync.Map
}

// lookupKey is a module path and a version (ending in /go.mod for a
// go.mod's hash).
type lookupKey struct{ path, vers string }

// New returns a verifier for the database whose key is cfg.Key.
func New(cfg Config) (*Verifier, error) {
	vkey := strings.TrimSpace(cfg.Key)
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, fmt.Errorf("checksum database key %q: %v", vkey, err)
	}
	if cfg.Remote == nil {
		return nil, errors.New("verify: no Remote")
	}
	v := &Verifier{
		name:      verifier.Name(),
		key:       vkey,
		verifiers: note.VerifierList(verifier),
		remote:    cfg.Remote,
		store:     cfg.Store,
		timeout:   cfg.Timeout,
		log:       cfg.Logger,
		tree:      cfg.Tree,
	}
	if v.store == nil {
		v.store = newMemStore(32 << 20)
	}
	if v.tree == nil {
		v.tree = &memTree{}
	}
	if v.timeout <= 0 {
		v.timeout = 60 * time.Second
	}
	if v.log == nil {
		v.log = slog.New(slog.DiscardHandler)
	}
	v.client.Store(v.newGeneration())
	return v, nil
}

// Name is the database's name.
func (v *Verifier) Name() string { return v.name }

// SecurityErrors is how many times the database was caught misbehaving.
func (v *Verifier) SecurityErrors() int64 { return v.securityErrors.Load() }

func (v *Verifier) newGeneration() *generation {
	g := &generation{}
	g.c = sumdb.NewClient(&ops{v: v})
	return g
}

// lookup asks the Client for the go.sum lines of mod@vers (vers may end
// in /go.mod), replacing the Client after a failure or when it has done
// enough lookups.
func (v *Verifier) lookup(ctx context.Context, g *generation, path, vers string) ([]string, error) {
	type result struct {
		lines []string
		err   error
	}
	done := make(chan result, 1)
	go func() {
		lines, err := g.c.Lookup(path, vers)
		done <- result{lines, err}
	}()
	var res result
	select {
	case res = <-done:
	case <-ctx.Done():
		// The lookup goes on for whoever else waits for it (the Client
		// shares lookups); this caller stops waiting.
		return nil, fmt.Errorf("%w: %v", ErrUnverifiable, context.Cause(ctx))
	}
	if res.err != nil || v.lookups.Add(1) >= rotateEvery {
		if v.client.CompareAndSwap(g, v.newGeneration()) {
			v.lookups.Store(0)
		}
	}
	if res.err != nil {
		if name, err := v.lookupName(path, strings.TrimSuffix(vers, "/go.mod")); err == nil {
			if rerr, ok := v.remoteErrs.LoadAndDelete(strings.TrimPrefix(name, v.name)); ok {
				return nil, fmt.Errorf("%w: %w", ErrUnverifiable, rerr.(error))
			}
		}
		return nil, v.classify(res.err)
	}
	return res.lines, nil
}

// classify wraps a Client error as misbehaviour or as "cannot verify".
func (v *Verifier) classify(err error) error {
	if errors.Is(err, sumdb.ErrSecurity) || isProofFailure(err) {
		return fmt.Errorf("%w: %v", ErrMisbehaving, err)
	}
	return fmt.Errorf("%w: %v", ErrUnverifiable, err)
}

// isProofFailure reports whether err is the Client's word that data the
// database sent does not prove what it should: a record or tile that is
// not in the signed tree, a tree head that is not signed by the key.
func isProofFailure(err error) bool {
	msg := err.Error()
	for _, s := range []string{
		"cannot authenticate record data", // checkRecord
		"downloaded inconsistent tile",    // tlog's tile hash reader
		"reading tree note",               // a tree head the key did not sign
		"malformed record data",           // tlog.ParseRecord
	} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// hashFor returns the hash the database holds for mod@vers (vers may end
// in /go.mod), or "" when its record has none.
func (v *Verifier) hashFor(ctx context.Context, path, vers string) (string, error) {
	g := v.client.Load()
	if h, ok := g.hashes.Load(lookupKey{path, vers}); ok {
		return h.(string), nil
	}
	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	defer cancel()
	lines, err := v.lookup(ctx, g, path, vers)
	if err != nil {
		return "", err
	}
	// The lines are "<path> <vers> h1:<hash>" (sumdb.Client.Lookup).
	for _, line := range lines {
		if f := strings.Fields(line); len(f) == 3 && f[0] == path && f[1] == vers {
			g.hashes.Store(lookupKey{path, vers}, f[2])
			return f[2], nil
		}
	}
	return "", nil
}

// GoModHash is the go.sum hash of a go.mod file (cmd/go's
// modfetch.goModSum).
func GoModHash(data []byte) (string, error) {
	return dirhash.Hash1([]string{"go.mod"}, func(string) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	})
}

// CheckMod checks the go.mod file of mod@version.
func (v *Verifier) CheckMod(ctx context.Context, path, version string, data []byte) error {
	got, err := GoModHash(data)
	if err != nil {
		return err
	}
	return v.CheckHash(ctx, path, version+"/go.mod", got)
}

// CheckZip checks the module zip of mod@version in the file zipfile.
func (v *Verifier) CheckZip(ctx context.Context, path, version, zipfile string) error {
	got, err := dirhash.HashZip(zipfile, dirhash.Hash1)
	if err != nil {
		// The go command cannot hash it either: it is not a zip.
		return &MismatchError{Module: path, Version: version, File: "zip", Got: "unreadable (" + err.Error() + ")"}
	}
	return v.CheckHash(ctx, path, version, got)
}

// CheckHash checks hash h1 against the database's record for mod@vers
// (vers may end in /go.mod).
func (v *Verifier) CheckHash(ctx context.Context, path, vers, h1 string) error {
	want, err := v.hashFor(ctx, path, vers)
	if err != nil {
		return err
	}
	if want == h1 {
		return nil
	}
	file := "zip"
	version, isMod := strings.CutSuffix(vers, "/go.mod")
	if isMod {
		file = "go.mod"
	}
	if want == "" {
		// The Client found the record, but it has no line for this: the
		// go command calls that a mismatch too (checkSumDB).
		return &MismatchError{Module: path, Version: version, File: file, Got: h1}
	}
	return &MismatchError{Module: path, Version: version, File: file, Got: h1, Want: want}
}

// Lookup verifies the database's record of mod@version and returns the
// lookup answer as the database gave it (the record and a signed tree
// head), for the go command's own lookups.
func (v *Verifier) Lookup(ctx context.Context, path, version string) ([]byte, error) {
	if _, err := v.hashFor(ctx, path, version); err != nil {
		return nil, err
	}
	name, err := v.lookupName(path, version)
	if err != nil {
		return nil, err
	}
	data, err := v.store.Get(name)
	if err != nil {
		return nil, fmt.Errorf("%w: verified lookup not kept: %v", ErrUnverifiable, err)
	}
	return data, nil
}

func (v *Verifier) lookupName(path, version string) (string, error) {
	epath, err := module.EscapePath(path)
	if err != nil {
		return "", err
	}
	evers, err := module.EscapeVersion(version)
	if err != nil {
		return "", err
	}
	return v.name + "/lookup/" + epath + "@" + evers, nil
}

// latestTree is the latest tree head this verifier knows.
func (v *Verifier) latestTree() (tlog.Tree, error) {
	msg, err := v.readTree()
	if err != nil || len(msg) == 0 {
		return tlog.Tree{}, err
	}
	n, err := note.Open(msg, v.verifiers)
	if err != nil {
		return tlog.Tree{}, err
	}
	return tlog.ParseTree([]byte(n.Text))
}

// CheckLatest checks a signed tree head (the database's /latest): it must
// be signed by the database's key.
func (v *Verifier) CheckLatest(data []byte) error {
	n, err := note.Open(data, v.verifiers)
	if err != nil {
		return fmt.Errorf("%w: tree head: %v", ErrMisbehaving, err)
	}
	if _, err := tlog.ParseTree([]byte(n.Text)); err != nil {
		return fmt.Errorf("%w: tree head: %v", ErrMisbehaving, err)
	}
	return nil
}

// tileHeight is the height of the tiles the Client reads (its default).
const tileHeight = 8

// CheckTile checks a hash tile (path "tile/8/L/N[.p/W]", as the database
// serves it) against the latest tree head this verifier knows. A tile
// beyond that tree, of another height, or a data tile cannot be checked.
func (v *Verifier) CheckTile(ctx context.Context, path string, data []byte) error {
	t, err := tlog.ParseTilePath(strings.TrimPrefix(path, "/"))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnverifiable, err)
	}
	if t.L < 0 || t.H != tileHeight {
		return fmt.Errorf("%w: only hash tiles of height %d are checked", ErrUnverifiable, tileHeight)
	}
	if len(data) != t.W*tlog.HashSize {
		return fmt.Errorf("%w: tile %s has %d bytes, want %d", ErrMisbehaving, t.Path(), len(data), t.W*tlog.HashSize)
	}
	tree, err := v.latestTree()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnverifiable, err)
	}
	// The tile's last hash is at level L*H, index N<<H + W-1; it covers
	// records up to (N<<H + W) << (L*H).
	level := t.L * t.H
	last := t.N<<uint(t.H) + int64(t.W) - 1
	if (last+1)<<uint(level) > tree.N {
		return fmt.Errorf("%w: tile %s is beyond the tree of %d records this modgate knows", ErrUnverifiable, t.Path(), tree.N)
	}
	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	defer cancel()
	r := &tileReader{v: v, ctx: ctx, candidate: t, candidateData: data}
	if _, err := tlog.TileHashReader(tree, r).ReadHashes([]int64{tlog.StoredHashIndex(level, last)}); err != nil {
		if r.remoteErr != nil {
			return fmt.Errorf("%w: %v", ErrUnverifiable, r.remoteErr)
		}
		return fmt.Errorf("%w: tile %s: %v", ErrMisbehaving, t.Path(), err)
	}
	// The tree read the tile at its own width; what was asked for is a
	// prefix of it.
	verified := r.verified
	if verified == nil || !bytes.Equal(verified[:min(len(verified), len(data))], data) || len(verified) < len(data) {
		return fmt.Errorf("%w: tile %s is not the one in the signed tree", ErrMisbehaving, t.Path())
	}
	return nil
}

// tileReader reads the tiles CheckTile needs: the candidate as given,
// the others from the store or the database. Tiles that the tree proves
// are kept.
type tileReader struct {
	v             *Verifier
	ctx           context.Context
	candidate     tlog.Tile
	candidateData []byte

	verified  []byte // the candidate's tile at the tree's width, once proven
	remoteErr error
}

func (r *tileReader) Height() int { return tileHeight }

func (r *tileReader) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		if t == r.candidate {
			out[i] = r.candidateData
			continue
		}
		data, err := r.v.readTile(r.ctx, t)
		if err != nil {
			r.remoteErr = err
			return nil, err
		}
		out[i] = data
	}
	return out, nil
}

func (r *tileReader) SaveTiles(tiles []tlog.Tile, data [][]byte) {
	for i, t := range tiles {
		if t.L == r.candidate.L && t.N == r.candidate.N {
			r.verified = data[i]
		}
		r.v.store.Put(r.v.name+"/"+t.Path(), data[i])
	}
}

// readTile reads a tile as sumdb.Client does: the store, else the
// database (the tile asked for, else the full tile cut to its width).
func (v *Verifier) readTile(ctx context.Context, t tlog.Tile) ([]byte, error) {
	if data, err := v.store.Get(v.name + "/" + t.Path()); err == nil && len(data) == t.W*tlog.HashSize {
		return data, nil
	}
	full := t
	full.W = 1 << uint(t.H)
	if full != t {
		if data, err := v.store.Get(v.name + "/" + full.Path()); err == nil && len(data) == full.W*tlog.HashSize {
			return data[:t.W*tlog.HashSize], nil
		}
	}
	data, err := v.remote(ctx, "/"+t.Path())
	if err != nil && full != t {
		if fdata, ferr := v.remote(ctx, "/"+full.Path()); ferr == nil && len(fdata) == full.W*tlog.HashSize {
			return fdata[:t.W*tlog.HashSize], nil
		}
	}
	if err != nil {
		return nil, err
	}
	if len(data) != t.W*tlog.HashSize {
		return nil, fmt.Errorf("tile %s: %d bytes, want %d", t.Path(), len(data), t.W*tlog.HashSize)
	}
	return data, nil
}

// readTree returns the latest tree head, reading the TreeFile once.
func (v *Verifier) readTree() ([]byte, error) {
	v.treeMu.Lock()
	defer v.treeMu.Unlock()
	if !v.treeRead {
		msg, err := v.tree.Read()
		if err != nil {
			return nil, err
		}
		if len(msg) > 0 {
			if _, err := note.Open(msg, v.verifiers); err != nil {
				// Not this database's (the key changed): start afresh.
				v.log.Warn("checksum database tree head not signed by the configured key; starting from an empty tree", "err", err)
				msg = nil
			}
		}
		v.treeMsg, v.treeRead = msg, true
	}
	return v.treeMsg, nil
}

// ops is sumdb.ClientOps over the verifier's Remote, Store and TreeFile.
type ops struct{ v *Verifier }

func (o *ops) ReadRemote(path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), o.v.timeout)
	defer cancel()
	data, err := o.v.remote(ctx, path)
	if err != nil && strings.HasPrefix(path, "/lookup/") {
		o.v.remoteErrs.Store(path, err) // taken by the lookup that fails with it
	}
	return data, err
}

func (o *ops) ReadConfig(file string) ([]byte, error) {
	switch file {
	case "key":
		// The Client takes the key from here; it is the verifier's.
		return []byte(o.v.key), nil
	case o.v.name + "/latest":
		return o.v.readTree()
	}
	return nil, fmt.Errorf("unknown config %s", file)
}

func (o *ops) WriteConfig(file string, old, new []byte) error {
	if file != o.v.name+"/latest" {
		return fmt.Errorf("unknown config %s", file)
	}
	v := o.v
	if _, err := v.readTree(); err != nil {
		return err
	}
	v.treeMu.Lock()
	defer v.treeMu.Unlock()
	if !bytes.Equal(v.treeMsg, old) {
		return sumdb.ErrWriteConflict
	}
	v.treeMsg = bytes.Clone(new)
	if err := v.tree.Write(v.treeMsg); err != nil {
		// Kept in memory all the same: the file only guards restarts.
		v.log.Warn("checksum database tree head not saved", "err", err)
	}
	return nil
}

func (o *ops) ReadCache(file string) ([]byte, error) { return o.v.store.Get(file) }

func (o *ops) WriteCache(file string, data []byte) { o.v.store.Put(file, data) }

func (o *ops) Log(msg string) { o.v.log.Debug("checksum database", "msg", msg) }

func (o *ops) SecurityError(msg string) {
	o.v.securityErrors.Add(1)
	o.v.log.Error("checksum database misbehaving", "db", o.v.name, "report", msg)
}
