package deploy

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

// ---- Grafana dashboard and Prometheus alert rules ----

const (
	dashboardFile = "grafana/modgate-dashboard.json"
	alertsFile    = "prometheus/modgate-alerts.yaml"
)

// targetLabels are added by Prometheus when it scrapes, not by modgate.
var targetLabels = []string{"job", "instance"}

// exposition is what a running modgate's /metrics offers: each series name
// (histograms as name_bucket, name_sum and name_count) with its label
// names and the values each label takes.
type exposition map[string]map[string]map[string]bool

// scrapeModgate builds modgate from this repository, runs it with a config
// that exercises every instrument the dashboards use (an upstream that
// fails once, so that a request is retried; a policy that denies one
// module; a cache; a CONNECT tunnel), sends it those requests and returns
// its /metrics.
func scrapeModgate(t *testing.T) exposition {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "modgate")
	build := exec.Command("go", "build", "-o", bin, "./cmd/modgate")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	var flaky atomic.Int32
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/fixture.test/a/@v/v1.0.0.info":
			io.WriteString(w, `{"Version":"v1.0.0","Time":"2024-01-01T00:00:00Z"}`)
		case "/fixture.test/a/@v/list":
			io.WriteString(w, "v1.0.0\n")
		case "/fixture.test/flaky/@v/v1.0.0.info":
			if flaky.Add(1) == 1 {
				http.Error(w, "once", http.StatusInternalServerError)
				return
			}
			io.WriteString(w, `{"Version":"v1.0.0","Time":"2024-01-01T00:00:00Z"}`)
		default:
			http.NotFound(w, r)
		}
	}))
	defer origin.Close()
	_, port, _ := net.SplitHostPort(origin.Listener.Addr().String())
	policy := filepath.Join(dir, "policy.yaml")
	config := filepath.Join(dir, "modgate.yaml")
	secret := filepath.Join(dir, "fleet.secret")
	shared := filepath.Join(dir, "shared")
	if err := os.Mkdir(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{
		policy: "rules:\n  - deny: \"fixture.test/evil\"\n    reason: \"test\"\n  - allow: \"*\"\n",
		// A shared store in a folder, and a Redis that is not there: the
		// fleet's metrics exist either way.
		config: fmt.Sprintf("upstreams:\n  - name: origin\n    url: %s\n    retry: {base: 1ms, cap: 10ms}\nsumdb: {name: \"off\"}\npolicy_file: %s\ncache: {dir: %s, shared: \"file://%s\"}\nfleet: {redis: \"redis://%s/0\", secret_file: %s}\nforward:\n  allow_hosts: [\"127.0.0.1\"]\n  connect_ports: [%s]\n",
			origin.URL, policy, filepath.Join(dir, "cache"), shared, freeAddr(t), secret, port),
		secret: "0123456789abcdef0123456789abcdef\n",
	} {
		if err := os.WriteFile(name, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	listen, admin := freeAddr(t), freeAddr(t)
	cmd := exec.Command(bin, "run", "--config", config, "--listen", listen, "--admin", admin)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	base := "http://" + listen
	waitFor(t, "http://"+admin+"/readyz", &logs)

	for _, c := range []struct {
		path   string
		status int
	}{
		{"/fixture.test/a/@v/v1.0.0.info", 200}, // a cache miss
		{"/fixture.test/a/@v/list", 200},
		{"/fixture.test/flaky/@v/v1.0.0.info", 200}, // retried after a 500
		{"/fixture.test/evil/@v/v1.0.0.info", 403},  // denied
		{"/fixture.test/none/@v/v1.0.0.info", 404},
	} {
		resp, err := http.Get(base + c.path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.status {
			t.Fatalf("%s: %s, want %d\n%s", c.path, resp.Status, c.status, logs.String())
		}
	}
	tunnel(t, listen, origin.Listener.Addr().String())
	// The cache keeps an artifact once its fetch has been written whole,
	// a moment after the answer: ask until one is a hit.
	for i := 0; !strings.Contains(get(t, "http://"+admin+"/metrics"), `modgate_cache_result="hit"`); i++ {
		if i == 50 {
			t.Fatal("no cache hit after 50 requests for one .info")
		}
		time.Sleep(20 * time.Millisecond)
		get(t, base+"/fixture.test/a/@v/v1.0.0.info")
	}

	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	exp := exposition{}
	add := func(series string, m *dto.Metric, extra ...string) {
		if exp[series] == nil {
			exp[series] = map[string]map[string]bool{}
		}
		for _, l := range m.GetLabel() {
			if exp[series][l.GetName()] == nil {
				exp[series][l.GetName()] = map[string]bool{}
			}
			exp[series][l.GetName()][l.GetValue()] = true
		}
		for _, name := range extra {
			exp[series][name] = map[string]bool{}
		}
	}
	for name, f := range families {
		for _, m := range f.GetMetric() {
			if f.GetType() == dto.MetricType_HISTOGRAM {
				add(name+"_bucket", m, "le")
				add(name+"_sum", m)
				add(name+"_count", m)
				continue
			}
			add(name, m)
		}
	}
	return exp
}

// tunnel opens a CONNECT tunnel through modgate to origin, sends one
// request through it and closes it, so that the tunnel metrics exist.
func tunnel(t *testing.T, proxy, origin string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", proxy, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", origin, origin)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	fmt.Fprintf(c, "GET /fixture.test/a/@v/list HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", origin)
	resp, err = http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("through the tunnel: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	c.Close()
	time.Sleep(100 * time.Millisecond) // the tunnel is recorded as it ends
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitFor(t *testing.T, url string, logs fmt.Stringer) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s not ready after 30s:\n%s", url, logs)
}

// query is one PromQL expression of a dashboard or rule file, and where.
type query struct{ where, expr string }

// dashboardQueries returns every PromQL expression of the dashboard, with
// Grafana's variables replaced by what a query can parse.
func dashboardQueries(t *testing.T) []query {
	t.Helper()
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID        string `json:"uid"`
		Title      string `json:"title"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			ID      int    `json:"id"`
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	if err := dec.Decode(&dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if dash.UID == "" || dash.Title == "" {
		t.Errorf("%s: no uid or title", dashboardFile)
	}
	vars := strings.NewReplacer("$__rate_interval", "5m", "${datasource}", "x")
	var qs []query
	ids := map[int]bool{}
	labelValues := regexp.MustCompile(`^label_values\((\w+), *(\w+)\)$`)
	for _, v := range dash.Templating.List {
		if v.Definition == "" {
			continue
		}
		m := labelValues.FindStringSubmatch(v.Definition)
		if m == nil {
			t.Errorf("variable %s: %q is not label_values(metric, label)", v.Name, v.Definition)
			continue
		}
		// label_values(m, l) stands for the series of m that have l.
		qs = append(qs, query{"variable " + v.Name, fmt.Sprintf("count by (%s) (%s)", m[2], m[1])})
		vars = strings.NewReplacer("$__rate_interval", "5m", "${datasource}", "x", "$instance", ".*", "$upstream", ".*")
	}
	for _, p := range dash.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			qs = append(qs, query{"panel " + p.Title, vars.Replace(tg.Expr)})
		}
	}
	return qs
}

// alertQueries parses the alert rules with Prometheus's own rule parser
// (what `promtool check rules` runs) and returns their expressions.
func alertQueries(t *testing.T) []query {
	t.Helper()
	groups, errs := rulefmt.ParseFile(alertsFile, false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Errorf("%s: %v", alertsFile, err)
	}
	if groups == nil {
		t.FailNow()
	}
	var qs []query
	var names []string
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			names = append(names, r.Alert)
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("alert %s: no severity label or summary annotation", r.Alert)
			}
			qs = append(qs, query{"alert " + r.Alert, r.Expr})
		}
	}
	// The issue asks for these.
	for _, want := range []string{"ModgateUpstreamBreakerOpen", "ModgateUpstreamErrorRate", "ModgateUpstreamSlowerThanBaseline", "ModgateCacheHitRatioLow", "ModgatePolicyDenials"} {
		if !slices.Contains(names, want) {
			t.Errorf("no alert %s", want)
		}
	}
	return qs
}

// checkQuery parses q and reports every metric it selects that modgate
// does not expose, every label a selector or an aggregation names that
// those metrics do not carry, and every label value a selector asks for
// with = that no series has.
func checkQuery(t *testing.T, exp exposition, q query) {
	t.Helper()
	expr, err := parser.NewParser(parser.Options{}).ParseExpr(q.expr)
	if err != nil {
		t.Errorf("%s: %v", q.where, err)
		return
	}
	has := func(metric, label string) bool {
		if slices.Contains(targetLabels, label) {
			return true
		}
		_, ok := exp[metric][label]
		return ok
	}
	parser.Inspect(expr, func(n parser.Node, path []parser.Node) error {
		switch n := n.(type) {
		case *parser.VectorSelector:
			if _, ok := exp[n.Name]; !ok {
				t.Errorf("%s: modgate has no metric %s", q.where, n.Name)
				return nil
			}
			for _, m := range n.LabelMatchers {
				if m.Name == labels.MetricName {
					continue
				}
				if !has(n.Name, m.Name) {
					t.Errorf("%s: %s has no label %s", q.where, n.Name, m.Name)
					continue
				}
				if m.Type == labels.MatchEqual && !slices.Contains(targetLabels, m.Name) && !exp[n.Name][m.Name][m.Value] {
					t.Errorf("%s: no series of %s has %s=%q", q.where, n.Name, m.Name, m.Value)
				}
			}
		case *parser.AggregateExpr:
			if n.Without {
				return nil
			}
			var metrics []string
			parser.Inspect(n.Expr, func(c parser.Node, _ []parser.Node) error {
				if vs, ok := c.(*parser.VectorSelector); ok {
					metrics = append(metrics, vs.Name)
				}
				return nil
			})
			for _, l := range n.Grouping {
				if !slices.ContainsFunc(metrics, func(m string) bool { return has(m, l) }) {
					t.Errorf("%s: by (%s): none of %v has that label", q.where, l, metrics)
				}
			}
		}
		return nil
	})
}

// TestDashboardsMatchMetrics checks the Grafana dashboard and the alert
// rules against the /metrics of a running modgate.
func TestDashboardsMatchMetrics(t *testing.T) {
	qs := append(dashboardQueries(t), alertQueries(t)...)
	if len(qs) < 10 {
		t.Fatalf("only %d queries", len(qs))
	}
	exp := scrapeModgate(t)
	for _, q := range qs {
		checkQuery(t, exp, q)
	}
}
