package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/modgate/modgate/cmd/modgate/internal/doctor"
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

// TestDoctorFleetSecret: doctor refuses a fleet without its secret (a
// config error naming fleet.secret_file) and warns when the secret is
// readable by other users.
func TestDoctorFleetSecret(t *testing.T) {
	goenv := fakeGoEnv(t, "testdata/doctor/goenv-good.json", nil)
	secret := fleetSecretFile(t)
	open := filepath.Join(t.TempDir(), "open.secret")
	os.WriteFile(open, []byte("0123456789abcdef0123456789abcdef\n"), 0o644)
	os.Chmod(open, 0o644)
	base := map[string]string{"MODGATE_UPSTREAM": "off", "MODGATE_SUMDB": "off", "MODGATE_FLEET_REDIS": "redis://127.0.0.1:1/0"}
	with := func(k, v string) map[string]string {
		env := map[string]string{k: v}
		for k, v := range base {
			env[k] = v
		}
		return env
	}
	r := runDoctor(t, goenv, base, "--no-probe")
	if !strings.Contains(fmt.Sprint(r.report), "fleet.secret_file: missing") {
		t.Errorf("no secret: want a config error naming fleet.secret_file:\n%s", r)
	}
	r = runDoctor(t, goenv, with("MODGATE_FLEET_SECRET_FILE", open), "--no-probe")
	if !r.has(doctor.Warn, "fleet-secret", open) {
		t.Errorf("a secret readable by others: want a warning:\n%s", r)
	}
	r = runDoctor(t, goenv, with("MODGATE_FLEET_SECRET_FILE", secret), "--no-probe")
	if !r.has(doctor.Info, "fleet-secret", secret) {
		t.Errorf("a private secret: want info:\n%s", r)
	}
}
