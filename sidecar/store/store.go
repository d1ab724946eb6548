// Package store is modgate's shared cache tier: immutable artifacts kept in
// object storage (whatever gocloud.dev/blob opens: s3://, gs://, azblob://,
// file://), so that every replica of a fleet finds what one of them fetched.
//
// Each object carries its length and SHA-256 as metadata, beside it. A read
// checks both while it copies, and an object that fails the check is
// deleted: it is never served, and the next fetch replaces it. The store
// only ever saves upstream work, so its failures are counted and reported,
// never passed on: a breaker skips it while it is down, and a timeout
// bounds how long it may keep a request waiting.
package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
	"gocloud.dev/blob"
	_ "gocloud.dev/blob/fileblob" // file://
	_ "gocloud.dev/blob/s3blob"   // s3://
	"gocloud.dev/gcerrors"

	"github.com/modgate/modgate/sidecar/upstream"
)

// Errors of Get. Only ErrUnavailable and other errors say anything about
// the store itself; the caller goes to upstreams on any of them.
var (
	// ErrNotExist: the store has no object under the key.
	ErrNotExist = errors.New("not in the shared store")
	// ErrDamaged: the object's length or hash is not what its metadata
	// says (or it has none); it was deleted.
	ErrDamaged = errors.New("damaged object in the shared store")
	// ErrUnavailable: the store failed repeatedly and is being skipped.
	ErrUnavailable = errors.New("shared store unavailable")
	// errStalled: no progress within the timeout.
	errStalled = errors.New("shared store stalled")
)

// Metadata keys (lower case: S3 and others lower-case them anyway).
const (
	metaSHA256 = "sha256"
	metaSize   = "size"
)

// DefaultTimeout bounds opening a read or a write, and any stall in one.
const DefaultTimeout = 2 * time.Second

// Options tune a Store.
type Options struct {
	// Timeout bounds how long the store may take to start an answer, and
	// any pause while one is read or written; past it, the request goes to
	// upstreams. If zero, DefaultTimeout.
	Timeout time.Duration
	// OpenFor is how long the store is skipped after it failed
	// repeatedly. If zero, 10 s.
	OpenFor time.Duration
	// Logger receives the store's failures. If nil, they are discarded.
	Logger *slog.Logger
	// Private marks the store of private modules: a file:// store then
	// creates its folders 0700 and its files 0600, since their names are
	// private module paths. If false, the umask decides.
	Private bool
}

// Object is what the store keeps beside an object's body.
type Object struct {
	Size        int64
	SHA256      string // hex
	ContentType string
}

// Store is one bucket. Its methods are safe for concurrent use.
type Store struct {
	bucket  *blob.Bucket
	private bool   // a private file:// store: files are made 0600
	name    string // the URL with anything secret-looking hidden
	timeout time.Duration
	log     *slog.Logger
	cb      *gobreaker.CircuitBreaker[struct{}]

	counts [numOps][numResults]atomic.Int64

	mu        sync.Mutex
	lastErr   string
	lastErrAt time.Time
}

// optionalDrivers are the bucket schemes whose drivers are built in only
// with a build tag (drivers_gcs.go, drivers_azure.go): their SDKs more than
// double the binary's size. S3 and file:// are always in.
var optionalDrivers = map[string]string{"gs": "gcs", "azblob": "azure"}

// Open opens the bucket that rawURL names. It does not reach the store:
// a store that is down at start-up is skipped like one that goes down
// later.
func Open(ctx context.Context, rawURL string, opts Options) (*Store, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme == "" {
		return nil, fmt.Errorf("not a bucket URL (s3://, gs://, azblob:// or file://): %q", Redact(rawURL))
	}
	if tag, ok := optionalDrivers[u.Scheme]; ok && !slices.Contains(blob.DefaultURLMux().BucketSchemes(), u.Scheme) {
		return nil, fmt.Errorf("%s:// is not in this build of modgate: build it with -tags %s (go install -tags %s ...), or use the image that has every driver (see README: Running many modgates)", u.Scheme, tag, tag)
	}
	openURL := rawURL
	private := opts.Private && u.Scheme == "file"
	if private {
		// Folders 0700 (module paths are their names), and temporary
		// files beside the object rather than in the shared /tmp.
		q := u.Query()
		if q.Get("dir_file_mode") == "" {
			q.Set("dir_file_mode", "0700")
		}
		if q.Get("no_tmp_dir") == "" {
			q.Set("no_tmp_dir", "true")
		}
		v := *u
		v.RawQuery = q.Encode()
		openURL = v.String()
	}
	b, err := blob.OpenBucket(ctx, openURL)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", Redact(rawURL), errors.New(Redact(err.Error())))
	}
	s := &Store{bucket: b, private: private, name: Redact(rawURL), timeout: opts.Timeout, log: opts.Logger}
	if s.timeout <= 0 {
		s.timeout = DefaultTimeout
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	openFor := opts.OpenFor
	if openFor <= 0 {
		openFor = 10 * time.Second
	}
	s.cb = gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        s.name,
		MaxRequests: 1,
		Timeout:     openFor,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= 3 },
		// A missing or damaged object is the store working as it should.
		IsSuccessful: func(err error) bool {
			return err == nil || errors.Is(err, ErrNotExist) || errors.Is(err, ErrDamaged)
		},
		OnStateChange: func(_ string, from, to gobreaker.State) {
			s.log.Warn("shared store "+to.String(), "store", s.name, "from", from.String())
		},
	})
	return s, nil
}

