package sidecar

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"os"

	"github.com/modgate/modgate/sidecar/cache"
	"github.com/modgate/modgate/sidecar/store"
	"github.com/modgate/modgate/sidecar/verify"
	"github.com/modgate/modgate/sidecar/wire"
)

// Verdicts of VerifyCache.
const (
	VerdictVerified = "verified" // the checksum database vouches for it
	VerdictRemoved  = "removed"  // it failed, and was removed
	VerdictKept     = "kept"     // it could not be verified now (the database could not be asked); left as it is
)

// VerifyReport counts what VerifyCache did.
type VerifyReport struct {
	Verified, Removed, Kept int
	// Skipped are entries the checksum database does not cover: lists,
	// @latest, .info, lookups' answers kept per origin, private modules.
	Skipped int
}

// VerifyCache re-checks entries of the local cache (keys, as cache.Walk
// finds them) and, with shared, every object of the shared store, as
// they are checked when they are read back from a shared store
// (checkStored): a public module's .mod and .zip, the database's tiles
// and lookups, against the checksum database. What fails is removed
// (deleted from the shared store); what cannot be verified now is kept.
// report, if not nil, is told each verdict on a checked entry.
func (s *Server) VerifyCache(ctx context.Context, keys iter.Seq[string], shared bool, report func(tier, key, verdict, detail string)) (VerifyReport, error) {
	var r VerifyReport
	if s.verifier == nil {
		_, why := s.Verification()
		return r, errors.New("cannot verify: " + why)
	}
	if report == nil {
		report = func(string, string, string, string) {}
	}
	if s.cache != nil && keys != nil {
		for key := range keys {
			if ctx.Err() != nil {
				return r, ctx.Err()
			}
			req, ok := s.cacheEntryRequest(key)
			if !ok {
				r.Skipped++
				continue
			}
			err := s.verifyEntry(ctx, req, key, func(w io.Writer) error {
				e, err := s.cache.Get(key)
				if err != nil {
					return err
				}
				defer e.Close()
				_, err = io.Copy(w, e.Body)
				return err
			})
			r.count("local", key, err, report, func() { s.cache.Remove(key) })
		}
	}
	if st := s.cacheCfg.Shared; shared && st != nil {
		err := st.Keys(ctx, func(key string) error {
			req, ok := s.cacheEntryRequest(key)
			if !ok {
				r.Skipped++
				return nil
			}
			err := s.verifyEntry(ctx, req, key, func(w io.Writer) error {
				_, err := st.Get(ctx, key, w)
				return err
			})
			if errors.Is(err, store.ErrNotExist) || errors.Is(err, store.ErrDamaged) {
				r.Removed += boolInt(errors.Is(err, store.ErrDamaged))
				return nil // gone meanwhile, or damaged: the store deleted it
			}
			r.count("shared", key, err, report, func() { st.Reject(key, err.Error()) })
			return nil
		})
		if err != nil {
			return r, fmt.Errorf("shared store: %w", err)
		}
	}
	return r, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// count records one verdict, removing the entry when it failed.
func (r *VerifyReport) count(tier, key string, err error, report func(tier, key, verdict, detail string), remove func()) {
	switch {
	case err == nil:
		r.Verified++
		report(tier, key, VerdictVerified, "")
	case errors.Is(err, verify.ErrUnverifiable) && !errors.Is(err, verify.ErrMisbehaving):
		r.Kept++
		report(tier, key, VerdictKept, err.Error())
	default:
		remove()
		r.Removed++
		report(tier, key, VerdictRemoved, err.Error())
	}
}

// verifyEntry checks one entry, whose body read copies out.
func (s *Server) verifyEntry(ctx context.Context, req Request, key string, read func(io.Writer) error) error {
	if req.Kind == wire.KindSumDBLookup {
		// The verifier reads the kept answer itself and proves it.
		_, err := s.verifier.Lookup(ctx, req.Module, req.Version)
		return err
	}
	f, err := os.CreateTemp("", "modgate-verify-*")
	if err != nil {
		return fmt.Errorf("%w: %v", verify.ErrUnverifiable, err)
	}
	defer os.Remove(f.Name())
	err = read(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if errors.Is(err, cache.ErrNotExist) || errors.Is(err, store.ErrNotExist) || errors.Is(err, store.ErrDamaged) {
			return err
		}
		return fmt.Errorf("%w: read: %v", verify.ErrUnverifiable, err)
	}
	return s.checkStored(ctx, req, true)(f.Name())
}

// cacheEntryRequest returns the request whose answer is kept under key,
// when it is one the checksum database covers: a public module's .mod or
// .zip at its canonical key, or the configured database's tile or lookup.
// Keys are the escaped paths of reverse mode, without their "/".
func (s *Server) cacheEntryRequest(key string) (Request, bool) {
	req, err := ClassifyReverse("/" + key)
	if err != nil || req.Query {
		return Request{}, false
	}
	switch req.Kind {
	case wire.KindMod, wire.KindZip:
		if _, private := s.policy().IsPrivate(req.Module); private && req.Module != toolchainModule {
			return Request{}, false
		}
		return req, true
	case wire.KindSumDBTile, wire.KindSumDBLookup:
		return req, req.SumDB == s.verifier.Name()
	}
	return Request{}, false
}
