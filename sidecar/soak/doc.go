// Package soak holds modgate's soak test (`make soak`): modgate with every
// feature on, driven for minutes by real go commands and a load generator
// while one upstream of its chain is broken and healed in every way the
// fake upstream knows. It ends with a table of pass criteria.
//
// The test is skipped unless -soak.d gives its duration:
//
//	go test -run TestSoak -v -soak.d=60s ./sidecar/soak
package soak
