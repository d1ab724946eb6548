package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The modgate columns are the binary users run, `modgate run`, started as
// a child process and configured the way users configure it: a config
// file, flags and environment variables. nginx and Squid are the peers, as
// Debian installs them. None of them speaks to this program except through
// its listeners; this program reads their CPU time and memory from /proc.

// modgateConfig is the config file every modgate column shares: the origin
// as its one upstream, the bench policy, forward mode allowed to reach the
// origin's ports. What differs between columns (the audit log's file,
// telemetry, the cache) comes from the environment and flags.
const modgateConfig = `# modgate bench: the config every modgate column shares.
upstreams:
  - name: origin
    url: %s
sumdb: {name: "off"}            # the verifying columns give --sumdb name+key
policy_file: %s
log: {level: info, format: json}
forward:
  allow_hosts: ["127.0.0.1"]   # named without a wildcard: the loopback origin is trusted
  connect_ports: [%s]
`

// modgateColumn is one way to run modgate.
type modgateColumn struct {
	name  string
	about string   // for the table's notes
	env   []string // besides the audit log
	flags []string // besides --config, --listen, --admin, --pprof
	// otlp: the receiver's URL goes into OTEL_EXPORTER_OTLP_ENDPOINT.
	otlp bool
}

// Every column but "unverified" verifies .mod and .zip answers against the
// origin's checksum database ({sumdb}: --sumdb name+key, as GOSUMDB gives
// it), as modgate does wherever the go command's database is known.
var modgateColumns = []modgateColumn{
	{name: "modgate", about: "modgate run as shipped: --sumdb name+key (verified), no OTLP endpoint, default sampler (parent-based, 100 new traces/s)", flags: []string{"--sumdb", "{sumdb}"}},
	{name: "sdk-off", about: "the same with OTEL_SDK_DISABLED=true", env: []string{"OTEL_SDK_DISABLED=true"}, flags: []string{"--sumdb", "{sumdb}"}},
	{name: "otlp", about: "OTLP/HTTP export to a local receiver (OTEL_EXPORTER_OTLP_ENDPOINT), default sampler", otlp: true, flags: []string{"--sumdb", "{sumdb}"}},
	{name: "always-on", about: "OTLP export with OTEL_TRACES_SAMPLER=always_on: every request is a trace", otlp: true, env: []string{"OTEL_TRACES_SAMPLER=always_on"}, flags: []string{"--sumdb", "{sumdb}"}},
	{name: "cached", about: "modgate run --cache-dir (default telemetry); the rows it serves are cache hits after the warm-up (the zip: verified once)", flags: []string{"--sumdb", "{sumdb}", "--cache-dir", "{dir}/cache"}},
	{name: "unverified", about: "modgate as shipped with sumdb off: nothing verified (.mod relayed unchecked, a zip streams as it arrives)"},
}

// freePort reserves a loopback port for a child to listen on.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// cleanEnv is this process's environment without the variables that would
// configure a child behind the bench's back.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "OTEL_") || strings.HasPrefix(kv, "MODGATE_") || strings.HasPrefix(kv, "AWS_") || strings.HasPrefix(kv, "GOMAXPROCS=") ||
			strings.HasPrefix(strings.ToUpper(kv), "HTTP_PROXY=") || strings.HasPrefix(strings.ToUpper(kv), "HTTPS_PROXY=") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// startModgate starts `modgate run` as column c, in dir, with configFile
