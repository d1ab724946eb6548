package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http/httputil"
	"time"
)

// rawConn is one keep-alive HTTP/1.1 connection of the load generator. It
// writes prepared request bytes and reads the answer without net/http and
// without allocating: on two cores the client shares the machine with the
// proxy it measures, and a client that costs less leaves the difference
// between the proxies more room to show.
type rawConn struct {
	c   net.Conn
	br  *bufio.Reader
	big []byte // large bodies are read into this, around br
}

func newRawConn(c net.Conn) *rawConn {
	return &rawConn{c: c, br: bufio.NewReaderSize(c, 16<<10)}
}

// dialRaw connects to addr and, if connect is not empty, asks for a tunnel
// to it (CONNECT connect) first.
func dialRaw(addr, connect string) (*rawConn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	rc := newRawConn(c)
	if connect == "" {
		return rc, nil
	}
	if _, err := fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: Go-http-client/1.1\r\n\r\n", connect, connect); err != nil {
		c.Close()
		return nil, err
	}
	a, err := rc.readResponse(true)
	if err == nil && a.status != 200 {
		err = fmt.Errorf("CONNECT %s: status %d", connect, a.status)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return rc, nil
}

// startTLS begins TLS on the connection (inside its tunnel, if it has one)
// and returns the connection that speaks through it.
func (rc *rawConn) startTLS(cfg *tls.Config) (*rawConn, error) {
	if rc.br.Buffered() > 0 { // the server cannot speak first in TLS
		rc.c.Close()
		return nil, fmt.Errorf("%d bytes before the TLS handshake", rc.br.Buffered())
	}
	tc := tls.Client(rc.c, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		rc.c.Close()
		return nil, err
	}
	return newRawConn(tc), nil
}

func (rc *rawConn) Close() error { return rc.c.Close() }

// answer is what came back for one request.
type answer struct {
	status int
	bytes  int64 // of the body
	close  bool  // the connection cannot be used again
}

// roundTrip sends one prepared request and reads the whole answer.
func (rc *rawConn) roundTrip(req []byte) (answer, error) {
	if _, err := rc.c.Write(req); err != nil {
		return answer{}, err
	}
	return rc.readResponse(false)
}

var errMalformed = errors.New("malformed response")

// readResponse reads a status line, the header (of which it keeps only
// Content-Length, Transfer-Encoding and Connection) and, unless headOnly,
// the body, which it discards.
func (rc *rawConn) readResponse(headOnly bool) (a answer, err error) {
	line, err := rc.br.ReadSlice('\n')
	if err != nil {
		return a, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return a, errMalformed
	}
	for _, d := range line[9:12] {
		if d < '0' || d > '9' {
			return a, errMalformed
		}
		a.status = a.status*10 + int(d-'0')
	}
	a.close = line[7] == '0' // HTTP/1.0
	length, chunked := int64(-1), false
	for {
		line, err = rc.br.ReadSlice('\n')
		if err != nil {
			return a, err
		}
		if len(line) <= 2 {
			break // the blank line
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return a, errMalformed
		}
		value = bytes.TrimSpace(value)
		switch {
		case headerIs(name, "content-length"):
			if length, ok = parseLength(value); !ok {
				return a, errMalformed
			}
		case headerIs(name, "transfer-encoding"):
			chunked = headerIs(value, "chunked")
		case headerIs(name, "connection"):
			a.close = a.close || headerIs(value, "close")
		}
	}
	if headOnly || a.status/100 == 1 || a.status == 204 || a.status == 304 {
		return a, nil
	}
	switch {
	case chunked:
		if a.bytes, err = io.Copy(io.Discard, httputil.NewChunkedReader(rc.br)); err != nil {
			return a, err
		}
		for { // the trailer, which ends with a blank line
			if line, err = rc.br.ReadSlice('\n'); err != nil || len(line) <= 2 {
				return a, err
			}
		}
	case length >= 0:
		a.bytes, err = rc.discard(length)
	default: // the body ends with the connection
		a.close = true
		a.bytes, err = io.Copy(io.Discard, rc.br)
	}
	return a, err
}

// discard reads and drops n bytes of body. Past what the buffered reader
// holds, a large body is read straight from the connection in large reads.
func (rc *rawConn) discard(n int64) (int64, error) {
	var done int64
	if b := int64(rc.br.Buffered()); b > 0 {
		k, _ := rc.br.Discard(int(min(b, n)))
		done += int64(k)
	}
	for done < n {
		left := n - done
		if left <= 64<<10 {
			k, err := rc.br.Discard(int(left))
			done += int64(k)
			if err != nil {
				return done, unexpected(err)
			}
			continue
		}
		if rc.big == nil {
			rc.big = make([]byte, 256<<10)
		}
		k, err := rc.c.Read(rc.big[:min(int64(len(rc.big)), left)])
		done += int64(k)
		if err != nil {
			return done, unexpected(err)
		}
	}
	return done, nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// headerIs reports whether b is s, ignoring ASCII case (s is lower case).
func headerIs(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

func parseLength(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, d := range b {
		if d < '0' || d > '9' {
			return 0, false
		}
		n = n*10 + int64(d-'0')
	}
	return n, true
}
