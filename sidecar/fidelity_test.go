package sidecar_test

import (
	"runtime"
	"strings"
	"testing"

	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/sidecartest"
)

// consumerMod is the go.mod of every script's module.
const consumerMod = "module example.test/consumer\n\ngo 1.21\n"

// fidelityCase is one script that must do the same straight and through
// modgate, in each of modes.
type fidelityCase struct {
	name  string
	modes []string // "reverse", "forward", "mitm" (see fidelityRig); nil means reverse only
	opts  rigOptions
	env   map[string]string // for both sides
	files map[string]string // besides go.mod
	steps []string          // see runScript
	// stderr maps a step to text that both sides' standard error must
	// hold: where the go command's own explanation matters (a failure
	// that is the module's, not the proxy's).
	stderr map[string]string
	// after, if set, checks that the traffic went where the case says
	// (both sides have run).
	after func(t *testing.T, r *fidelityRig)
}

// wantRequests fails the test unless the fixture proxy (or, with db, the
// database served at its URL) received at least n requests containing substr.
func wantRequests(t *testing.T, r *fidelityRig, db bool, substr string, n int) {
	t.Helper()
	got, reqs := r.up.CountMatching(substr), r.up.Requests()
	if db {
		got, reqs = r.db.CountMatching(substr), r.db.Requests()
	}
	if got < n {
		t.Errorf("%d requests for %q reached the fixtures, want at least %d (one a side): %q", got, substr, n, reqs)
	}
}

