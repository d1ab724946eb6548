package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"strings"
	"sync"
	"time"
)

// The proxies under test run as child processes of this program (the same
// binary, started with -role): their RSS and heap are then their own, not
// the load generator's, and the floor and modgate are treated alike. Each
// child prints its addresses as one JSON line on standard output, serves
// until its standard input closes, and answers the parent on a control
// listener that is not on the measured path.

// childAddrs is the line a child prints when it is ready.
type childAddrs struct {
	HTTP    string `json:"http"` // the proxy's listener
	Control string `json:"control"`
}

// runChild serves role until standard input closes.
func runChild(role, origin string) error {
	if role != "floor" {
		return fmt.Errorf("unknown role %q", role)
	}
	ctl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addrs := childAddrs{Control: ctl.Addr().String()}
	h, err := newFloor(origin)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second}
	go srv.Serve(ln)
	addrs.HTTP = ln.Addr().String()
	go http.Serve(ctl, newControl())
	if err := json.NewEncoder(os.Stdout).Encode(addrs); err != nil {
		return err
	}
	io.Copy(io.Discard, os.Stdin) // until the parent closes it, or dies
	return srv.Close()
}

// control is a child's control listener: memory while streaming, the
// allocation counters, and a CPU profile of the child alone.
type control struct {
	mu      sync.Mutex
	watch   *memWatch
	profile *os.File
}

func newControl() http.Handler {
	c := &control{}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /mem/start", func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.watch != nil {
			c.watch.stop()
		}
		var err error
		if c.watch, err = startMemWatch(); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	mux.HandleFunc("POST /mem/stop", func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.watch == nil {
			http.Error(w, "not watching", http.StatusConflict)
			return
		}
		rep := c.watch.stop()
		c.watch = nil
		json.NewEncoder(w).Encode(rep)
	})
	mux.HandleFunc("GET /allocs", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(readAllocs())
	})
	mux.HandleFunc("POST /profile/start", func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		defer c.mu.Unlock()
		f, err := os.Create(r.URL.Query().Get("path"))
		if err == nil {
			if err = pprof.StartCPUProfile(f); err != nil {
				f.Close()
			}
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		c.profile = f
	})
	mux.HandleFunc("POST /profile/stop", func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.profile != nil {
			pprof.StopCPUProfile()
			c.profile.Close()
			c.profile = nil
		}
	})
	return mux
}

// allocCounts are the process's cumulative heap allocations, as
// go test -benchmem counts them (runtime.MemStats Mallocs and TotalAlloc).
type allocCounts struct {
	Objects uint64 `json:"objects"`
	Bytes   uint64 `json:"bytes"`
}

func readAllocs() allocCounts {
	s := []metrics.Sample{
		{Name: "/gc/heap/allocs:objects"},
		{Name: "/gc/heap/tiny/allocs:objects"},
		{Name: "/gc/heap/allocs:bytes"},
	}
	metrics.Read(s)
	return allocCounts{Objects: s[0].Value.Uint64() + s[1].Value.Uint64(), Bytes: s[2].Value.Uint64()}
}

// memReport is how a child's memory grew while it was watched.
type memReport struct {
	RSSBefore  int64  `json:"rss_before"`  // bytes, after a GC, when watching started
	PeakRSS    int64  `json:"peak_rss"`    // the kernel's high-water mark since then (VmHWM)
	HeapBefore uint64 `json:"heap_before"` // heap in use (HeapInuse) when watching started
	HeapPeak   uint64 `json:"heap_peak"`   // the most heap in use seen, sampled every 2 ms
}

type memWatch struct {
	rep  memReport
	quit chan struct{}
	done chan struct{}
}

// startMemWatch collects garbage, resets the kernel's peak RSS of this
// process (clear_refs 5) and samples the heap until stop.
func startMemWatch() (*memWatch, error) {
	runtime.GC()
	if err := resetPeakRSS(); err != nil {
		return nil, err
	}
	rss, err := procStatus("VmRSS")
	if err != nil {
		return nil, err
	}
	m := &memWatch{quit: make(chan struct{}), done: make(chan struct{})}
	m.rep.RSSBefore = rss
	m.rep.HeapBefore = heapInUse()
	m.rep.HeapPeak = m.rep.HeapBefore
	go func() {
		defer close(m.done)
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-m.quit:
				return
			case <-t.C:
				m.rep.HeapPeak = max(m.rep.HeapPeak, heapInUse())
			}
		}
	}()
	return m, nil
}

func (m *memWatch) stop() memReport {
	close(m.quit)
	<-m.done
	m.rep.HeapPeak = max(m.rep.HeapPeak, heapInUse())
	m.rep.PeakRSS, _ = procStatus("VmHWM")
	return m.rep
}

// heapInUse is runtime.MemStats.HeapInuse, read without stopping the world.
func heapInUse() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/unused:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64() + s[1].Value.Uint64()
}

// child is the parent's handle on a child process: this program as the
// floor (with a control listener), or an external proxy (modgate run,
// nginx, Squid).
type child struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser // this program's children end when it is closed
	addrs childAddrs
	admin string // modgate's admin listener: /metrics, /debug/pprof
	ctl   *http.Client

	profileDone chan struct{} // a profile being fetched from /debug/pprof
	rssBefore   int64         // external children: VmRSS when a memory watch began
}

