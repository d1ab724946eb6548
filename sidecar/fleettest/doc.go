// Package fleettest runs the real servers a modgate fleet shares, for tests,
// as net/http/httptest runs a real HTTP server: Redis (redis-server) and an
// S3-compatible object store (versitygw with its posix backend). Each
// listens on a free 127.0.0.1 port, keeps its files in t.TempDir, writes its
// output to a log that is printed when the test fails, and is stopped when
// the test ends. Kill and Restart let tests take a server away and bring it
// back on the same address.
//
// The binaries come from the REDIS_SERVER (else redis-server on PATH) and
// VERSITYGW_BIN environment variables, which `make test` sets after
// installing them; without them the tests that need them are skipped.
// Reading the environment is a test helper's privilege; no package of
// modgate's own does.
//
// Only tests import this package.
package fleettest
