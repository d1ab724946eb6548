package store

import (
	"context"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"gocloud.dev/blob"
)

// gs:// and azblob:// are built in only with their tags (their SDKs more
// than double the binary); without, the error says how to get them.
func TestOptionalDriverNeedsItsTag(t *testing.T) {
	for scheme, tag := range optionalDrivers {
		if slices.Contains(blob.DefaultURLMux().BucketSchemes(), scheme) {
			continue // built with -tags tag
		}
		_, err := Open(context.Background(), scheme+"://bucket", Options{})
		if err == nil || !strings.Contains(err.Error(), "-tags "+tag) {
			t.Errorf("Open(%s://bucket): %v; want the build tag named", scheme, err)
		}
	}
}

// The default build of modgate links neither the GCS nor the Azure SDK.
func TestDefaultBuildLeavesOutOptionalDrivers(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	out, err := exec.Command("go", "list", "-deps", "github.com/modgate/modgate/cmd/modgate").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, pkg := range []string{"gocloud.dev/blob/gcsblob", "gocloud.dev/blob/azureblob", "gocloud.dev/blob/s3blob", "gocloud.dev/blob/fileblob"} {
		in := slices.Contains(strings.Fields(string(out)), pkg)
		if want := strings.HasSuffix(pkg, "s3blob") || strings.HasSuffix(pkg, "fileblob"); in != want {
			t.Errorf("default build: %s linked %v, want %v", pkg, in, want)
		}
	}
}
