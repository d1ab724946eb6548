package fleettest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// EnvVersityGW names the environment variable that holds the path of the
// versitygw binary (`make test` builds it once from its Go module).
const EnvVersityGW = "VERSITYGW_BIN"

// Region is the region the S3 server answers for and every URL and
// environment of this package names.
const Region = "us-east-1"

// S3Server is one running versitygw, an S3-compatible server, on loopback
// with its posix backend: each bucket is a directory under Root and each
// object a file in it. Object metadata (Content-Type, user metadata, ETag)
// lives in a sidecar directory beside Root rather than in extended
// attributes, so the server runs on any filesystem t.TempDir may be on
// (tmpfs without user xattrs included). Data survives Kill and Restart.
type S3Server struct {
	// Endpoint is its base URL, "http://127.0.0.1:port".
	Endpoint string
	// AccessKey and SecretKey are the root user's credentials, new for
	// every server.
	AccessKey, SecretKey string
	// Root is the posix backend's top directory.
	Root string

	p *proc
}

// S3 runs versitygw for the rest of t on a free loopback port and waits
// until it answers. It skips t when VERSITYGW_BIN is not set.
func S3(t testing.TB) *S3Server {
	t.Helper()
	bin := binary(t, EnvVersityGW)
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	meta := filepath.Join(dir, "meta")
	for _, d := range []string{root, meta} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatalf("fleettest: %v", err)
		}
	}
	s := &S3Server{AccessKey: "fleettest" + randomHex(6), SecretKey: randomHex(20), Root: root}
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	p, addr := startOnFreePort(t, func(addr string) *proc {
		return &proc{
			name: "versitygw",
			bin:  bin,
			// Global flags come before the backend's name. --sidecar
			// keeps metadata out of extended attributes; --quiet drops
			// the line per request.
			args: []string{
				"--port", addr,
				"--access", s.AccessKey,
				"--secret", s.SecretKey,
				"--region", Region,
				"--health", "/health",
				"--quiet",
				"posix",
				"--sidecar", meta,
				root,
			},
			// The variables it reads (versitygw --help lists them) could
			// open ports (VGW_WEBUI_PORT), send audit logs away
			// (WEBHOOK), write logs (LOGFILE) or change credentials;
			// none reach it.
			env:     childEnv("VGW_", "ROOT_ACCESS_KEY", "ROOT_SECRET", "LOGFILE=", "WEBHOOK="),
			dir:     dir,
			logPath: filepath.Join(dir, "versitygw.log"),
			ready:   func() error { return health(client, "http://"+addr+"/health") },
		}
	})
	s.Endpoint = "http://" + addr
	s.p = p
	t.Cleanup(client.CloseIdleConnections)
	return s
}

// Bucket creates the bucket name (a directory under Root, which versitygw's
// posix backend serves as a bucket) and returns its gocloud.dev/blob URL:
// "s3://name?endpoint=http://127.0.0.1:port&region=us-east-1&use_path_style=true".
// The endpoint's scheme says http, so disable_https is not needed; the
// endpoint may as well be written unescaped. use_path_style=true is
// needed: without it the SDK puts the bucket in the host name and looks up
// "name.127.0.0.1" in DNS. Credentials are not in the URL: they come from
// Env or SetEnv.
func (s *S3Server) Bucket(t testing.TB, name string) string {
	t.Helper()
	if err := os.Mkdir(filepath.Join(s.Root, name), 0o755); err != nil {
		t.Fatalf("fleettest: bucket %s: %v", name, err)
	}
	return s.URL(name)
}

// S3At is an S3 endpoint that fleettest did not start: a stand-in the
// test serves itself. Its URL, Env and SetEnv work as S3's do; it has no
// process to Kill or Restart, and no Root.
func S3At(endpoint string) *S3Server {
	return &S3Server{Endpoint: endpoint, AccessKey: "fleettest", SecretKey: "fleettest"}
}

// S3Down is an S3 endpoint on a loopback address where nothing listens:
// a shared store that is down.
func S3Down(t testing.TB) *S3Server {
	t.Helper()
	addr, err := freeAddr()
	if err != nil {
		t.Fatalf("fleettest: %v", err)
	}
	return S3At("http://" + addr)
}

// URL is the gocloud.dev/blob URL of bucket, whether it exists or not.
func (s *S3Server) URL(bucket string) string {
	q := url.Values{}
	q.Set("endpoint", s.Endpoint)
	q.Set("region", Region)
	q.Set("use_path_style", "true")
	return "s3://" + bucket + "?" + q.Encode()
}

// Env is the environment an AWS SDK in a child process needs to reach this
// server and nothing else: its credentials and region, the endpoint for
// every service (S3 and STS alike), no instance metadata service, and no
// shared config or credentials files (a developer's profile could name
// another endpoint, a credential_process or SSO).
func (s *S3Server) Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + s.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + s.SecretKey,
		"AWS_SESSION_TOKEN=",
		"AWS_REGION=" + Region,
		"AWS_DEFAULT_REGION=" + Region,
		"AWS_EC2_METADATA_DISABLED=true",
		"AWS_ENDPOINT_URL=" + s.Endpoint,
		"AWS_ENDPOINT_URL_S3=" + s.Endpoint,
		"AWS_CONFIG_FILE=" + os.DevNull,
		"AWS_SHARED_CREDENTIALS_FILE=" + os.DevNull,
		"AWS_PROFILE=",
		"AWS_ROLE_ARN=",
		"AWS_WEB_IDENTITY_TOKEN_FILE=",
		"AWS_CONTAINER_CREDENTIALS_FULL_URI=",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=",
	}
}

// SetEnv sets Env in the test process for the rest of t, for an SDK that
// runs in the test itself.
func (s *S3Server) SetEnv(t *testing.T) {
	t.Helper()
	for _, kv := range s.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
}

// ObjectFile is the file that holds the object key of bucket, for tests
// that damage or remove it behind the server's back.
func (s *S3Server) ObjectFile(bucket, key string) string {
	return filepath.Join(s.Root, bucket, filepath.FromSlash(key))
}

// Kill ends the server with SIGKILL and waits until it has exited.
func (s *S3Server) Kill() { s.p.kill() }

// Restart kills the server if it runs, starts it again on the same port
// with the same directories (so the same buckets and objects) and waits
// until it answers.
func (s *S3Server) Restart(t testing.TB) {
	t.Helper()
	s.p.restart(t)
}

func health(client *http.Client, u string) error {
	resp, err := client.Get(u)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