// and the checksum database's key, and waits until its admin listener says it is ready.
func startModgate(bin, dir, configFile, receiver, sumdbKey string, c modgateColumn) (*child, error) {
	listen, err := freePort()
	if err != nil {
		return nil, err
	}
	admin, err := freePort()
	if err != nil {
		return nil, err
	}
	// No cache unless the column asks for one (modgate run's default is
	// a per-user cache folder, which would serve every column's hits).
	args := []string{"run", "--config", configFile, "--listen", listen, "--admin", admin, "--pprof", "--cache-dir", ""}
	for _, f := range c.flags {
		args = append(args, strings.NewReplacer("{dir}", dir, "{sumdb}", sumdbKey).Replace(f))
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(cleanEnv(), "MODGATE_AUDIT_LOG="+filepath.Join(dir, c.name+".audit.jsonl"))
	cmd.Env = append(cmd.Env, c.env...)
	if c.otlp {
		cmd.Env = append(cmd.Env, "OTEL_EXPORTER_OTLP_ENDPOINT="+receiver)
	}
	log, err := os.Create(filepath.Join(dir, c.name+".log"))
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	setParentDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ch := &child{name: c.name, cmd: cmd, addrs: childAddrs{HTTP: listen}, admin: admin, ctl: &http.Client{Timeout: 60 * time.Second}}
	if err := waitHTTP("http://"+admin+"/readyz", cmd); err != nil {
		ch.stop()
		data, _ := os.ReadFile(log.Name())
		return nil, fmt.Errorf("%s: %w\n%s", c.name, err, data)
	}
	return ch, nil
}

// waitHTTP polls url until it answers 200, for up to 30 s, or until cmd
// has exited.
func waitHTTP(url string, cmd *exec.Cmd) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if cmd.ProcessState != nil {
			return errors.New("exited")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after 30s", url)
}

// waitTCP waits until addr accepts connections.
func waitTCP(addr string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s does not accept connections after 30s", addr)
}

// Where Debian installs the peers (`make bench` installs them).
var (
	nginxBin = "/usr/sbin/nginx"
	squidBin = "/usr/sbin/squid"
)

// nginxConfig is nginx as a reverse proxy in front of the origin, tuned as
// its documentation says for proxying: HTTP/1.1 with a pool of keep-alive
// connections to the upstream, no access log, no buffering to disk.
const nginxConfig = `%s
worker_processes auto;
pid %s/nginx.pid;
error_log %s/nginx.error.log warn;
daemon off;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %s/nginx-client;
  proxy_temp_path %s/nginx-proxy;
  fastcgi_temp_path %s/nginx-fastcgi;
  uwsgi_temp_path %s/nginx-uwsgi;
  scgi_temp_path %s/nginx-scgi;
  keepalive_requests 1000000;
  upstream origin {
    server %s;
    keepalive 64;
  }
  server {
    listen %s;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
  # nginx-file: the origin's answers as files, served as Debian's default
  # site serves them (sendfile on, tcp_nopush on), the peer of modgate's
  # cache hits.
  sendfile on;
  tcp_nopush on;
  server {
    listen %s;
    root %s;
    default_type application/octet-stream;
  }
}
`

// startNginx starts nginx in front of originAddr, or says why it cannot.
// The same nginx serves the files under www on a second listener: files
// is that column, the same process as the proxy (only one of them is
// loaded at a time, so the process's CPU time is that column's).
func startNginx(dir, originAddr, www string) (proxy, files *child, err error) {
	if _, err := os.Stat(nginxBin); err != nil {
		return nil, nil, fmt.Errorf("nginx: %w (make bench installs Debian's nginx)", err)
	}
	listen, err := freePort()
	if err != nil {
		return nil, nil, err
	}
	fileListen, err := freePort()
	if err != nil {
		return nil, nil, err
	}
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;" // its workers then write the temporary folders made here
	}
	conf := filepath.Join(dir, "nginx.conf")
	d := dir
	text := fmt.Sprintf(nginxConfig, user, d, d, d, d, d, d, d, originAddr, listen, fileListen, www)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return nil, nil, err
	}
	if proxy, err = startPeer("nginx", exec.Command(nginxBin, "-c", conf, "-p", dir), dir, listen); err != nil {
		return nil, nil, err
	}
	if err := waitTCP(fileListen); err != nil {
		proxy.stop()
		return nil, nil, fmt.Errorf("nginx files: %w", err)
	}
	return proxy, &child{name: "nginx-file", cmd: proxy.cmd, addrs: childAddrs{HTTP: fileListen}}, nil
}

// squidConfig is Squid as a forward proxy for the loopback origin, caching
// nothing (the floor and modgate cache nothing in those rows either) and
// logging nothing per request, with persistent connections both ways (its
// defaults).
const squidConfig = `http_port %s
pid_filename %s/squid.pid
cache_log %s/squid.cache.log
access_log none
cache_store_log none
cache deny all
cache_mem 8 MB
coredump_dir %s
http_access allow all
shutdown_lifetime 0 seconds
`

