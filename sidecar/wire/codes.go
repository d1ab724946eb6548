package wire

import (
	"net/http"
	"strings"
)

// Code names why modgate refused or failed a request. It is the first word
// after "modgate: " on the first line of every error body, so that the go
// command prints it and `modgate explain` can key on it:
//
//	modgate: denied: example.test/lib@v1.0.0 denied by policy rule 2 ...
//
// Codes are stable: tools depend on them; the prose after them may change.
type Code string

// The codes, by what they say about the request.
const (
	// The request itself is wrong.
	BadRequest       Code = "bad-request"        // 400: a path, version, method or body modgate will not pass on
	NotModuleRequest Code = "not-module-request" // 404: not a path of the module proxy protocol
	MethodNotAllowed Code = "method-not-allowed" // 405
	AuthRequired     Code = "auth-required"      // 407 (forward) or 401 (reverse): no valid credentials
	TooManyLogins    Code = "too-many-logins"    // 429: this client's credentials failed too often
	Misdirected      Code = "misdirected"        // 421: a request for another host inside a CONNECT

	// Policy and modgate's guards refused it.
	Denied        Code = "denied"         // 403: a policy rule denies the module or version
	PrivateLookup Code = "private-lookup" // 403: a private module's checksum database lookup
	PrivateHost   Code = "private-host"   // 403: a private module to a host that is not private
	Refused       Code = "refused"        // 403: forward mode will not reach that destination
	Loop          Code = "loop"           // 508: the request already passed through this modgate

	// The upstream chain could not serve it.
	NotFound       Code = "not-found"        // 404: no upstream has it
	Direct         Code = "direct"           // 404: not found, and the chain ends in direct
	Off            Code = "off"              // 403: the chain ends in off
	CircuitOpen    Code = "circuit-open"     // 503: the upstream that decided is open
	Timeout        Code = "upstream-timeout" // 504
	UpstreamFailed Code = "upstream-failed"  // 502: an upstream answered an error or could not be reached
	UpstreamCut    Code = "upstream-cut"     // 502: an upstream broke off a small answer
	BadUpstream    Code = "bad-upstream"     // 502: an upstream's answer is not what the protocol allows
	// 502: an upstream's answer is not what the checksum database vouches for
	ChecksumMismatch Code = "checksum-mismatch"
	UnknownSumDB     Code = "unknown-sumdb" // 404: a checksum database modgate does not serve
	Offline          Code = "offline"       // 404: modgate serves only from its cache, which lacks it
	Busy             Code = "busy"          // 503: modgate has no room for the request now
	Internal         Code = "internal"      // 500: modgate's own fault (a cache read)
)

// codes is every code with the HTTP status of its answer: the one place a
// status is chosen. Forward mode's own login challenge is the one
// exception, which the protocol makes: 407 Proxy Authentication Required
// instead of AuthRequired's 401.
var codes = []struct {
	code   Code
	status int
}{
	{BadRequest, http.StatusBadRequest},
	{NotModuleRequest, http.StatusNotFound},
	{MethodNotAllowed, http.StatusMethodNotAllowed},
	{AuthRequired, http.StatusUnauthorized},
	{TooManyLogins, http.StatusTooManyRequests},
	{Misdirected, http.StatusMisdirectedRequest},
	{Denied, http.StatusForbidden},
	{PrivateLookup, http.StatusForbidden},
	{PrivateHost, http.StatusForbidden},
	{Refused, http.StatusForbidden},
	{Loop, http.StatusLoopDetected},
	{NotFound, http.StatusNotFound},
	{Direct, http.StatusNotFound},
	{Off, http.StatusForbidden},
	{CircuitOpen, http.StatusServiceUnavailable},
	{Timeout, http.StatusGatewayTimeout},
	{UpstreamFailed, http.StatusBadGateway},
	{UpstreamCut, http.StatusBadGateway},
	{BadUpstream, http.StatusBadGateway},
	{ChecksumMismatch, http.StatusBadGateway},
	{UnknownSumDB, http.StatusNotFound},
	{Offline, http.StatusNotFound},
	{Busy, http.StatusServiceUnavailable},
	{Internal, http.StatusInternalServerError},
}

// Codes returns every code, for tools that check they know them all.
func Codes() []Code {
	all := make([]Code, len(codes))
	for i, c := range codes {
		all[i] = c.code
	}
	return all
}

// Status is the HTTP status of an answer with code c; 500 for a code that
// is not one of the codes.
func (c Code) Status() int {
	for _, e := range codes {
		if e.code == c {
			return e.status
		}
	}
	return http.StatusInternalServerError
}

// Prefix starts every line modgate writes for the go command to print.
const Prefix = "modgate: "

// FirstLine is the first line of an error body with code c.
func FirstLine(c Code, msg string) string {
	return Prefix + string(c) + ": " + msg
}

// ParseLine finds modgate's code in a line of text, wherever the line
// quotes it (the go command indents a server response and may put other
// words before it). It returns the code and the message after it.
func ParseLine(line string) (Code, string, bool) {
	i := strings.Index(line, Prefix)
	if i < 0 {
		return "", "", false
	}
	rest := line[i+len(Prefix):]
	word, msg, ok := strings.Cut(rest, ": ")
	if !ok {
		return "", "", false
	}
	for _, c := range codes {
		if string(c.code) == word {
			return c.code, msg, true
		}
	}
	return "", "", false
}
