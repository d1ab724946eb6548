package modtest

import (
	"io"
	"net"
	"sync"
)

// A Relay forwards connections on a fixed loopback port to a target while
// it is up; while it is down the port refuses connections. Put in front of
// a fake upstream, it makes the "connection refused" fault, which a fake
// upstream cannot make by itself.
type Relay struct {
	target string
	addr   string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

// NewRelay starts a relay to target on a free loopback port.
func NewRelay(target string) (*Relay, error) {
	r := &Relay{target: target, conns: map[net.Conn]bool{}}
	if err := r.Up(); err != nil {
		return nil, err
	}
	r.addr = r.ln.Addr().String()
	return r, nil
}

// Addr is the relay's "127.0.0.1:port", the same while up and down.
func (r *Relay) Addr() string { return r.addr }

// Up listens again on the relay's port; it does nothing when already up.
func (r *Relay) Up() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ln != nil {
		return nil
	}
	addr := r.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	r.ln = ln
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.wg.Add(1)
			go r.forward(c)
		}
	}()
	return nil
}

func (r *Relay) forward(c net.Conn) {
	defer r.wg.Done()
	d, err := net.Dial("tcp", r.target)
	if err != nil {
		c.Close()
		return
	}
	r.mu.Lock()
	if r.ln == nil { // went down while dialling
		r.mu.Unlock()
		c.Close()
		d.Close()
		return
	}
	r.conns[c], r.conns[d] = true, true
	r.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { io.Copy(d, c); done <- struct{}{} }()
	go func() { io.Copy(c, d); done <- struct{}{} }()
	<-done
	c.Close()
	d.Close()
	<-done
	r.mu.Lock()
	delete(r.conns, c)
	delete(r.conns, d)
	r.mu.Unlock()
}

// Down stops listening and cuts every connection, then waits for the
// relay's goroutines to end.
func (r *Relay) Down() {
	r.mu.Lock()
	if r.ln != nil {
		r.ln.Close()
		r.ln = nil
	}
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}