// startSquid starts Squid as a forward proxy, or says why it cannot.
func startSquid(dir string) (*child, error) {
	if _, err := os.Stat(squidBin); err != nil {
		return nil, fmt.Errorf("squid: %w (make bench installs Debian's squid)", err)
	}
	listen, err := freePort()
	if err != nil {
		return nil, err
	}
	sdir := filepath.Join(dir, "squid")
	if err := os.MkdirAll(sdir, 0o777); err != nil {
		return nil, err
	}
	os.Chmod(sdir, 0o777) // Squid run by root drops to its own user
	conf := filepath.Join(sdir, "squid.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(squidConfig, listen, sdir, sdir, sdir)), 0o644); err != nil {
		return nil, err
	}
	return startPeer("squid", exec.Command(squidBin, "-N", "-f", conf), sdir, listen)
}

func startPeer(name string, cmd *exec.Cmd, dir, listen string) (*child, error) {
	log, err := os.Create(filepath.Join(dir, name+".out"))
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = cleanEnv()
	setParentDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, addrs: childAddrs{HTTP: listen}}
	if err := waitTCP(listen); err != nil {
		c.stop()
		data, _ := os.ReadFile(log.Name())
		return nil, fmt.Errorf("%s: %w\n%s", name, err, data)
	}
	return c, nil
}

// processTree is pid and its descendants.
func processTree(pid int) []int {
	pids := []int{pid}
	for i := 0; i < len(pids); i++ {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pids[i]))
		for _, t := range tasks {
			data, _ := os.ReadFile(t)
			for _, f := range strings.Fields(string(data)) {
				if n, err := strconv.Atoi(f); err == nil {
					pids = append(pids, n)
				}
			}
		}
	}
	return pids
}

// clockTick is USER_HZ, the unit of /proc/PID/stat's times (100 on Linux
// everywhere).
const clockTick = 10 * time.Millisecond

// treeCPU is the CPU time (user and system) pid and its descendants have
// used, from /proc.
func treeCPU(pid int) time.Duration {
	var total time.Duration
	for _, p := range processTree(pid) {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		// The command name is in parentheses and may hold spaces; the
		// fields after it start with the state (field 3).
		s := string(data)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 13 {
			continue
		}
		utime, _ := strconv.ParseInt(f[11], 10, 64) // field 14
		stime, _ := strconv.ParseInt(f[12], 10, 64) // field 15
		total += time.Duration(utime+stime) * clockTick
	}
	return total
}

// pidStatus reads a "kB" field of /proc/PID/status, in bytes.
func pidStatus(pid int, field string) (int64, error) { return statusField(fmt.Sprint(pid), field) }

// statusField reads a "kB" field of /proc/<proc>/status ("self" or a
// PID), in bytes.
func statusField(proc, field string) (int64, error) {
	name := "/proc/" + proc + "/status"
	f, err := os.Open(name)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kb); err != nil {
				return 0, fmt.Errorf("%s %s: %v", name, field, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no %s in %s", field, name)
}

// scrapeAllocs reads the Go runtime's cumulative allocations from a
// modgate's /metrics (go.opentelemetry.io/contrib/instrumentation/runtime:
// go.memory.allocations and go.memory.allocated).
func scrapeAllocs(c *http.Client, admin string) (allocCounts, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/metrics", nil)
	resp, err := c.Do(req)
	if err != nil {
		return allocCounts{}, err
	}
	defer resp.Body.Close()
	var a allocCounts
	var found int
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		for _, m := range []struct {
			name string
			v    *uint64
		}{{"go_memory_allocations_total", &a.Objects}, {"go_memory_allocated_bytes_total", &a.Bytes}} {
			if rest, ok := strings.CutPrefix(line, m.name); ok && (rest[0] == ' ' || rest[0] == '{') {
				f := strings.Fields(line)
				v, err := strconv.ParseFloat(f[len(f)-1], 64)
				if err == nil {
					*m.v = uint64(v)
					found++
				}
			}
		}
	}
	io.Copy(io.Discard, resp.Body)
	if found < 2 {
		return a, errors.New("no go_memory_allocations_total / go_memory_allocated_bytes_total on /metrics")
	}
	return a, nil
}

// signalStop asks a process to stop (SIGTERM), then kills it after 10 s.
func signalStop(cmd *exec.Cmd) {
	cmd.Process.Signal(syscall.SIGTERM)
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
}