// Close closes the bucket.
func (s *Store) Close() error { return s.bucket.Close() }

// Name is the store's URL as pages and logs show it.
func (s *Store) Name() string { return s.name }

// Get copies the object under key to w, checking its length and hash as
// it goes. On any error, what w received must be thrown away: a damaged
// object (ErrDamaged) is detected only at its end. A damaged object is
// deleted, so that the next fetch replaces it.
func (s *Store) Get(ctx context.Context, key string, w io.Writer) (Object, error) {
	var obj Object
	_, err := s.cb.Execute(func() (struct{}, error) {
		var err error
		obj, err = s.get(ctx, key, w)
		return struct{}{}, err
	})
	s.count(opGet, err)
	return obj, s.unavailable(err)
}

func (s *Store) get(ctx context.Context, key string, w io.Writer) (Object, error) {
	ctx, watch := s.watch(ctx)
	defer watch.stop()
	attrs, err := s.bucket.Attributes(ctx, key)
	if err != nil {
		return Object{}, s.failed("get", key, err, watch)
	}
	obj := Object{ContentType: attrs.ContentType, SHA256: attrs.Metadata[metaSHA256]}
	obj.Size, err = strconv.ParseInt(attrs.Metadata[metaSize], 10, 64)
	if err != nil || obj.Size != attrs.Size || len(obj.SHA256) != sha256.Size*2 {
		return obj, s.damaged(key, fmt.Sprintf("metadata says %q bytes, sha256 %q; the object has %d bytes", attrs.Metadata[metaSize], attrs.Metadata[metaSHA256], attrs.Size))
	}
	r, err := s.bucket.NewReader(ctx, key, nil)
	if err != nil {
		return obj, s.failed("get", key, err, watch)
	}
	defer r.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, h), watch.reader(r))
	sum := hex.EncodeToString(h.Sum(nil))
	if err != nil && !(n == obj.Size && sum != obj.SHA256) {
		// (Some stores' SDKs check a checksum of their own and fail at the
		// end of a damaged object: that is a damaged object, not a failing
		// store, and the hash says so.)
		return obj, s.failed("get", key, err, watch)
	}
	if n != obj.Size || sum != obj.SHA256 {
		return obj, s.damaged(key, fmt.Sprintf("read %d bytes with sha256 %s; metadata says %d bytes, %s", n, sum, obj.Size, obj.SHA256))
	}
	return obj, nil
}

// damaged deletes a damaged object and says so.
func (s *Store) damaged(key, why string) error {
	s.log.Warn("shared store: damaged object deleted; the next fetch replaces it", "key", key, "why", why)
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	if err := s.bucket.Delete(ctx, key); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
		s.log.Warn("shared store: delete damaged object", "key", key, "err", Redact(err.Error()))
	}
	return fmt.Errorf("%w: %s: %s", ErrDamaged, key, why)
}

// Reject deletes an object that passed the store's own check but not the
// reader's (its content is not what its key says: another module's zip,
// a go.mod the checksum database does not vouch for), and counts the
// read as damaged rather than a hit.
func (s *Store) Reject(key, why string) {
	s.counts[opGet][resultHit].Add(-1)
	s.counts[opGet][resultDamaged].Add(1)
	s.damaged(key, why)
}

// Put stores body (obj.Size bytes with obj.SHA256) under key, unless the
// store has it already: every replica that fetched it offers it.
func (s *Store) Put(ctx context.Context, key string, body io.Reader, obj Object) error {
	_, err := s.cb.Execute(func() (struct{}, error) {
		return struct{}{}, s.put(ctx, key, body, obj)
	})
	s.count(opPut, err)
	return s.unavailable(err)
}

