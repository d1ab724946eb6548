package modtest

import (
	"fmt"
	"strings"
)

// ToolchainModulePath is the module the go command downloads a Go toolchain
// as, when GOTOOLCHAIN names a version newer than its own.
const ToolchainModulePath = "golang.org/toolchain"

// ToolchainVersion returns the version of [ToolchainModulePath] that holds
// Go goVersion (e.g. "go1.99.0") for goos/goarch, as the go command names
// it: v0.0.1-go1.99.0.linux-amd64.
func ToolchainVersion(goVersion, goos, goarch string) string {
	return "v0.0.1-" + goVersion + "." + goos + "-" + goarch
}

// ToolchainBanner is the line the fake toolchain of [NewToolchain] prints
// for any command: "go version <goVersion> <goos>/<goarch> (modtest toolchain)".
func ToolchainBanner(goVersion, goos, goarch string) string {
	return fmt.Sprintf("go version %s %s/%s (modtest toolchain)", goVersion, goos, goarch)
}

// NewToolchain builds a fake Go toolchain module for goVersion ("go1.99.0")
// on goos/goarch. Its zip holds only what cmd/go's toolchain switch needs
// (cmd/go/internal/toolchain.Select downloads the module, sets the execute
// bits in pkg/tool/, on lib/go_*_*_exec, bin/gofmt and bin/, failing if any
// of those is missing, copies any src/_go.mod to src/go.mod, then execs
// bin/go with GOROOT set to the module's directory): bin/go and bin/gofmt,
// /bin/sh scripts that print [ToolchainBanner] and exit 0 whatever they are
// asked, and a note in pkg/tool/ and lib/. So it works on unix hosts only.
//
// Add it to the fixtures that the proxy and the checksum database serve,
// and GOTOOLCHAIN=<goVersion> makes the go command fetch, verify and run it.
func NewToolchain(goVersion, goos, goarch string) (Module, error) {
	if !strings.HasPrefix(goVersion, "go1.") {
		return Module{}, fmt.Errorf("modtest: toolchain version %q: want go1.N.M", goVersion)
	}
	script := "#!/bin/sh\n# A fake Go toolchain made by modtest: it only says which it is.\necho '" +
		ToolchainBanner(goVersion, goos, goarch) + "'\n"
	note := []byte("A fake Go toolchain made by modtest.\n")
	return NewModule(ToolchainModulePath, ToolchainVersion(goVersion, goos, goarch),
		File{Name: "bin/go", Data: []byte(script)},
		File{Name: "bin/gofmt", Data: []byte(script)},
		File{Name: "pkg/tool/" + goos + "_" + goarch + "/README", Data: note},
		File{Name: "lib/README", Data: note})
}
