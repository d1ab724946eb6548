package upstream

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/modgate/modgate/sidecar/wire"
)

// ParseList turns a GOPROXY-syntax list ("URL,URL|URL,direct") into upstream
// configs, as the go command reads GOPROXY: a bare host gets https://,
// empty entries are ignored, and nothing after "direct" or "off" is kept
// because those entries always end the walk.
func ParseList(list string) ([]Config, error) {
	var cfgs []Config
	for list != "" {
		entry, sep := list, byte(0)
		list = ""
		if i := strings.IndexAny(entry, ",|"); i >= 0 {
			entry, sep, list = entry[:i], entry[i], entry[i+1:]
		}
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		cfg := Config{URL: entry}
		if sep == '|' {
			cfg.Fallthrough = OnError
		}
		switch {
		case entry == "direct" || entry == "off":
		case !strings.ContainsAny(entry, ".:/"):
			return nil, fmt.Errorf("upstream list: unknown keyword %q (want a URL, direct or off)", entry)
		case strings.Contains(entry, ":/"):
		case filepath.IsAbs(entry) || path.IsAbs(entry):
			return nil, fmt.Errorf("upstream list: %q must be a URL (file://%s)", entry, entry)
		default:
			cfg.URL = "https://" + entry
		}
		cfgs = append(cfgs, cfg)
		if entry == "direct" || entry == "off" {
			break
		}
	}
	if len(cfgs) == 0 {
		return nil, errors.New("upstream list is empty")
	}
	return cfgs, nil
}

// Attempt is what one upstream did with one request.
type Attempt struct {
	Upstream *Upstream
	Skipped  bool   // not asked: Detail says why
	Status   int    // 0 when no response was had
	Err      error  // why no response was had, or why the walk skipped it
	Detail   string // first line of the upstream's text/plain error body
	Duration time.Duration
}

// AttemptOf is the attempt of one request to u that had no 200: the
// error, or the status and the first line of its error body (the body is
// read and closed).
func AttemptOf(u *Upstream, resp *http.Response, err error, d time.Duration) Attempt {
	a := Attempt{Upstream: u, Err: err, Duration: d}
	if err == nil && resp != nil {
		a.Status = resp.StatusCode
		a.Detail = errorDetail(resp)
	}
	return a
}

// NotFound reports whether the upstream said the artifact does not exist,
// which is how proxies say "try the next one".
func (a Attempt) NotFound() bool {
	return a.Err == nil && (a.Status == http.StatusNotFound || a.Status == http.StatusGone)
}

// Timeout reports whether the attempt ran out of time.
func (a Attempt) Timeout() bool { return isTimeout(a.Err) }

// String says what happened in a few words, e.g. "public: 404 Not Found".
func (a Attempt) String() string {
	var b strings.Builder
	b.WriteString(a.Upstream.Name)
	b.WriteString(": ")
	switch {
	case a.Skipped:
		b.WriteString("not asked: " + a.Detail)
	case a.Err != nil:
		b.WriteString(describe(a.Err, a.Upstream))
	default:
		b.WriteString(strconv.Itoa(a.Status))
		if t := http.StatusText(a.Status); t != "" {
			b.WriteString(" " + t)
		}
		if a.Detail != "" {
			fmt.Fprintf(&b, " (%s)", a.Detail)
		}
	}
	return b.String()
}

// Result is the outcome of walking the chain for one request.
type Result struct {
	// Response is the first 200 answer; nil when there was none. The caller
	// must close its body.
	Response *http.Response
	// Upstream answered Response.
	Upstream *Upstream
	// Attempts lists every upstream that was asked or skipped, in order,
	// excluding the one that answered 200.
	Attempts []Attempt
	// End is Direct or Off when the walk reached such an entry.
	End Kind
	// Stopped is set when the walk ended at a failure that a "," entry
	// does not fall through, with upstreams left unasked.
	Stopped bool
}

// Status is the status modgate answers with when there is no Response,
// ranked as the go command ranks a chain's errors: a real failure outranks
// "not found", so "500|404" is an error and "404,404" is not found. A loop
// outranks everything, so that every modgate on it says so.
func (r Result) Status() int {
	switch {
	case r.Response != nil:
		return http.StatusOK
	case r.End == Off:
		return http.StatusForbidden
	case r.Loop():
		return http.StatusLoopDetected
	}
	// The last real failure decides, as in the go command.
	status := http.StatusNotFound
	for _, a := range r.Attempts {
		var open *OpenError
		switch {
		case a.NotFound():
		case errors.As(a.Err, &open):
			status = http.StatusServiceUnavailable
		case a.Timeout():
			status = http.StatusGatewayTimeout
		default:
			status = http.StatusBadGateway
		}
	}
	return status
}