// keepZip fetches the zip through the modgate c until c's cache serves it
// (modgate_cache_requests{result="hit"} counts one), at most a minute.
func keepZip(c *child) error {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		resp, err := c.ctl.Get("http://" + c.addrs.HTTP + zipPath)
		if err != nil {
			return fmt.Errorf("%s: warming the zip: %w", c.name, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		m, err := c.ctl.Get("http://" + c.admin + "/metrics")
		if err != nil {
			return fmt.Errorf("%s: /metrics: %w", c.name, err)
		}
		b, _ := io.ReadAll(m.Body)
		m.Body.Close()
		if strings.Contains(string(b), `modgate_cache_requests_total{modgate_cache_result="hit"`) {
			return nil
		}
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("%s: the zip was not kept within a minute", c.name)
}

// fill fetches every path through the modgate c once, so that its cache
// holds them.
func fill(c *child, paths []string) error {
	for _, p := range paths {
		resp, err := c.ctl.Get("http://" + c.addrs.HTTP + p)
		if err != nil {
			return fmt.Errorf("%s: filling the cache: %w", c.name, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: filling the cache: %s: %s", c.name, p, resp.Status)
		}
	}
	return nil
}

// startChild starts this program again as role with args and waits for
// its addresses.
func startChild(name, role string, args ...string) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, append([]string{"-role", role}, args...)...)
	cmd.Stderr = os.Stderr
	setParentDeathSignal(cmd)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{name: name, cmd: cmd, stdin: stdin, ctl: &http.Client{Timeout: 30 * time.Second}}
	line := make(chan error, 1)
	go func() {
		l, err := bufio.NewReader(stdout).ReadBytes('\n')
		if err == nil {
			err = json.Unmarshal(l, &c.addrs)
		}
		line <- err
		io.Copy(io.Discard, stdout)
	}()
	select {
	case err = <-line:
	case <-time.After(30 * time.Second):
		err = errors.New("not ready after 30s")
	}
	if err != nil {
		c.stop()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return c, nil
}

// stop ends the child: this program's by closing its standard input, the
// others with SIGTERM; any of them is killed if it has not exited after
// 10 s.
func (c *child) stop() {
	if c.stdin == nil {
		signalStop(c.cmd)
		return
	}
	c.stdin.Close()
	exited := make(chan struct{})
	go func() { c.cmd.Wait(); close(exited) }()
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-exited
	}
}

// cpu is the CPU time the child (and its worker processes) used so far.
func (c *child) cpu() time.Duration { return treeCPU(c.cmd.Process.Pid) }

// memStart resets the child's peak RSS and, for this program's children,
// starts sampling its heap.
func (c *child) memStart() error {
	if c.addrs.Control != "" {
		return c.call("POST", "/mem/start", nil)
	}
	pid := c.cmd.Process.Pid
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		return err
	}
	var err error
	c.rssBefore, err = pidStatus(pid, "VmRSS")
	return err
}

// memStop reports how the child's memory grew since memStart. External
// children report RSS only (heap stays zero).
func (c *child) memStop() (*memReport, error) {
	if c.addrs.Control != "" {
		var rep memReport
		err := c.call("POST", "/mem/stop", &rep)
		return &rep, err
	}
	peak, err := pidStatus(c.cmd.Process.Pid, "VmHWM")
	return &memReport{RSSBefore: c.rssBefore, PeakRSS: peak}, err
}

// profileStart starts a CPU profile of the child into path, for about d:
// this program's children until profileStop, modgate through its
// /debug/pprof/profile (--pprof). Peers are not profiled.
func (c *child) profileStart(path string, d time.Duration) error {
	switch {
	case c.addrs.Control != "":
		return c.call("POST", "/profile/start?path="+path, nil)
	case c.admin != "":
		// A CPU profile, and the allocations over the same span (the
		// allocs profile with seconds is a delta) next to it.
		c.profileDone = make(chan struct{})
		secs := max(1, int(d.Round(time.Second)/time.Second))
		fetch := func(url, path string) {
			resp, err := (&http.Client{Timeout: d + time.Minute}).Get(url)
			if err != nil {
				fmt.Fprintf(os.Stderr, "bench: profile of %s: %v\n", c.name, err)
				return
			}
			defer resp.Body.Close()
			f, err := os.Create(path)
			if err == nil {
				io.Copy(f, resp.Body)
				f.Close()
			}
		}
		go func() {
			defer close(c.profileDone)
			var wg sync.WaitGroup
			wg.Go(func() { fetch(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", c.admin, secs), path) })
			wg.Go(func() {
				fetch(fmt.Sprintf("http://%s/debug/pprof/allocs?seconds=%d", c.admin, secs), strings.TrimSuffix(path, ".cpu.pprof")+".allocs.pprof")
			})
			wg.Wait()
		}()
	}
	return nil
}

func (c *child) profileStop() {
	switch {
	case c.addrs.Control != "":
		c.call("POST", "/profile/stop", nil)
	case c.profileDone != nil:
		<-c.profileDone
		c.profileDone = nil
	}
}

func (c *child) call(method, path string, out any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+c.addrs.Control+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.ctl.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s: %s", c.name, path, resp.Status, body)
	}
	if out != nil {
		return json.Unmarshal(body, out)
	}
	return nil
}

// allocs is the child's cumulative heap allocations, if it is a Go
// process that says (ok false for nginx and Squid).
func (c *child) allocs() (a allocCounts, ok bool) {
	switch {
	case c.addrs.Control != "":
		return a, c.call(http.MethodGet, "/allocs", &a) == nil
	case c.admin != "":
		a, err := scrapeAllocs(c.ctl, c.admin)
		return a, err == nil
	}
	return a, false
}
