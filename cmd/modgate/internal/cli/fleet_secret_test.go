package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFleetSecretFile: fleet.redis needs fleet.secret_file, a file of at
// least 16 bytes, named by key and line when it is missing, unreadable or
// short; fleet.password_file gives Redis's password without it being in
// the URL.
func TestFleetSecretFile(t *testing.T) {
	dir := t.TempDir()
	short := filepath.Join(dir, "short")
	os.WriteFile(short, []byte("tiny\n"), 0o600)
	secret := fleetSecretFile(t)
	pwFile := filepath.Join(dir, "redis.pw")
	os.WriteFile(pwFile, []byte("s3cr3t-redis\n"), 0o600)
	for _, c := range []struct{ file, want string }{
		{"fleet:\n  redis: \"redis://redis.example.test:6379/0\"\n", "fleet.secret_file: missing: fleet.redis needs the fleet's shared secret"},
		{"fleet:\n  redis: \"redis://redis.example.test:6379/0\"\n  secret_file: " + short + "\n", "modgate.yaml:3: fleet.secret_file: " + short + " holds 4 bytes; want at least 16"},
		{"fleet:\n  redis: \"redis://redis.example.test:6379/0\"\n  secret_file: " + filepath.Join(dir, "none") + "\n", "modgate.yaml:3: fleet.secret_file: open "},
		{"fleet:\n  redis: \"redis://redis.example.test:6379/0\"\n  secret_file: " + secret + "\n  password_file: " + filepath.Join(dir, "none") + "\n", "modgate.yaml:4: fleet.password_file: open "},
	} {
		if _, err := load(t, c.file, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v; want %q", c.file, err, c.want)
		}
	}
	cfg, err := load(t, "fleet:\n  redis: \"rediss://modgate@redis.example.test:6380/0\"\n  secret_file: "+secret+"\n  password_file: "+pwFile+"\n", nil)
	if err != nil {
		t.Fatal(err)
	}
	if string(cfg.fleetSecret) != "0123456789abcdef0123456789abcdef" || cfg.fleetPassword != "s3cr3t-redis" {
		t.Errorf("secret %q, password %q", cfg.fleetSecret, cfg.fleetPassword)
	}
	cfg, err = load(t, "", map[string]string{"MODGATE_FLEET_REDIS": "redis://redis.example.test:6379/0", "MODGATE_FLEET_SECRET_FILE": secret})
	if err != nil || len(cfg.fleetSecret) == 0 {
		t.Errorf("secret from MODGATE_FLEET_SECRET_FILE: %v", err)
	}
}