// RetryAfter is how long until the breaker that made the walk fail fast
// lets requests through again; zero when no breaker did.
func (r Result) RetryAfter() int {
	for i := len(r.Attempts) - 1; i >= 0; i-- {
		var open *OpenError
		if errors.As(r.Attempts[i].Err, &open) {
			return open.RetryAfterSeconds()
		}
		if !r.Attempts[i].NotFound() {
			break
		}
	}
	return 0
}

// Loop reports whether an upstream answered 508 Loop Detected.
func (r Result) Loop() bool {
	for _, a := range r.Attempts {
		if a.Status == http.StatusLoopDetected {
			return true
		}
	}
	return false
}

// Chain is the ordered list of upstreams of one modgate.
type Chain struct {
	list  []*Upstream
	clock wire.Clock // times hedges
}

// NewChain builds the upstreams of cfgs, naming each after its host when the
// config gives no name (with a numeric suffix when two share a host).
func NewChain(cfgs []Config, opts Options) (*Chain, error) {
	c := &Chain{clock: opts.Clock}
	if c.clock == nil {
		c.clock = wire.SystemClock{}
	}
	seen := map[string]bool{}
	for _, cfg := range cfgs {
		u, err := New(cfg, opts)
		if err != nil {
			return nil, err
		}
		if cfg.Name == "" {
			name := u.Name
			for i := 2; seen[u.Name]; i++ {
				u.Name = fmt.Sprintf("%s-%d", name, i)
			}
		} else if seen[u.Name] {
			return nil, fmt.Errorf("two upstreams are named %q", u.Name)
		}
		seen[u.Name] = true
		c.list = append(c.list, u)
		if u.Kind != Proxy {
			break
		}
	}
	if len(c.list) == 0 {
		return nil, errors.New("no upstreams")
	}
	return c, nil
}

// FormatChain writes ups in GOPROXY syntax ("a,b|c,direct"), each
// upstream as label says (its name, or its URL).
func FormatChain(ups []*Upstream, label func(*Upstream) string) string {
	entries := make([]wire.ChainEntry, len(ups))
	for i, u := range ups {
		entries[i] = wire.ChainEntry{Name: label(u), OnError: u.Fallthrough == OnError}
	}
	return wire.FormatChain(entries)
}

// Upstreams returns the chain's entries in order.
func (c *Chain) Upstreams() []*Upstream { return c.list }

// Walk asks each upstream in turn for path until one answers 200, moving on
// as GOPROXY does: after a "," entry only on 404/410, after a "|" entry on
// any failure. skip, if not nil, returns a reason to pass an upstream by
// without asking it (a skipped upstream counts as not found).
func (c *Chain) Walk(ctx context.Context, method, path string, hdr http.Header, skip func(*Upstream) error) Result {
	return c.WalkWith(ctx, method, path, hdr, WalkOptions{Skip: skip})
}

// WalkOptions shape a walk.
type WalkOptions struct {
	// Skip, if not nil, returns a reason to pass an upstream by without
	// asking it (a skipped upstream counts as not found).
	Skip func(*Upstream) error
	// Hedge, if not nil, races the next eligible upstream against one
	// that is slow to answer.
	Hedge *Hedge
	// Check, if not nil, judges each 200 answer (see Check): one it
	// refuses is that upstream's failure.
	Check Check
	// After, if not nil, starts the walk at the upstream after it: the
	// rest of the chain, for a request that After failed.
	After *Upstream
}

// Hedge says when a walk also asks the next upstream before the current
// one has answered, to cut the tail latency of requests whose answer any
// upstream gives alike (immutable artifacts).
type Hedge struct {
	// Delay is how long to wait for u's response headers before asking the
	// next upstream too; zero or less: never hedge u.
	Delay func(u *Upstream) time.Duration
	// Allow takes one hedge from the budget, or says there is none left.
	Allow func() bool
	// Sent and Won are told of each hedge sent, and of each that answered
	// first.
	Sent, Won func(ctx context.Context, u *Upstream)
	// Mark returns the context of a hedged attempt (telemetry marks it).
	Mark func(ctx context.Context) context.Context
}

