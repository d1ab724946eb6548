package fleet

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Whoever can write to the fleet's Redis must not be able to steer the
// replicas: open an upstream's breaker everywhere, wake or stall waiters,
// or confirm a guessed private module@version from the keys. So every
// message and value a replica acts on is signed with an HMAC under the
// fleet's shared secret (fleet.secret_file), over its kind, the fleet's
// key prefix, its time and its content; what does not verify is dropped
// and counted. Artifact keys are stored as an HMAC of the key, not a bare
// hash that a guess could be checked against.

// MinSecret is the shortest fleet secret Open takes, in bytes.
const MinSecret = 16

// Freshness of signed news: published news older than newsMaxAge is
// stale (a replay), and news from further than clockSkew in the future
// is refused too.
const (
	newsMaxAge = 30 * time.Second
	clockSkew  = 30 * time.Second
)

// errBadSignature is any message that does not verify: unsigned, badly
// signed, or signed for another kind or fleet.
var errBadSignature = errors.New("fleet: message not signed with the fleet's secret")

// mac is the HMAC of kind, the prefix, at (Unix milliseconds) and parts,
// each length-prefixed so that no two inputs read alike.
func (f *Fleet) mac(kind string, at int64, parts ...string) []byte {
	m := hmac.New(sha256.New, f.secret)
	var n [8]byte
	for _, p := range append([]string{kind, f.prefix}, parts...) {
		binary.BigEndian.PutUint64(n[:], uint64(len(p)))
		m.Write(n[:])
		m.Write([]byte(p))
	}
	binary.BigEndian.PutUint64(n[:], uint64(at))
	m.Write(n[:])
	return m.Sum(nil)
}

// seal signs body as a message of kind made at at: "v1.<ms>.<mac>.<body>".
func (f *Fleet) seal(kind string, at time.Time, body string) string {
	ms := at.UnixMilli()
	return "v1." + strconv.FormatInt(ms, 10) + "." + hex.EncodeToString(f.mac(kind, ms, body)) + "." + body
}

// unseal returns the body and time of a message of kind that seal made
// with the fleet's secret, or errBadSignature.
func (f *Fleet) unseal(kind, msg string) (body string, at time.Time, err error) {
	rest, ok := strings.CutPrefix(msg, "v1.")
	if !ok {
		return "", time.Time{}, errBadSignature
	}
	msStr, rest, ok1 := strings.Cut(rest, ".")
	macHex, body, ok2 := strings.Cut(rest, ".")
	ms, err := strconv.ParseInt(msStr, 10, 64)
	if !ok1 || !ok2 || err != nil {
		return "", time.Time{}, errBadSignature
	}
	got, err := hex.DecodeString(macHex)
	if err != nil || !hmac.Equal(got, f.mac(kind, ms, body)) {
		return "", time.Time{}, errBadSignature
	}
	return body, time.UnixMilli(ms), nil
}

// hashKey hides an artifact key (which may name a private module) from
// Redis and whoever reads it: an HMAC under the fleet's secret, so that
// a guess cannot be confirmed by hashing it.
func (f *Fleet) hashKey(key string) string {
	m := hmac.New(sha256.New, f.secret)
	m.Write([]byte("artifact\x00"))
	m.Write([]byte(key))
	return hex.EncodeToString(m.Sum(nil))
}

// storedMark is the value of an artifact's "stored just now" key: only a
// replica with the secret can make it, and the lease script compares it
// whole.
func (f *Fleet) storedMark(h string) string {
	return hex.EncodeToString(f.mac("stored", 0, h))
}

// releaseNote is the message that wakes the waiters of lease h.
func (f *Fleet) releaseNote(h string) string {
	return h + "." + hex.EncodeToString(f.mac("release", 0, h))
}

// releasedHash returns the lease hash of a release note, if it verifies.
func (f *Fleet) releasedHash(note string) (string, bool) {
	h, sig, ok := strings.Cut(note, ".")
	got, err := hex.DecodeString(sig)
	if !ok || err != nil || !hmac.Equal(got, f.mac("release", 0, h)) {
		return "", false
	}
	return h, true
}

// leaseToken is the value of a lease this replica holds: its id, a
// random part, and an HMAC over both and the lease's hash, so that
// waiters wait only for a lease a replica took.
func (f *Fleet) leaseToken(h string) string {
	id := f.replica + ":" + randomHex(8)
	return id + "." + hex.EncodeToString(f.mac("lease", 0, h, id))
}

// validLease reports whether token is a lease value for h that a replica
// of the fleet made.
func (f *Fleet) validLease(h, token string) bool {
	i := strings.LastIndexByte(token, '.')
	if i < 0 {
		return false
	}
	got, err := hex.DecodeString(token[i+1:])
	return err == nil && hmac.Equal(got, f.mac("lease", 0, h, token[:i]))
}
