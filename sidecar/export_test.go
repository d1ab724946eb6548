package sidecar

// Settle waits for the fetches under way to finish, writes to the shared
// store included: they outlive the requests that started them.
func (s *Server) Settle() { s.flying.Wait() }