// WalkWith is Walk with options. With a Hedge it races the next eligible
// upstream against one that is slow to answer: the first 200 that passes
// the Check wins and the other is cancelled. Skip applies to the hedge
// too, so a private module is never hedged to an upstream that may not
// see it.
func (c *Chain) WalkWith(ctx context.Context, method, path string, hdr http.Header, opts WalkOptions) Result {
	skip, h := opts.Skip, opts.Hedge
	req := Request{Method: method, Path: path, Header: hdr, Check: opts.Check}
	var r Result
	for i := c.start(opts.After); i < len(c.list); i++ {
		u := c.list[i]
		if u.Kind != Proxy {
			r.End = u.Kind
			return r
		}
		if skip != nil {
			if err := skip(u); err != nil {
				r.Attempts = append(r.Attempts, Attempt{Upstream: u, Skipped: true, Status: http.StatusNotFound, Detail: err.Error()})
				continue
			}
		}
		var tries []try
		if next := c.nextEligible(i, skip); h != nil && next > i {
			tries = c.race(ctx, req, u, c.list[next], h)
			if len(tries) == 2 {
				i = next // the hedge was asked: the walk goes on after it
			}
		} else {
			tries = []try{ask(ctx, u, req)}
		}
		for _, t := range tries {
			if t.resp != nil {
				r.Response, r.Upstream = t.resp, t.attempt.Upstream
				return r
			}
		}
		for _, t := range tries {
			r.Attempts = append(r.Attempts, t.attempt)
		}
		last := tries[len(tries)-1].attempt
		if ctx.Err() != nil {
			// The client went away: asking anyone else helps nobody.
			return r
		}
		if !last.NotFound() && last.Upstream.Fallthrough != OnError {
			r.Stopped = i < len(c.list)-1
			return r
		}
	}
	return r
}

// Ask asks u alone and records the attempt: a Result with the Response
// when u answered 200, or with the one Attempt that says what u did
// instead. A 200 counts only once it holds up: with req.Check, when the
// check passed it (the check read it); without one, when its first
// PrefetchLimit bytes arrived whole, so that a small answer that breaks
// off is a failed attempt the walk can move past, not a cut response.
//
// Every source of answers asks through Ask: the chain's walk, the route
// to the checksum database, and forward mode's origin.
func (u *Upstream) Ask(ctx context.Context, req Request) Result {
	start := u.clock.Now()
	resp, err := u.Do(ctx, req)
	if err == nil && resp.StatusCode == http.StatusOK && req.Method != http.MethodHead && req.Check == nil {
		err = Prefetch(resp)
	}
	if err == nil && resp.StatusCode == http.StatusOK {
		return Result{Response: resp, Upstream: u}
	}
	if err != nil {
		resp = nil
	}
	return Result{Attempts: []Attempt{AttemptOf(u, resp, err, u.clock.Now().Sub(start))}}
}

// try is one upstream's answer: a 200 response, or an attempt that says
// what went wrong.
type try struct {
	resp    *http.Response
	attempt Attempt
}

func ask(ctx context.Context, u *Upstream, req Request) try {
	res := u.Ask(ctx, req)
	if res.Response != nil {
		return try{resp: res.Response, attempt: Attempt{Upstream: u}}
	}
	return try{attempt: res.Attempts[0]}
}

// PrefetchLimit is how much of a 200 answer the walk reads before it
// counts as a success: a small answer (.info, .mod, a list) that breaks
// off is then a failed attempt the chain can move past, not a cut
// response.
const PrefetchLimit = 64 << 10

// Prefetch reads up to PrefetchLimit of resp's body ahead. A body that
// ends short of its Content-Length, or breaks off, within that span is an
// error (the body is closed); a longer body is served from what was read
// and then the rest.
func Prefetch(resp *http.Response) error {
	if resp.ContentLength > PrefetchLimit {
		return nil
	}
	head, err := io.ReadAll(io.LimitReader(resp.Body, PrefetchLimit+1))
	switch {
	case err == nil && resp.ContentLength >= 0 && int64(len(head)) != resp.ContentLength:
		err = fmt.Errorf("body cut after %d of %d bytes: %w", len(head), resp.ContentLength, io.ErrUnexpectedEOF)
	case err != nil && resp.ContentLength >= 0:
		err = fmt.Errorf("body cut after %d of %d bytes: %w", len(head), resp.ContentLength, err)
	case err != nil:
		err = fmt.Errorf("body cut after %d bytes: %w", len(head), err)
	}
	if err != nil {
		resp.Body.Close()
		return err
	}
	rest := resp.Body
	if len(head) <= PrefetchLimit {
		rest.Close() // read to its end: the breaker has its outcome
		resp.Body = io.NopCloser(bytes.NewReader(head))
		return nil
	}
	resp.Body = &prefetched{Reader: io.MultiReader(bytes.NewReader(head), rest), closer: rest}
	return nil
}

type prefetched struct {
	io.Reader
	closer io.Closer
}

func (p *prefetched) Close() error { return p.closer.Close() }