var fidelityCases = []fidelityCase{
	{
		name:  "branch and commit queries",
		modes: []string{"reverse", "forward", "mitm"},
		steps: []string{
			"go list -m fixture.test/branch@main",
			"go list -m fixture.test/branch@23179ee",
			"go list -m fixture.test/branch@23179ee2d0f1c8a7b5e4d3c2b1a0f9e8d7c6b5a4",
			"go list -m -versions fixture.test/branch",
			"go get fixture.test/branch@main",
			"cat go.mod",
			"go get fixture.test/branch@v1.0.0",
			"go get fixture.test/branch@23179ee",
			"cat go.mod",
			"cat go.sum",
			"! go list -m fixture.test/branch@nosuchbranch",
		},
	},
	{
		name: "retracted and deprecated",
		steps: []string{
			"go list -m -versions -retracted fixture.test/retract",
			"go list -m -versions fixture.test/retract",
			"go get fixture.test/retract@v1.1.0",
			"go list -m -u fixture.test/retract",
			"go list -m -u -retracted -json fixture.test/retract",
			"go get fixture.test/retract@latest",
			"cat go.mod",
			"go list -m -u all",
		},
	},
	{
		name: "+incompatible",
		steps: []string{
			"go list -m -versions fixture.test/incompat",
			"go get fixture.test/incompat@v2.0.0+incompatible",
			"go get fixture.test/incompat@latest",
			"go list -m all",
			"cat go.mod",
			"cat go.sum",
		},
	},
	// Odd but valid modules: the go command accepts these proxy answers,
	// so modgate must relay and keep them (the go command's own
	// download-time rules, sidecar/check.go).
	{
		name:  "a go.mod naming another path",
		modes: []string{"reverse", "forward", "mitm"},
		steps: []string{
			"go list -m -json fixture.test/renamed@v1.0.0",
			"go mod download fixture.test/renamed@v1.0.0",
			"go mod download -json fixture.test/renamed@v1.0.0",
			"! go get fixture.test/renamed@v1.0.0",
			"cat go.mod",
		},
		stderr: map[string]string{"! go get fixture.test/renamed@v1.0.0": "module declares its path as: fixture.test/newname"},
	},
	{
		name:  "v2.0.0 of a path without /v2 resolved to +incompatible",
		modes: []string{"reverse", "forward", "mitm"},
		steps: []string{
			"go list -m fixture.test/incompat@v2.0.0",
			"go mod download -json fixture.test/incompat@v2.0.0",
			"go get fixture.test/incompat@v2.0.0",
			"go list -m all",
			"go list -m -json fixture.test/incompat@v2.0.0+incompatible",
			"cat go.mod",
			"cat go.sum",
		},
	},
	{
		name:  "a tag resolved to a pseudo-version",
		modes: []string{"reverse", "forward", "mitm"},
		steps: []string{
			"go list -m fixture.test/tagged@v2.0.0",
			"go mod download -json fixture.test/tagged@v2.0.0",
			"go get fixture.test/tagged@v2.0.0",
			"go list -m all",
			"go list -m -versions fixture.test/tagged",
			"cat go.mod",
			"cat go.sum",
		},
	},
	{
		name:  "retracted and deprecated, downloaded",
		modes: []string{"reverse", "forward", "mitm"},
		steps: []string{
			"go mod download -json fixture.test/retract@v1.1.0",
			"go list -m -json -retracted fixture.test/retract@v1.1.0",
			"go get fixture.test/retract@v1.1.0",
			"go list -m -u -json fixture.test/retract",
			"go get fixture.test/retract@latest",
			"cat go.mod",
			"cat go.sum",
		},
	},
	{
		name: "major version path, escaped capitals, pseudo-version",
		steps: []string{
			"go list -m -versions fixture.test/major/v2 fixture.test/UpperCase fixture.test/pseudo",
			"go get fixture.test/major/v2@v2.0.0 fixture.test/UpperCase@latest fixture.test/pseudo@latest",
			"go get fixture.test/major@latest fixture.test/pseudo@v0.0.0-20240102030405-0123456789ab",
			"go list -m all",
			"go mod download -json fixture.test/UpperCase@v1.0.0",
			"cat go.mod",
			"cat go.sum",
		},
	},
	{
		name: "unknown module and version",
		steps: []string{
			"! go list -m fixture.test/nosuch@v1.0.0",
			"! go list -m -versions fixture.test/nosuch",
			"! go get fixture.test/nosuch@latest",
			"! go list -m fixture.test/app@v9.9.9",
			"! go mod download fixture.test/app@v9.9.9",
			"! go get fixture.test/app@v1.9",
			"cat go.mod",
		},
	},
	{
		name:  "checksum database name with a path",
		modes: []string{"reverse", "mitm"},
		opts:  rigOptions{sumdbName: sumdbHost + "/sumdb"},
		steps: fidelitySumSteps,
		after: func(t *testing.T, r *fidelityRig) {
			wantRequests(t, r, false, "/sumdb/"+sumdbHost+"/sumdb/lookup/fixture.test/dep01@v1.0.0", 2)
		},
	},
	{
		name:  "checksum database at its URL",
		modes: []string{"reverse", "mitm"},
		opts:  rigOptions{sumdbName: sumdbHost + "/sumdb", sumdbAtURL: true},
		steps: fidelitySumSteps,
		after: func(t *testing.T, r *fidelityRig) {
			wantRequests(t, r, true, "/lookup/fixture.test/dep01@v1.0.0", 2)
		},
	},
	{
		name:  "toolchain switch",
		modes: []string{"reverse", "forward", "mitm"},
		env:   map[string]string{"GOTOOLCHAIN": fidelityToolchain},
		steps: []string{"go version", "go env GOVERSION"},
		after: func(t *testing.T, r *fidelityRig) {
			wantRequests(t, r, false, "/golang.org/toolchain/@v/"+
				modtest.ToolchainVersion(fidelityToolchain, runtime.GOOS, runtime.GOARCH)+".zip", 2)
			wantRequests(t, r, false, "/sumdb/"+sumdbName+"/lookup/golang.org/toolchain@", 2)
		},
	},
	{
		// The go command looks the toolchain module up in the checksum
		// database even where GONOSUMDB matches it
		// (cmd/go/internal/modfetch/sumdb.go), so modgate's private-module
		// guard must not refuse that lookup when a policy's private
		// patterns match golang.org. (GOPRIVATE itself is not ignored:
		// with it the go command goes direct and cannot find a toolchain.)
		name:  "toolchain switch with its path private",
		modes: []string{"reverse", "mitm"},
		opts:  rigOptions{policy: "private: [\"golang.org\"]\n"},
		env:   map[string]string{"GOTOOLCHAIN": fidelityToolchain},
		steps: []string{"go version"},
	},
	{
		name:  "proxy under a path prefix",
		modes: []string{"forward", "mitm"},
		opts:  rigOptions{prefix: "/artifactory/api/go/go-remote"},
		after: func(t *testing.T, r *fidelityRig) {
			wantRequests(t, r, false, "/fixture.test/!upper!case/@v/v1.0.0.zip", 2)
		},
		steps: []string{
			"go list -m -versions fixture.test/dep05 fixture.test/UpperCase",
			"go list -m fixture.test/branch@main",
			"go get fixture.test/dep05@v1.1.0 fixture.test/UpperCase@latest",
			"cat go.sum",
			"! go list -m fixture.test/nosuch@v1.0.0",
		},
	},
}

