package jaegertest

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that Start's process watcher and HTTP client end with the
// test that started them.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
