// Package modtest is a test harness for code that speaks the Go module
// protocols, in the spirit of net/http/httptest.
//
// It provides:
//
//   - [Fixtures]: Go modules built in memory from txtar files
//     (testdata/mod/*.txtar at the repository root, see [FixtureDir]);
//   - [Proxy]: a GOPROXY server on 127.0.0.1 that serves those fixtures and
//     injects faults selected by a path prefix such as /f/500/ or /f/hang/,
//     optionally mounted under a path ([WithPathPrefix]);
//   - [SumDB]: a real, signed checksum database over the same fixtures, served
//     through the proxy ([WithSumDB]) or on its own ([SumDB.Serve],
//     [SumDB.ServeNamed] for https://<name>, a name that may have a path);
//   - [NewToolchain]: a fake Go toolchain module, for GOTOOLCHAIN switches;
//   - [Go]: a runner for the real go command in a hermetic environment.
//
// Everything listens on loopback only, and nothing here reaches the network.
// Servers are closed by the cleanup of the test that started them.
package modtest
