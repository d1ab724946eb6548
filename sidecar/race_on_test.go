//go:build race

package sidecar_test

// raceEnabled: the race detector's shadow memory roughly triples what a
// test's RSS grows by, so memory bounds scale with it.
const raceEnabled = true
