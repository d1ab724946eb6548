package cli

import (
	"strings"
	"testing"
)

// TestConnectionLimitKeys: max_connections and max_connections_per_client
// reach the server; negative values are refused by key and line.
func TestConnectionLimitKeys(t *testing.T) {
	_, sc, err := loadSidecar(t, "max_connections: 300\nmax_connections_per_client: 20\n", nil)
	if err != nil {
		t.Fatal(err)
	}
	if sc.MaxConnections != 300 || sc.MaxConnectionsPerClient != 20 {
		t.Errorf("max_connections %d, per client %d; want 300, 20", sc.MaxConnections, sc.MaxConnectionsPerClient)
	}
	for _, c := range []struct{ file, want string }{
		{"max_connections: -1\n", "modgate.yaml:1: max_connections: must not be negative"},
		{"\nmax_connections_per_client: -5\n", "modgate.yaml:2: max_connections_per_client: must not be negative"},
	} {
		if _, err := load(t, c.file, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v; want %q", c.file, err, c.want)
		}
	}
}
