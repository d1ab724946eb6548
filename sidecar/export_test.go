package sidecar

import "github.com/modgate/modgate/sidecar/upstream"

// Settle waits for the fetches under way to finish, writes to the shared
// store included: they outlive the requests that started them.
func (s *Server) Settle() { s.flying.Wait() }

// Upstreams is the server's chain, for tests that look at breakers.
func (s *Server) Upstreams() []*upstream.Upstream { return s.chain.Upstreams() }