// fidelitySumSteps verify modules in a checksum database.
var fidelitySumSteps = []string{
	"go get fixture.test/dep01@v1.0.0 fixture.test/UpperCase@v1.0.0",
	"go mod verify",
	"cat go.sum",
}

func TestFidelity(t *testing.T) {
	for _, tc := range fidelityCases {
		modes := tc.modes
		if modes == nil {
			modes = []string{"reverse"}
		}
		for _, mode := range modes {
			t.Run(tc.name+"/"+mode, func(t *testing.T) {
				t.Parallel()
				if tc.env["GOTOOLCHAIN"] != "" && (runtime.GOOS == "windows" || runtime.GOOS == "plan9") {
					t.Skip("the fake toolchain is a /bin/sh script")
				}
				r := newFidelityRig(t, mode, tc.opts)
				compareSides(t, r, tc)
			})
		}
	}
}

// compareSides runs tc's script on both sides of r and reports every
// difference.
func compareSides(t *testing.T, r *fidelityRig, tc fidelityCase) {
	t.Helper()
	files := map[string]string{"go.mod": consumerMod}
	for k, v := range tc.files {
		files[k] = v
	}
	sides := [2]*modtest.Go{r.direct(t), r.through(t)}
	var results [2][]stepResult
	for i, g := range sides {
		for k, v := range tc.env {
			g.Setenv(k, v)
		}
		results[i] = runScript(t, g, files, tc.steps)
	}
	checkExpectations(t, tc.steps, results[0])
	for i, step := range tc.steps {
		if want, ok := tc.stderr[step]; ok {
			for j, side := range []string{"direct", "modgate"} {
				if !strings.Contains(results[j][i].stderr, want) {
					t.Errorf("%s: %s: standard error lacks %q:\n%s", side, step, want, results[j][i].stderr)
				}
			}
		}
	}
	for _, d := range diffSides("direct", "modgate", results[0], results[1]) {
		t.Errorf("the go command disagrees through modgate (%s mode): %s", r.mode, d)
	}
	if tc.after != nil {
		tc.after(t, r)
	}
}

// TestFidelityDeniedQuery: a branch query whose version a policy denies.
// Here modgate must differ from the direct answer: the go command fails
// with modgate's 403 and its code, and the denied version's files never
// reach the build. The policy is decided on the version the query
// resolves to, not on the query.
func TestFidelityDeniedQuery(t *testing.T) {
	for _, mode := range []string{"reverse", "mitm"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			testDeniedQuery(t, mode)
		})
	}
}

func testDeniedQuery(t *testing.T, mode string) {
	r := newFidelityRig(t, mode, rigOptions{policy: `rules:
  - deny: "fixture.test/branch"
    versions: ">v1.0.0"
    reason: "unreleased, see REL-9"
default: allow
`})
	steps := []string{"go get fixture.test/branch@main", "go list -m fixture.test/branch@23179ee", "go get fixture.test/branch@v1.0.0"}
	files := map[string]string{"go.mod": consumerMod}
	direct := runScript(t, r.direct(t), files, steps)
	checkExpectations(t, steps, direct)
	gate := runScript(t, r.through(t), files, steps)
	for _, res := range gate[:2] {
		if res.exit == 0 || !strings.Contains(res.stderr, "403 Forbidden") || !strings.Contains(res.stderr, "modgate: denied: ") ||
			!strings.Contains(res.stderr, "unreleased, see REL-9") {
			t.Errorf("%s through modgate: exit %d; want modgate's 403 with code denied\n%s", res.step, res.exit, res.stderr)
		}
	}
	if gate[2].exit != 0 {
		t.Errorf("%s through modgate: the allowed version failed\n%s", gate[2].step, gate[2].stderr)
	}
	head := "/fixture.test/branch/@v/v1.0.1-0.20240301000000-23179ee2d0f1"
	for _, ext := range []string{".mod", ".zip"} {
		// The direct side fetched them once; modgate must not have.
		if n := r.up.CountMatching(head + ext); n != 1 {
			t.Errorf("%s%s reached the fixture proxy %d times; want once (the direct side's)", head, ext, n)
		}
	}
}

