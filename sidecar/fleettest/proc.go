package fleettest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// readyTimeout bounds how long a server may take to answer after it starts.
const readyTimeout = 30 * time.Second

// proc is one server binary that can be started, killed and started again
// with the same arguments (and so on the same port).
type proc struct {
	name    string   // for messages: "redis-server", "versitygw"
	bin     string   // path of the binary
	args    []string // the same on every start
	env     []string // the child's whole environment
	dir     string   // working directory
	logPath string   // stdout and stderr of every start, appended
	ready   func() error

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
}

// start runs the binary and waits until ready answers, the process exits,
// or readyTimeout passes. On error the process is not running.
func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return fmt.Errorf("%s: already running", p.name)
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "=== fleettest: starting %s %s\n", p.bin, strings.Join(quoteArgs(p.args), " "))
	cmd := exec.Command(p.bin, p.args...)
	cmd.Dir = p.dir
	cmd.Env = p.env
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", p.bin, err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		fmt.Fprintf(logf, "=== fleettest: %s exited: %v\n", p.name, waitErr)
		logf.Close()
		close(exited)
	}()
	p.cmd, p.exited = cmd, exited

	deadline := time.Now().Add(readyTimeout)
	for {
		err := p.ready()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			p.cmd, p.exited = nil, nil
			return fmt.Errorf("%s exited before it answered (%v):\n%s", p.name, waitErr, p.logTail())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.killLocked()
			return fmt.Errorf("%s did not answer within %v (last: %v):\n%s", p.name, readyTimeout, err, p.logTail())
		}
	}
}

// kill sends SIGKILL and waits for the process to be gone. It does nothing
// when the process is not running.
func (p *proc) kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.killLocked()
}

func (p *proc) killLocked() {
	if p.cmd == nil {
		return
	}
	p.cmd.Process.Kill()
	<-p.exited
	p.cmd, p.exited = nil, nil
}

// stop asks the process to end (SIGTERM) and kills it if it has not
// within a few seconds. For cleanup, where a clean exit keeps the log tidy.
func (p *proc) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		p.cmd, p.exited = nil, nil
	case <-time.After(5 * time.Second):
		p.killLocked()
	}
}

// restart kills the process if it runs and starts it again with the same
// arguments.
func (p *proc) restart(t testing.TB) {
	t.Helper()
	p.kill()
	if err := p.start(); err != nil {
		t.Fatalf("fleettest: restart: %v", err)
	}
}

// cleanup stops the process at the end of t and prints its log if t failed.
func (p *proc) cleanup(t testing.TB) {
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("%s log (%s):\n%s", p.name, p.logPath, p.logTail())
		}
	})
}

func (p *proc) logTail() string {
	b, _ := os.ReadFile(p.logPath)
	const max = 8 << 10
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}

// binary returns the path in the environment variable env when that file
// exists, else the first fallback found on PATH, and skips t when there is
// neither.
func binary(t testing.TB, env string, fallback ...string) string {
	t.Helper()
	why := env + " is not set"
	if bin := os.Getenv(env); bin != "" {
		_, err := os.Stat(bin)
		if err == nil {
			return bin
		}
		// `make test` names Debian's path; elsewhere the binary may be
		// on PATH instead.
		why = fmt.Sprintf("%s=%s: %v", env, bin, err)
	}
	for _, name := range fallback {
		if bin, err := exec.LookPath(name); err == nil {
			return bin
		}
	}
	if len(fallback) > 0 {
		why += " and no " + strings.Join(fallback, " or ") + " on PATH"
	}
	t.Skipf("fleettest: %s; make test installs it", why)
	return ""
}

// freeAddr returns a loopback address with a port that was free a moment
// ago. Another process may take it before the server binds it, so callers
// try again with a new one when the server fails to start.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// startOnFreePort builds a proc for a free loopback address and starts it,
// trying three addresses before it fails t.
func startOnFreePort(t testing.TB, build func(addr string) *proc) (*proc, string) {
	t.Helper()
	var errs []error
	for range 3 {
		addr, err := freeAddr()
		if err != nil {
			t.Fatalf("fleettest: %v", err)
		}
		p := build(addr)
		if err := p.start(); err != nil {
			errs = append(errs, err)
			continue
		}
		p.cleanup(t)
		return p, addr
	}
	t.Fatalf("fleettest: %v", errors.Join(errs...))
	return nil, ""
}

// childEnv is the test process's environment without the variables whose
// prefix is in drop: a server must not pick up a developer's settings
// (a versitygw VGW_WEBUI_PORT would open a port beyond loopback).
func childEnv(drop ...string) []string {
	var env []string
next:
	for _, kv := range os.Environ() {
		for _, prefix := range drop {
			if strings.HasPrefix(kv, prefix) {
				continue next
			}
		}
		env = append(env, kv)
	}
	return env
}

func quoteArgs(args []string) []string {
	q := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\"'") {
			a = fmt.Sprintf("%q", a)
		}
		q[i] = a
	}
	return q
}
