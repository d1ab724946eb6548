package fleet

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisServer is a real redis-server on a loopback port, for one test.
type redisServer struct {
	t    *testing.T
	bin  string
	port int
	dir  string
	args []string
	cmd  *exec.Cmd
}

// startRedis starts redis-server (from $REDIS_SERVER, else on PATH) on a
// free loopback port, without persistence, and waits until it answers
// PING. extra are more arguments (e.g. "--requirepass", "pw"). The
// server is killed when the test ends.
func startRedis(t *testing.T, extra ...string) *redisServer {
	t.Helper()
	bin := os.Getenv("REDIS_SERVER")
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("redis-server"); err != nil {
			t.Skip("redis-server not found; make test installs it")
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := &redisServer{t: t, bin: bin, port: port, dir: t.TempDir(), args: extra}
	s.start()
	t.Cleanup(s.kill)
	return s
}

// Addr is the server's host:port.
func (s *redisServer) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// URL is the redis:// URL of the server, with password if not empty.
func (s *redisServer) URL(password string) string {
	if password != "" {
		return fmt.Sprintf("redis://:%s@%s/0", password, s.Addr())
	}
	return fmt.Sprintf("redis://%s/0", s.Addr())
}

// start (re)starts the server on its port and waits for PING.
func (s *redisServer) start() {
	s.t.Helper()
	args := append([]string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir,
		"--logfile", filepath.Join(s.dir, "redis.log"),
	}, s.args...)
	s.cmd = exec.Command(s.bin, args...)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("redis-server: %v", err)
	}
	opt := &redis.Options{Addr: s.Addr(), DialTimeout: 100 * time.Millisecond, MaxRetries: -1, DialerRetries: 1}
	for i := 0; i+1 < len(s.args); i++ {
		if s.args[i] == "--requirepass" {
			opt.Password = s.args[i+1]
		}
	}
	c := redis.NewClient(opt)
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := c.Ping(context.Background()).Err()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			s.t.Fatalf("redis-server on %s does not answer: %v\n%s", s.Addr(), err, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill stops the server (at once, as a crash would).
func (s *redisServer) kill() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	s.cmd.Wait()
	s.cmd = nil
}

// client is a raw client of the server, for looking at what the fleet
// stored.
func (s *redisServer) client(password string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), Password: password})
	s.t.Cleanup(func() { c.Close() })
	return c
}