// TestFidelityWarmCache: once modgate's cache is warm, a fresh module cache
// downloads the same modules with every upstream down, and the go command
// prints what it printed the first time: from the same modgate, and from a
// new one on the same cache directory (a restarted pod).
func TestFidelityWarmCache(t *testing.T) {
	for _, restart := range []bool{false, true} {
		name := "same modgate"
		if restart {
			name = "restarted modgate"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			r := newFidelityRig(t, "reverse", rigOptions{})
			files := map[string]string{
				"go.mod":  consumerMod + "\nrequire fixture.test/app v1.0.0\n",
				"main.go": "package main\n\nimport \"fixture.test/app\"\n\nfunc main() { println(app.Name()) }\n",
			}
			steps := []string{
				"go mod tidy",
				"go list -m all",
				"go mod download -json fixture.test/UpperCase@v1.0.0 fixture.test/major/v2@v2.0.0",
				"go list -m fixture.test/branch@main fixture.test/retract@latest",
				"go list -m fixture.test/incompat@v2.0.0 fixture.test/tagged@v2.0.0",
				"go mod download -json fixture.test/renamed@v1.0.0 fixture.test/tagged@v2.0.0",
				"go list -m -versions fixture.test/dep05",
				"go mod verify",
				"cat go.mod",
				"cat go.sum",
			}
			warm := runScript(t, r.through(t), files, steps)
			checkExpectations(t, steps, warm)
			r.up.Close()
			if restart {
				r.gate = sidecartest.Start(t, nil, r.cfg)
			}
			cold := runScript(t, r.through(t), files, steps)
			for _, d := range diffSides("warm", "upstream down", warm, cold) {
				t.Errorf("with every upstream down, from modgate's cache: %s", d)
			}
		})
	}
}

// TestFidelityCatchesDifferences checks the oracle itself: a modgate whose
// upstream answers differently from the direct side's proxy (main
// resolves elsewhere, a version is missing) must be caught.
func TestFidelityCatchesDifferences(t *testing.T) {
	t.Parallel()
	r := newFidelityRig(t, "reverse", rigOptions{})
	other := &modtest.Fixtures{}
	for _, m := range r.fx.Modules() {
		if m.Path == "fixture.test/branch" {
			m.Queries = nil
			if m.Version == "v1.0.0" {
				m.Queries = []string{"main"} // the wrong commit
			}
		}
		if m.Path == "fixture.test/retract" && m.Version == "v1.0.0" {
			continue // a version the go command will miss
		}
		if err := other.Add(m); err != nil {
			t.Fatal(err)
		}
	}
	wrong := modtest.NewProxy(t, other, modtest.WithSumDB(r.db))
	steps := []string{
		"go list -m fixture.test/branch@main",
		"go list -m -versions fixture.test/retract",
		"go list -m fixture.test/app@v1.0.0",
	}
	files := map[string]string{"go.mod": consumerMod}
	direct := runScript(t, r.direct(t), files, steps)
	g := modtest.NewGo(t)
	g.UseProxy(wrong.URL, r.db)
	diffs := diffSides("direct", "wrong", direct, runScript(t, g, files, steps))
	if len(diffs) != 2 || !strings.Contains(diffs[0], "branch@main") || !strings.Contains(diffs[1], "-versions") {
		t.Errorf("the oracle caught %d differences, want the two planted ones:\n%s", len(diffs), strings.Join(diffs, "\n"))
	}
}
