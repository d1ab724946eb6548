package sidecar

import (
	"net"
	"net/http"
	"sync"
)

// maxHeaderBytes bounds a request's header block on the listener and
// inside every intercepted connection alike: net/http's default (1 MiB)
// lets a few hundred unfinished headers hold hundreds of megabytes before
// anyone has authenticated.
const maxHeaderBytes = 64 << 10

// Connection limits, when Config leaves them zero.
const (
	DefaultMaxConnections          = 1024
	DefaultMaxConnectionsPerClient = 256
)

// closeAfterChunked marks the answer to a chunked request (or one with
// both Content-Length and Transfer-Encoding, whose Content-Length net/http
// drops) Connection: close, so that whatever follows its body on the
// connection is never read as a request of its own (RFC 9112 6.3): a
// smuggling attempt gets one answer and the end of the connection. Every
// way in applies it: origin-form, absolute-form and requests inside an
// intercepted CONNECT.
func closeAfterChunked(w http.ResponseWriter, r *http.Request) {
	if len(r.TransferEncoding) > 0 {
		w.Header().Set("Connection", "close")
	}
}

// connLimiter is the module listener's bound on connections, before any
// of them has sent a byte: at most max open at once (Accept waits for
// one to close), and at most perClient from one client address (further
// ones are closed at once). A connection counts until it is closed, also
// after a CONNECT hijacked it for a tunnel or an interception: the
// listener's connections and the intercepted ones share the bound.
type connLimiter struct {
	net.Listener
	perClient int

	slots     chan struct{}
	done      chan struct{} // closed by Close: a waiting Accept gives up
	closeOnce sync.Once

	mu      sync.Mutex
	clients map[string]int
}

func newConnLimiter(ln net.Listener, max, perClient int) *connLimiter {
	if max <= 0 {
		max = DefaultMaxConnections
	}
	if perClient <= 0 {
		perClient = DefaultMaxConnectionsPerClient
	}
	return &connLimiter{Listener: ln, perClient: perClient, slots: make(chan struct{}, max), done: make(chan struct{}), clients: map[string]int{}}
}

// Close closes the listener and wakes an Accept that waits for a slot.
func (l *connLimiter) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// Accept waits for a free slot, then returns the next connection whose
// client has connections to spare.
func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		select {
		case l.slots <- struct{}{}:
		case <-l.done:
			return nil, net.ErrClosed
		}
		c, err := l.Listener.Accept()
		if err != nil {
			<-l.slots
			return nil, err
		}
		client := clientIP(c.RemoteAddr().String())
		l.mu.Lock()
		if l.clients[client] >= l.perClient {
			l.mu.Unlock()
			<-l.slots
			c.Close()
			continue
		}
		l.clients[client]++
		l.mu.Unlock()
		return &limitedConn{Conn: c, l: l, client: client}, nil
	}
}

func (l *connLimiter) release(client string) {
	l.mu.Lock()
	if l.clients[client]--; l.clients[client] <= 0 {
		delete(l.clients, client)
	}
	l.mu.Unlock()
	<-l.slots
}

// limitedConn gives its slot back when it is first closed.
type limitedConn struct {
	net.Conn
	l      *connLimiter
	client string
	once   sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.client) })
	return err
}
