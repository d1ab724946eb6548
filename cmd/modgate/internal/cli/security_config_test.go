package cli

import (
	"reflect"
	"strings"
	"testing"
)

func TestAdminHostsAndPProfKeys(t *testing.T) {
	cfg, err := load(t, "admin_hosts: [modgate.corp.example.test, \"*.svc.example.test\"]\npprof: true\n", nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"modgate.corp.example.test", "*.svc.example.test"}; !reflect.DeepEqual(cfg.AdminHosts, want) || !cfg.PProf {
		t.Errorf("file: admin_hosts %q pprof %v", cfg.AdminHosts, cfg.PProf)
	}
	cfg, err = load(t, "", map[string]string{"MODGATE_ADMIN_HOSTS": "a.example.test,b.example.test", "MODGATE_PPROF": "true"})
	if err != nil || len(cfg.AdminHosts) != 2 || !cfg.PProf {
		t.Errorf("env: %+v %v", cfg.AdminHosts, err)
	}
	cfg, err = load(t, "pprof: true\n", nil, "--admin-hosts", "c.example.test", "--pprof=false")
	if err != nil || !reflect.DeepEqual(cfg.AdminHosts, []string{"c.example.test"}) || cfg.PProf {
		t.Errorf("flags: %+v %v %v", cfg.AdminHosts, cfg.PProf, err)
	}
	if cfg, err = load(t, "", nil, "--pprof"); err != nil || !cfg.PProf {
		t.Errorf("--pprof: %v %v", cfg.PProf, err)
	}
	if cfg, _ = load(t, "", nil); cfg.PProf || len(cfg.AdminHosts) != 0 {
		t.Errorf("defaults: pprof %v admin_hosts %q", cfg.PProf, cfg.AdminHosts)
	}
	for _, c := range []struct {
		file string
		env  map[string]string
		want string
	}{
		{"admin_hosts: [\"evil.example.test:80\"]\n", nil, "modgate.yaml:1: admin_hosts[1]: \"evil.example.test:80\" is not a host pattern"},
		{"admin_hosts:\n  - ok.example.test\n  - \"[\"\n", nil, "modgate.yaml:3: admin_hosts[2]"},
		{"pprof: maybe\n", nil, "modgate.yaml:1: pprof: invalid value \"maybe\", want true or false"},
		{"", map[string]string{"MODGATE_PPROF": "yes please"}, "MODGATE_PPROF: pprof: \"yes please\": want true or false"},
	} {
		_, err := load(t, c.file, c.env)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q %v: %v; want %q", c.file, c.env, err, c.want)
		}
	}
}

// TestPortsOutOfRange: a port outside 1-65535 is refused at start-up,
// named by its key and line, wherever it is.
func TestPortsOutOfRange(t *testing.T) {
	for _, c := range []struct{ file, want string }{
		{"listen: 127.0.0.1:70000\n", "modgate.yaml:1: listen: \"127.0.0.1:70000\": port \"70000\" is not a port: want 1 to 65535"},
		{"listen: 127.0.0.1:0\n", "modgate.yaml:1: listen: \"127.0.0.1:0\": port \"0\""},
		{"admin: \"[::1]:65536\"\n", "modgate.yaml:1: admin: \"[::1]:65536\": port \"65536\""},
		{"listen: 127.0.0.1:-1\n", "modgate.yaml:1: listen:"},
		{"upstreams:\n  - url: https://mods.example.test:99999\n", "modgate.yaml:2: upstreams[1].url: \"https://mods.example.test:99999\": port \"99999\""},
		{"upstreams:\n  - url: http://mods.example.test:0/base\n", "modgate.yaml:2: upstreams[1].url:"},
		{"resolve: {\"mods.example.test:443\": \"127.0.0.1:100000\"}\n", "modgate.yaml:1: resolve: \"127.0.0.1:100000\" (for mods.example.test:443): port \"100000\""},
		{"resolve: {\"mods.example.test:0\": \"127.0.0.1:8443\"}\n", "modgate.yaml:1: resolve: \"mods.example.test:0\": port \"0\""},
		{"forward:\n  connect_ports: [443, 65536]\n", "modgate.yaml:2: forward.connect_ports[2]: 65536 is not a port"},
	} {
		_, err := load(t, c.file, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v; want %q", c.file, err, c.want)
		}
	}
	if _, err := load(t, "listen: 127.0.0.1:1\nadmin: 127.0.0.1:65535\n", nil); err != nil {
		t.Errorf("the ends of the range: %v", err)
	}
}
