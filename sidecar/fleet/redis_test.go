package fleet

import (
	"fmt"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/modgate/modgate/sidecar/fleettest"
)

// redisServer is fleettest's redis-server with what this package's tests
// add: URLs with a password, a raw client, and kill and start as the
// tests spell them.
type redisServer struct {
	*fleettest.RedisServer
	t *testing.T
}

// startRedis starts redis-server on a free loopback port, without
// persistence; extra are more arguments (e.g. "--requirepass", "pw").
func startRedis(t *testing.T, extra ...string) *redisServer {
	t.Helper()
	return &redisServer{RedisServer: fleettest.Redis(t, extra...), t: t}
}

// URL is the redis:// URL of the server, with password if not empty.
func (s *redisServer) URL(password string) string {
	if password != "" {
		return fmt.Sprintf("redis://:%s@%s/0", password, s.Addr)
	}
	return fmt.Sprintf("redis://%s/0", s.Addr)
}

// kill stops the server at once, as a crash would.
func (s *redisServer) kill() { s.Kill() }

// start starts the server again on its port (empty) and waits for it.
func (s *redisServer) start() { s.Restart(s.t) }

// client is a raw client of the server, for looking at what the fleet
// stored.
func (s *redisServer) client(password string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr, Password: password})
	s.t.Cleanup(func() { c.Close() })
	return c
}
