//go:build !linux

package main

import (
	"errors"
	"os/exec"
	"time"
)

// The peak RSS of a process is read from /proc, which only Linux has;
// elsewhere the memory rows say "n/a".

var errNoProc = errors.New("peak RSS needs Linux's /proc")

func setParentDeathSignal(*exec.Cmd)   {}
func resetPeakRSS() error              { return errNoProc }
func procStatus(string) (int64, error) { return 0, errNoProc }
func cpuName() string                  { return "" }
func processCPU() time.Duration        { return 0 }
func userXattrs(string) bool           { return false }