func (s *Store) put(ctx context.Context, key string, body io.Reader, obj Object) error {
	ctx, watch := s.watch(ctx)
	defer watch.stop()
	if ok, err := s.bucket.Exists(ctx, key); err != nil {
		return s.failed("put", key, err, watch)
	} else if ok {
		return nil
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel() // a write whose context ends before Close is abandoned
	bw, err := s.bucket.NewWriter(wctx, key, &blob.WriterOptions{
		ContentType:                 obj.ContentType,
		DisableContentTypeDetection: true,
		Metadata:                    map[string]string{metaSHA256: obj.SHA256, metaSize: strconv.FormatInt(obj.Size, 10)},
		BeforeWrite:                 s.beforeWrite,
	})
	if err != nil {
		return s.failed("put", key, err, watch)
	}
	h := sha256.New()
	n, err := io.Copy(bw, io.TeeReader(watch.reader(body), h))
	if err == nil && (n != obj.Size || hex.EncodeToString(h.Sum(nil)) != obj.SHA256) {
		err = fmt.Errorf("body is %d bytes, not the %d it was said to be, or its hash differs", n, obj.Size)
	}
	if err != nil {
		cancel()
		bw.Close()
		return s.failed("put", key, err, watch)
	}
	if err := bw.Close(); err != nil {
		return s.failed("put", key, err, watch)
	}
	return nil
}

// Keys calls fn with the key of every object in the store, in the order
// the store lists them, until fn returns an error. It is for maintenance
// (modgate cache verify), not for the request path: it goes around the
// store's breaker and timeout.
func (s *Store) Keys(ctx context.Context, fn func(key string) error) error {
	it := s.bucket.List(nil)
	for {
		obj, err := it.Next(ctx)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return errors.New(Redact(err.Error()))
		}
		if obj.IsDir {
			continue
		}
		if err := fn(obj.Key); err != nil {
			return err
		}
	}
}

// Exists reports whether the store holds an object under key.
func (s *Store) Exists(ctx context.Context, key string) (bool, error) {
	var ok bool
	_, err := s.cb.Execute(func() (struct{}, error) {
		ctx, watch := s.watch(ctx)
		defer watch.stop()
		var err error
		if ok, err = s.bucket.Exists(ctx, key); err != nil {
			err = s.failed("exists", key, err, watch)
		}
		return struct{}{}, err
	})
	return ok, s.unavailable(err)
}

// Probe writes a small object, reads it back through the integrity check
// and deletes it: whether the store can be reached, and this process's
// credentials may write, read and delete (modgate doctor).
func (s *Store) Probe(ctx context.Context) error {
	key := "modgate-doctor/probe-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	body := []byte("modgate doctor wrote this and deletes it\n")
	sum := sha256.Sum256(body)
	obj := Object{Size: int64(len(body)), SHA256: hex.EncodeToString(sum[:]), ContentType: "text/plain"}
	if err := s.Put(ctx, key, bytes.NewReader(body), obj); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if _, err := s.Get(ctx, key, io.Discard); err != nil {
		return fmt.Errorf("read back: %w", err)
	}
	if err := s.bucket.Delete(ctx, key); err != nil {
		return fmt.Errorf("delete: %s", Redact(err.Error()))
	}
	return nil
}

// failed turns a bucket error into ErrNotExist or a described failure,
// remembering the latter for the status page.
func (s *Store) failed(op, key string, err error, w *watchdog) error {
	if gcerrors.Code(err) == gcerrors.NotFound {
		return ErrNotExist
	}
	if w.fired.Load() {
		err = fmt.Errorf("%w: nothing for %s", errStalled, s.timeout)
	}
	msg := fmt.Sprintf("%s %s: %s", op, key, Redact(err.Error()))
	s.mu.Lock()
	s.lastErr, s.lastErrAt = msg, time.Now()
	s.mu.Unlock()
	s.log.Warn("shared store: "+msg, "store", s.name)
	return errors.New(msg)
}

// unavailable turns the breaker's refusal into ErrUnavailable.
func (s *Store) unavailable(err error) error {
	if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
		return ErrUnavailable
	}
	return err
}

// watchdog cancels an operation that makes no progress within the
// store's timeout: the time to start an answer, or between two reads.
type watchdog struct {
	timer  *time.Timer
	cancel context.CancelFunc
	d      time.Duration
	fired  atomic.Bool
}

func (s *Store) watch(ctx context.Context) (context.Context, *watchdog) {
	ctx, cancel := context.WithCancel(ctx)
	w := &watchdog{cancel: cancel, d: s.timeout}
	w.timer = time.AfterFunc(w.d, func() { w.fired.Store(true); cancel() })
	return ctx, w
}

func (w *watchdog) stop() { w.timer.Stop(); w.cancel() }

// reader resets the watchdog on every read that returns bytes.
func (w *watchdog) reader(r io.Reader) io.Reader { return progressReader{r, w} }

type progressReader struct {
	r io.Reader
	w *watchdog
}

