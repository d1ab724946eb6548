package fleettest_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
	"gocloud.dev/blob"
	_ "gocloud.dev/blob/s3blob"
	"gocloud.dev/gcerrors"

	"github.com/modgate/modgate/sidecar/fleettest"
)

func TestMain(m *testing.M) {
	if os.Getenv("FLEETTEST_CHILD") == "1" {
		os.Exit(child())
	}
	goleak.VerifyTestMain(m)
}

// child is the test binary run as a child process by TestS3EnvInChild: it
// reads the object FLEETTEST_KEY from the bucket FLEETTEST_URL with only
// the environment it was given, and prints it.
func child() int {
	ctx := context.Background()
	b, err := blob.OpenBucket(ctx, os.Getenv("FLEETTEST_URL"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer b.Close()
	data, err := b.ReadAll(ctx, os.Getenv("FLEETTEST_KEY"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	os.Stdout.Write(data)
	return 0
}

func TestRedis(t *testing.T) {
	r := fleettest.Redis(t)
	if !strings.HasPrefix(r.Addr, "127.0.0.1:") {
		t.Fatalf("Addr = %q, want 127.0.0.1:port", r.Addr)
	}
	if want := "redis://" + r.Addr + "/0"; r.URL() != want {
		t.Fatalf("URL() = %q, want %q", r.URL(), want)
	}
	opt, err := redis.ParseURL(r.URL())
	if err != nil {
		t.Fatal(err)
	}
	// One attempt, short timeouts: a killed server must fail fast.
	opt.MaxRetries = -1
	opt.DialTimeout = time.Second
	ctx := context.Background()
	c := redis.NewClient(opt)
	defer c.Close()

	if got, err := c.Ping(ctx).Result(); err != nil || got != "PONG" {
		t.Fatalf("PING = %q, %v", got, err)
	}
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET k = %q, %v", got, err)
	}

	r.Kill()
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("PING answered after Kill")
	}

	r.Restart(t)
	if got, err := c.Ping(ctx).Result(); err != nil || got != "PONG" {
		t.Fatalf("PING after Restart = %q, %v", got, err)
	}
	// No persistence: a restarted Redis is empty.
	if err := c.Get(ctx, "k").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET k after Restart: %v, want redis.Nil", err)
	}
}

func TestS3(t *testing.T) {
	s := fleettest.S3(t)
	s.SetEnv(t)
	if !strings.HasPrefix(s.Endpoint, "http://127.0.0.1:") {
		t.Fatalf("Endpoint = %q, want http://127.0.0.1:port", s.Endpoint)
	}
	u := s.Bucket(t, "modules")
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	q := pu.Query()
	if pu.Scheme != "s3" || pu.Host != "modules" || q.Get("endpoint") != s.Endpoint || q.Get("region") != "us-east-1" || q.Get("use_path_style") != "true" {
		t.Fatalf("Bucket URL = %s", u)
	}
	ctx := context.Background()
	b, err := blob.OpenBucket(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	const key = "cache/example.test/m/@v/v1.0.0.zip"
	data := bytes.Repeat([]byte("module zip bytes\n"), 4096)
	sum := sha256.Sum256(data)
	meta := map[string]string{"sha256": hex.EncodeToString(sum[:])}
	if err := b.WriteAll(ctx, key, data, &blob.WriterOptions{Metadata: meta, ContentType: "application/zip"}); err != nil {
		t.Fatal(err)
	}

	check := func(when string) {
		t.Helper()
		got, err := b.ReadAll(ctx, key)
		if err != nil {
			t.Fatalf("%s: read: %v", when, err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("%s: read %d bytes that differ from the %d written", when, len(got), len(data))
		}
		attrs, err := b.Attributes(ctx, key)
		if err != nil {
			t.Fatalf("%s: attributes: %v", when, err)
		}
		if attrs.Metadata["sha256"] != meta["sha256"] {
			t.Fatalf("%s: metadata = %v, want %v", when, attrs.Metadata, meta)
		}
		if attrs.Size != int64(len(data)) || attrs.ContentType != "application/zip" {
			t.Fatalf("%s: size %d, content type %q; want %d, application/zip", when, attrs.Size, attrs.ContentType, len(data))
		}
	}
	check("after write")

	// The spelling config files use, the endpoint unescaped, is the same
	// bucket.
	plain, err := blob.OpenBucket(ctx, "s3://modules?endpoint="+s.Endpoint+"&region=us-east-1&use_path_style=true")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := plain.ReadAll(ctx, key); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read through the unescaped URL: %d bytes, %v", len(got), err)
	}
	plain.Close()

	// The object is the file ObjectFile names.
	onDisk, err := os.ReadFile(s.ObjectFile("modules", key))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(onDisk, data) {
		t.Fatalf("ObjectFile holds %d bytes that differ from the object", len(onDisk))
	}

	// A missing object is NotFound, as a cache expects.
	if _, err := b.Attributes(ctx, "no/such/key"); gcerrors.Code(err) != gcerrors.NotFound {
		t.Fatalf("attributes of a missing key: %v, want NotFound", err)
	}

	// Kill: requests fail. Restart: the same data is there.
	s.Kill()
	shortCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, err = b.ReadAll(shortCtx, key)
	cancel()
	if err == nil {
		t.Fatal("read succeeded after Kill")
	}
	s.Restart(t)
	check("after Restart")

	// Damage the file behind the server's back. versitygw stored the
	// CRC32 the SDK sent with the upload and returns it with a whole-object
	// GET, so the SDK fails the read at its end; a range read carries no
	// checksum and returns the damaged bytes.
	damaged := bytes.Clone(data)
	damaged[100] ^= 0xff
	if err := os.WriteFile(s.ObjectFile("modules", key), damaged, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := b.ReadAll(ctx, key); err == nil {
		t.Fatalf("whole read of the damaged object succeeded (%d bytes, equal to the original: %v)", len(got), bytes.Equal(got, data))
	} else if !strings.Contains(err.Error(), "checksum did not match") {
		t.Fatalf("whole read of the damaged object: %v, want a checksum mismatch", err)
	}
	r, err := b.NewRangeReader(ctx, key, 0, 200, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	r.Close()
	if err != nil {
		t.Fatalf("range read of the damaged object: %v", err)
	}
	if !bytes.Equal(got, damaged[:200]) {
		t.Fatal("range read of the damaged object did not return the damaged bytes")
	}
}

// TestS3EnvInChild runs a child process whose AWS SDK has nothing but
// Env: it reads what the test wrote, so Env is all a child needs.
func TestS3EnvInChild(t *testing.T) {
	s := fleettest.S3(t)
	u := s.Bucket(t, "shared")
	// The test writes with the object's file: the child's read goes
	// through the server.
	if err := os.MkdirAll(filepath.Dir(s.ObjectFile("shared", "a/b")), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.ObjectFile("shared", "a/b"), []byte("from disk"), 0o644); err != nil {
		t.Fatal(err)
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AWS_") {
			env = append(env, kv)
		}
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(append(env, s.Env()...), "FLEETTEST_CHILD=1", "FLEETTEST_URL="+u, "FLEETTEST_KEY=a/b")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, stderr.Bytes())
	}
	if string(out) != "from disk" {
		t.Fatalf("child read %q, want %q", out, "from disk")
	}
}

func TestS3Env(t *testing.T) {
	s := fleettest.S3(t)
	env := map[string]string{}
	for _, kv := range s.Env() {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			t.Fatalf("Env entry %q has no =", kv)
		}
		env[k] = v
	}
	for k, want := range map[string]string{
		"AWS_ACCESS_KEY_ID":         s.AccessKey,
		"AWS_SECRET_ACCESS_KEY":     s.SecretKey,
		"AWS_REGION":                "us-east-1",
		"AWS_EC2_METADATA_DISABLED": "true",
		"AWS_ENDPOINT_URL":          s.Endpoint,
	} {
		if env[k] != want {
			t.Errorf("Env %s = %q, want %q", k, env[k], want)
		}
	}
}
