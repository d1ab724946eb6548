// Package wire is the vocabulary modgate shares with its clients and its
// own tools: the request kinds, the error codes that start every error
// body, breaker states, GOPROXY chain syntax, and host names as modgate
// compares them. It imports nothing of modgate, so that the data plane,
// `modgate explain` and `modgate doctor` agree by construction.
package wire
