// Package wire is the vocabulary modgate shares with its clients and its
// own tools: the request kinds, the error codes that start every error
// body, breaker states, decisions, cache results, GOPROXY chain syntax, and
// host names as modgate compares them; and the one Clock every package
// takes. Each word is defined here once. It imports nothing of modgate, so
// every package may import it, and the data plane, policy, telemetry,
// `modgate explain` and `modgate doctor` agree by construction.
package wire
