package modtest

import (
	"io"
	"net/http"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// Tests must not reach the network by accident: the default transport
	// dials loopback addresses only.
	http.DefaultTransport.(*http.Transport).DialContext = LoopbackDial
	goleak.VerifyTestMain(m)
}

// testFixtures loads the repository's fixtures.
func testFixtures(t testing.TB) *Fixtures {
	t.Helper()
	return MustLoadFixtures(t, FixtureDir(t))
}

// response is what get returns.
type response struct {
	code   int
	header http.Header
	body   string
}

// get fetches url with client and reads the whole body.
func get(t testing.TB, client *http.Client, url string) (response, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return response{resp.StatusCode, resp.Header, string(body)}, err
}

// mustGet is get that fails the test on error.
func mustGet(t testing.TB, client *http.Client, url string) response {
	t.Helper()
	r, err := get(t, client, url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return r
}
