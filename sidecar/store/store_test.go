package store_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/modgate/modgate/sidecar/fleettest"
	"github.com/modgate/modgate/sidecar/store"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// The AWS SDK's HTTP client keeps idle connections' goroutines.
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"))
}

func object(body []byte) store.Object {
	sum := sha256.Sum256(body)
	return store.Object{Size: int64(len(body)), SHA256: hex.EncodeToString(sum[:]), ContentType: "application/zip"}
}

func openFile(t *testing.T) (*store.Store, string) {
	t.Helper()
	dir := t.TempDir()
	s, err := store.Open(context.Background(), "file://"+dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, dir
}

func TestPutGet(t *testing.T) {
	s, _ := openFile(t)
	ctx := context.Background()
	key := "example.test/m/@v/v1.0.0.zip"
	var got bytes.Buffer
	if _, err := s.Get(ctx, key, &got); !errors.Is(err, store.ErrNotExist) {
		t.Fatalf("Get of a missing object: %v, want ErrNotExist", err)
	}
	body := bytes.Repeat([]byte("module zip "), 10000)
	if err := s.Put(ctx, key, bytes.NewReader(body), object(body)); err != nil {
		t.Fatal(err)
	}
	obj, err := s.Get(ctx, key, &got)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), body) || obj != object(body) {
		t.Fatalf("Get = %+v, %d bytes; want %+v, %d bytes", obj, got.Len(), object(body), len(body))
	}
	st := s.Status()
	if st.Hits != 1 || st.Misses != 1 || st.Stored != 1 || st.State != "up" {
		t.Fatalf("status %+v", st)
	}
}

// A body that is not what the caller says it is never becomes an object.
func TestPutRefusesWrongBody(t *testing.T) {
	s, _ := openFile(t)
	ctx := context.Background()
	body := []byte("the real body")
	if err := s.Put(ctx, "k.mod", strings.NewReader("another body!"), object(body)); err == nil {
		t.Fatal("Put of a body whose hash differs succeeded")
	}
	if ok, _ := s.Exists(ctx, "k.mod"); ok {
		t.Fatal("the wrong body was stored")
	}
}

// An object changed behind the store's back is detected, never handed
// over as good, and deleted so that the next fetch replaces it.
func TestDamagedObjectIsDeleted(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(path string) error
	}{
		{"flipped byte", func(p string) error {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			b[len(b)/2] ^= 1
			return os.WriteFile(p, b, 0o600)
		}},
		{"truncated", func(p string) error { return os.Truncate(p, 100) }},
		{"no metadata", func(p string) error { return os.Remove(p + ".attrs") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, dir := openFile(t)
			ctx := context.Background()
			key := "example.test/m/@v/v1.0.0.zip"
			body := bytes.Repeat([]byte("z"), 5000)
			if err := s.Put(ctx, key, bytes.NewReader(body), object(body)); err != nil {
				t.Fatal(err)
			}
			if err := tc.damage(filepath.Join(dir, filepath.FromSlash(key))); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Get(ctx, key, new(bytes.Buffer)); !errors.Is(err, store.ErrDamaged) {
				t.Fatalf("Get of a damaged object: %v, want ErrDamaged", err)
			}
			if ok, err := s.Exists(ctx, key); ok || err != nil {
				t.Fatalf("damaged object still there (exists %v, %v)", ok, err)
			}
			if err := s.Put(ctx, key, bytes.NewReader(body), object(body)); err != nil {
				t.Fatal(err)
			}
			var got bytes.Buffer
			if _, err := s.Get(ctx, key, &got); err != nil || !bytes.Equal(got.Bytes(), body) {
				t.Fatalf("after replacing: %v, %d bytes", err, got.Len())
			}
			if st := s.Status(); st.Damaged != 1 || st.State != "up" {
				t.Fatalf("status %+v: want one damaged object and the store up", st)
			}
		})
	}
}

// A store that is down costs a few failures, then is skipped at once
// until it has had time to come back.
func TestDownStoreIsSkipped(t *testing.T) {
	down := fleettest.S3Down(t)
	down.SetEnv(t)
	s, err := store.Open(context.Background(), down.URL("modules"), store.Options{Timeout: time.Second, OpenFor: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 3 {
		_, err := s.Get(context.Background(), "k.zip", new(bytes.Buffer))
		if err == nil || errors.Is(err, store.ErrNotExist) || errors.Is(err, store.ErrUnavailable) {
			t.Fatalf("get %d from a dead store: %v, want a failure", i, err)
		}
	}
	start := time.Now()
	if _, err := s.Get(context.Background(), "k.zip", new(bytes.Buffer)); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("after three failures: %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("a skipped store took %v", d)
	}
	st := s.Status()
	if st.State != "down" || st.Errors != 3 || st.Skipped != 1 || st.LastError == "" {
		t.Fatalf("status %+v", st)
	}
}

// A store that accepts the connection and then says nothing is given up
// on after the timeout.
func TestStalledStoreTimesOut(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	silent := fleettest.S3At(srv.URL)
	silent.SetEnv(t)
	s, err := store.Open(context.Background(), silent.URL("modules"), store.Options{Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	done := make(chan error, 1)
	go func() {
		_, err := s.Get(context.Background(), "k.zip", new(bytes.Buffer))
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || errors.Is(err, store.ErrNotExist) || !strings.Contains(err.Error(), "stalled") {
			t.Fatalf("stalled store: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Get from a silent store did not give up")
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"azblob://c?sas_token=abc&domain=x":           "azblob://c?sas_token=xxxxx&domain=x",
		"s3://b?endpoint=http://u:pw@h:9000&region=r": "s3://b?endpoint=http://u:xxxxx@h:9000&region=r",
		"s3://b?region=us-east-1&use_path_style=true": "s3://b?region=us-east-1&use_path_style=true",
		"gs://b?access_id=me&private_key_path=/k.pem": "gs://b?access_id=me&private_key_path=xxxxx",
		"GET s3://b?X-Amz-Signature=deadbeef failed":  "GET s3://b?X-Amz-Signature=xxxxx failed",
		// Credentials inside a percent-encoded endpoint value.
		"s3://b?endpoint=http%3A%2F%2Fu%3Apw-s3cr3t%40h%3A9000&region=r":            "s3://b?endpoint=http%3A%2F%2Fu%3Axxxxx%40h%3A9000&region=r",
		"s3://b?endpoint=https%3A%2F%2Fh%2F%3Faccess_key%3Dpw-s3cr3t&region=r":      "s3://b?endpoint=https%3A%2F%2Fh%2F%3Faccess_key%3Dxxxxx&region=r",
		"s3://b?endpoint=https%3A%2F%2Fh%2F%3FX-Amz-Signature%3Dpw-s3cr3t&region=r": "s3://b?endpoint=https%3A%2F%2Fh%2F%3FX-Amz-Signature%3Dxxxxx&region=r",
		"s3://b?endpoint=http%3A%2F%2Fh%3A9000&region=r":                            "s3://b?endpoint=http%3A%2F%2Fh%3A9000&region=r",
	} {
		if got := store.Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}