func (p progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 && !p.w.fired.Load() {
		p.w.timer.Reset(p.w.d)
	}
	return n, err
}

// Operations and results, as the modgate.cache.shared.requests metric
// counts them.
const (
	opGet = iota
	opPut
	numOps
)

const (
	resultHit         = iota // get: served; put: stored (or already there)
	resultMiss               // get only
	resultDamaged            // get only
	resultError              // the store failed
	resultUnavailable        // skipped: the store failed repeatedly
	numResults
)

var (
	opNames     = [numOps]string{"get", "put"}
	resultNames = [numResults]string{"hit", "miss", "damaged", "error", "skipped"}
)

func (s *Store) count(op int, err error) {
	var r int
	switch {
	case err == nil:
		r = resultHit
	case errors.Is(err, ErrNotExist):
		r = resultMiss
	case errors.Is(err, ErrDamaged):
		r = resultDamaged
	case errors.Is(err, gobreaker.ErrOpenState), errors.Is(err, gobreaker.ErrTooManyRequests):
		r = resultUnavailable
	default:
		r = resultError
	}
	s.counts[op][r].Add(1)
}

// Count is one series of the modgate.cache.shared.requests metric.
type Count struct {
	Op, Result string
	N          int64
}

// Counts returns the store's requests by operation and result.
func (s *Store) Counts() []Count {
	var cs []Count
	for op := range numOps {
		for r := range numResults {
			if op == opPut && (r == resultMiss || r == resultDamaged) {
				continue
			}
			cs = append(cs, Count{opNames[op], resultNames[r], s.counts[op][r].Load()})
		}
	}
	return cs
}

// Status is the store as the status page shows it.
type Status struct {
	URL         string    `json:"url"`
	State       string    `json:"state"` // up, down (skipped), probing
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	Hits        int64     `json:"hits"`
	Misses      int64     `json:"misses"`
	Damaged     int64     `json:"damaged"`
	Errors      int64     `json:"errors"`
	Skipped     int64     `json:"skipped"`
	Stored      int64     `json:"stored"`
}

// Status returns a snapshot of the store.
func (s *Store) Status() Status {
	st := Status{URL: s.name, State: "up"}
	switch s.cb.State() {
	case gobreaker.StateOpen:
		st.State = "down"
	case gobreaker.StateHalfOpen:
		st.State = "probing"
	}
	st.Hits = s.counts[opGet][resultHit].Load()
	st.Misses = s.counts[opGet][resultMiss].Load()
	st.Damaged = s.counts[opGet][resultDamaged].Load()
	st.Stored = s.counts[opPut][resultHit].Load()
	for op := range numOps {
		st.Errors += s.counts[op][resultError].Load()
		st.Skipped += s.counts[op][resultUnavailable].Load()
	}
	s.mu.Lock()
	st.LastError, st.LastErrorAt = s.lastErr, s.lastErrAt
	s.mu.Unlock()
	return st
}

// Redact hides what upstream.RedactText hides (passwords in URLs,
// authorization headers) and the values of URL query parameters that
// look like credentials (SAS tokens, keys, signatures), in a bucket URL
// or an error that quotes one.
func Redact(s string) string {
	return redactPlain(redactEncoded(s))
}

func redactPlain(s string) string {
	return secretParamRE.ReplaceAllString(upstream.RedactText(s), "${1}=xxxxx")
}

// redactEncoded hides the secrets of percent-encoded query values (an S3
// endpoint=http%3A%2F%2Fuser%3Apass%40host, whose credentials no pattern
// sees encoded): each such value is decoded, redacted, and encoded again
// when anything in it was hidden.
func redactEncoded(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	return queryValueRE.ReplaceAllStringFunc(s, func(m string) string {
		sub := queryValueRE.FindStringSubmatch(m)
		dec, err := url.QueryUnescape(sub[3])
		if err != nil || dec == sub[3] {
			return m
		}
		if red := redactPlain(redactEncoded(dec)); red != dec {
			return sub[1] + sub[2] + "=" + url.QueryEscape(red)
		}
		return m
	})
}

var (
	secretParamRE = regexp.MustCompile(`(?i)\b([a-z_]*(?:key|secret|token|sig|signature|password|sas|credential)[a-z_]*)=[^&\s"']*`)
	queryValueRE  = regexp.MustCompile(`([?&])([^=&\s#"']+)=([^&\s#"']*%[^&\s#"']*)`)
)

// beforeWrite makes a private file:// store's new file 0600 before a byte
// of it is written.
func (s *Store) beforeWrite(as func(any) bool) error {
	if !s.private {
		return nil
	}
	var f *os.File
	if as(&f) && f != nil {
		return f.Chmod(0o600)
	}
	return nil
}
