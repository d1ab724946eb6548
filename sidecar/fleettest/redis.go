package fleettest

import (
	"bufio"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// EnvRedis names the environment variable that holds the path of
// redis-server. Without it, redis-server is looked up on PATH.
const EnvRedis = "REDIS_SERVER"

// RedisServer is one running redis-server on loopback, with no persistence:
// a restart starts it empty, as a Redis without a volume would.
type RedisServer struct {
	// Addr is its address, "127.0.0.1:port".
	Addr string

	p *proc
}

// Redis runs redis-server for the rest of t on a free loopback port and
// waits until it answers PING. extra are more arguments (e.g.
// "--requirepass", "pw"). It skips t when there is no redis-server.
func Redis(t testing.TB, extra ...string) *RedisServer {
	t.Helper()
	bin := binary(t, EnvRedis, "redis-server")
	dir := t.TempDir()
	p, addr := startOnFreePort(t, func(addr string) *proc {
		_, port, _ := net.SplitHostPort(addr)
		return &proc{
			name: "redis-server",
			bin:  bin,
			// No config file: Debian's /etc/redis/redis.conf is not read.
			args: append([]string{
				"--bind", "127.0.0.1",
				"--port", port,
				"--save", "",
				"--appendonly", "no",
				"--dir", dir,
				"--daemonize", "no",
				"--protected-mode", "yes",
				"--logfile", "",
			}, extra...),
			env:     childEnv(),
			dir:     dir,
			logPath: filepath.Join(dir, "redis.log"),
			ready:   func() error { return ping(addr) },
		}
	})
	return &RedisServer{Addr: addr, p: p}
}

// URL is the server's address as a go-redis URL, database 0:
// "redis://127.0.0.1:port/0".
func (r *RedisServer) URL() string { return "redis://" + r.Addr + "/0" }

// Kill ends the server with SIGKILL and waits until it has exited.
func (r *RedisServer) Kill() { r.p.kill() }

// Restart kills the server if it runs, starts it again on the same port
// (empty) and waits until it answers PING.
func (r *RedisServer) Restart(t testing.TB) {
	t.Helper()
	r.p.restart(t)
}

// ping sends PING in the Redis protocol and expects PONG.
func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	// A server with a password answers, if not PONG: that is enough.
	if line != "+PONG\r\n" && !strings.HasPrefix(line, "-NOAUTH") {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}