// start is the index a walk begins at: the first upstream, or the one
// after after.
func (c *Chain) start(after *Upstream) int {
	if after == nil {
		return 0
	}
	for i, u := range c.list {
		if u == after {
			return i + 1
		}
	}
	return len(c.list) // not in this chain: nobody is left to ask
}

// nextEligible returns the index of the next upstream after i that may be
// asked, or -1.
func (c *Chain) nextEligible(i int, skip func(*Upstream) error) int {
	for j := i + 1; j < len(c.list); j++ {
		u := c.list[j]
		if u.Kind != Proxy {
			return -1
		}
		if skip == nil || skip(u) == nil {
			return j
		}
	}
	return -1
}

// race asks u, and next as well if u has not answered within its hedge
// delay and the budget allows. It returns one try, or two (u's, next's)
// when both were asked; a losing request is cancelled.
func (c *Chain) race(ctx context.Context, req Request, u, next *Upstream, h *Hedge) []try {
	delay := h.Delay(u)
	if delay <= 0 {
		return []try{ask(ctx, u, req)}
	}
	type result struct {
		first bool
		t     try
	}
	results := make(chan result, 2)
	ctxU, cancelU := context.WithCancel(ctx)
	answered := make(chan struct{})
	reqU := req
	reqU.answered = sync.OnceFunc(func() { close(answered) })
	go func() { results <- result{true, ask(ctxU, u, reqU)} }()
	fired, stop := c.clock.After(delay)
	defer stop()
	select {
	case res := <-results:
		return []try{keep(res.t, cancelU)}
	case <-answered:
		// In time: what its Check makes of the body is u's alone.
		return []try{keep((<-results).t, cancelU)}
	case <-fired:
	}
	if !h.Allow() {
		return []try{keep((<-results).t, cancelU)}
	}
	h.Sent(ctx, next)
	ctxN, cancelN := context.WithCancel(h.Mark(ctx))
	go func() { results <- result{false, ask(ctxN, next, req)} }()
	a := <-results
	if a.t.resp != nil {
		// The first good answer wins; the other request is cancelled and
		// its answer, if it comes, thrown away.
		loserCancel, winnerCancel := cancelN, cancelU
		if !a.first {
			loserCancel, winnerCancel = cancelU, cancelN
			h.Won(ctx, next)
		}
		loserCancel()
		go func() {
			if b := <-results; b.t.resp != nil {
				b.t.resp.Body.Close()
			}
		}()
		return []try{keep(a.t, winnerCancel)}
	}
	b := <-results
	if b.t.resp != nil && !b.first {
		h.Won(ctx, next)
	}
	first, second := a, b
	if !a.first {
		first, second = b, a
	}
	return []try{keep(first.t, cancelU), keep(second.t, cancelN)}
}

// keep ties cancel to the try: a response's body ends its request when it
// is closed; a failed try's request is over already.
func keep(t try, cancel context.CancelFunc) try {
	if t.resp == nil {
		cancel()
		return t
	}
	t.resp.Body = &cancelOnClose{ReadCloser: t.resp.Body, cancel: cancel}
	return t
}

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// errorDetail reads the first line of a text/plain error body, cleaned so
// that it is safe to print on a developer's terminal, and closes the body.
func errorDetail(resp *http.Response) string {
	defer resp.Body.Close()
	ct := resp.Header.Get("Content-Type")
	if !strings.HasPrefix(ct, "text/plain") {
		return ""
	}
	line, _ := bufio.NewReader(io.LimitReader(resp.Body, 512)).ReadString('\n')
	// Before it is cut short: a credential cut in two would show its half.
	line = RedactText(line)
	line = strings.Map(func(r rune) rune {
		if r == unicode.ReplacementChar || !unicode.IsGraphic(r) {
			return -1
		}
		return r
	}, strings.TrimSpace(line))
	const max = 120
	if len(line) > max {
		line = line[:max] + "..."
	}
	return line
}

func isTimeout(err error) bool {
	if err == nil {
		return false
	}
	var ne net.Error
	return errors.Is(err, ErrStalled) || errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// describe turns a transport error into words for a developer: the cause,
// without the request URL that *url.Error repeats.
func describe(err error, u *Upstream) string {
	var open *OpenError
	if errors.As(err, &open) {
		return open.Error()
	}
	if errors.Is(err, ErrStalled) {
		return fmt.Sprintf("body stalled: no data for %s", u.Timeouts.Idle)
	}
	if ue := (*url.Error)(nil); errors.As(err, &ue) {
		err = ue.Err
	}
	msg := err.Error()
	if strings.Contains(msg, "timeout awaiting response headers") {
		return fmt.Sprintf("no response headers within %s", u.Timeouts.Header)
	}
	return msg
}
