# modgate: `make run` serves on 127.0.0.1:7070, `make test` is what CI runs.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
# Tools the Makefile installs for itself, kept out of the repository.
TOOLS := $(CURDIR)/.tools
STATICCHECK_VERSION := v0.8.2
STATICCHECK := $(TOOLS)/staticcheck-$(STATICCHECK_VERSION)

JAEGER_VERSION := v1.76.0
JAEGER_DIR ?= $(HOME)/.cache/modgate/jaeger-$(JAEGER_VERSION)
JAEGER_BIN := $(JAEGER_DIR)/jaeger

# The fleet's servers for sidecar/fleettest (see the versitygw and redis
# targets).
VERSITYGW_VERSION := v1.8.0
VERSITYGW_DIR ?= $(HOME)/.cache/modgate/versitygw-$(VERSITYGW_VERSION)
VERSITYGW_BIN := $(VERSITYGW_DIR)/versitygw
REDIS_SERVER := /usr/bin/redis-server

# Flags for `make run`, e.g. make run RUN_FLAGS='--upstream https://proxy.example.test'.
# Without them `make run` is `modgate run` with its own defaults (upstreams
# from go env, the per-user cache folder), as the README's quick start.
RUN_FLAGS ?=
# Build tags of optional shared-store drivers: TAGS=gcs,azure adds gs:// and
# azblob:// (README: Binary size and build tags).
TAGS ?=
# How long each fuzz target runs under `make fuzz`.
FUZZTIME ?= 30s
# Test packages and flags; CI runs them all with the race detector.
PKGS ?= ./...
TESTFLAGS ?= -race -count=1 -timeout=30m

.PHONY: all build run test lint bench fuzz clean jaeger versitygw redis

all: build

# The checksum database keys the go command builds in, from this
# toolchain's source, built into modgate for machines without Go of their
# own (modgate verifies modules against that database by default).
SUMDB_KEYS := $(shell grep -hoE '"[a-z0-9.-]+(/[a-z0-9./-]+)?\+[0-9a-f]{8}\+[A-Za-z0-9+/=]+"' $$($(GO) env GOROOT)/src/cmd/go/internal/modfetch/*.go 2>/dev/null | tr -d '"' | sort -u | tr '\n' ' ')
LDFLAGS := -X 'github.com/modgate/modgate/cmd/modgate/internal/cli.builtinSumDBKeys=$(strip $(SUMDB_KEYS))'

build:
	$(GO) build -tags '$(TAGS)' -ldflags "$(LDFLAGS)" -o $(BIN)/modgate ./cmd/modgate

run: build
	$(BIN)/modgate run $(RUN_FLAGS)

# The end-to-end telemetry tests run against a real Jaeger (built once, see
# the jaeger target); the fleet's tests against a real Redis and a real S3
# server (the redis and versitygw targets).
test: lint $(JAEGER_BIN) chromium $(REDIS_SERVER) $(VERSITYGW_BIN)
	JAEGER_BIN=$(JAEGER_BIN) REDIS_SERVER=$(REDIS_SERVER) VERSITYGW_BIN=$(VERSITYGW_BIN) $(GO) test $(TESTFLAGS) $(PKGS)
	$(MAKE) test-deploy
	$(MAKE) cross

lint: $(STATICCHECK)
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...

$(STATICCHECK):
	@mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	mv $(TOOLS)/staticcheck $@

# `make bench` measures the modgate users run: `modgate run` (bin/modgate)
# as child processes configured by a config file, flags and OTEL_*
# variables (as shipped, OTEL_SDK_DISABLED=true, OTLP to a local receiver,
# OTEL_TRACES_SAMPLER=always_on, --cache-dir), against a floor
# (httputil.ReverseProxy), a direct fetch, nginx (reverse) and Squid
# (forward), in one run, taking turns, and prints one table with the
# targets and whether each is met (cmd/benchtable, about 6 minutes).
# Its Benchmark lines are benchstat's input:
#   make bench | tee new.txt && benchstat -col '/target@(floor modgate otlp always-on)' new.txt
# BENCHFLAGS go to the program, e.g. BENCHFLAGS='-d 2s -profile /tmp/prof'
# (go run ./cmd/benchtable -h lists them).
BENCHFLAGS ?=
bench: build bench-peers $(REDIS_SERVER) $(VERSITYGW_BIN)
	$(GO) build -o $(BIN)/benchtable ./cmd/benchtable
	REDIS_SERVER=$(REDIS_SERVER) VERSITYGW_BIN=$(VERSITYGW_BIN) $(BIN)/benchtable -modgate $(BIN)/modgate $(BENCHFLAGS)

# The bench's peers, nginx and Squid, from Debian (their services are not
# started: the bench runs its own, on loopback ports of its own). Where
# there is no apt-get, their columns stay empty and the table says why.
.PHONY: bench-peers
NGINX := /usr/sbin/nginx
SQUID := /usr/sbin/squid
bench-peers: $(NGINX) $(SQUID)

$(NGINX) $(SQUID):
	@if command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; apt-get update && apt-get install -y --no-install-recommends nginx squid; \
	else echo "bench: no apt-get here; the nginx and Squid columns will be empty"; fi

# Each fuzz target runs for FUZZTIME; crashers land in testdata/fuzz.
# Go 1.26's fuzz coordinator can fail a target with a bare "context
# deadline exceeded" as FUZZTIME runs out (golang/go#75804, fixed in Go
# 1.27): such a run that wrote no failing input is reported and passed over;
# any other failure, or a new input in testdata/fuzz, fails.
fuzz:
	@set -e -o pipefail; log=$$(mktemp); trap 'rm -f $$log' EXIT; \
	for pkg in $$($(GO) list $(PKGS)); do \
	  dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
	  for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$t"; \
	    before=$$(ls $$dir/testdata/fuzz/$$t 2>/dev/null | wc -l || true); \
	    if ! $(GO) test -run='^$$' -fuzz="^$$t$$" -fuzztime=$(FUZZTIME) -fuzzminimizetime=5s $$pkg 2>&1 | tee $$log; then \
	      after=$$(ls $$dir/testdata/fuzz/$$t 2>/dev/null | wc -l || true); \
	      if [ "$$after" = "$$before" ] && grep -q '^    context deadline exceeded$$' $$log && ! grep -q 'Failing input' $$log; then \
	        echo "fuzz: $$t: the coordinator's deadline race (golang/go#75804), no failing input: passed over"; \
	      else exit 1; fi; \
	    fi; \
	  done; \
	done

clean:
	rm -rf $(BIN)

# build-go-module builds the target, a program the tests run, once from its
# Go module: $(1) the module, $(2) its version, $(3) the package. Targets
# are cached outside the repository so that a fresh clone or `make clean`
# does not pay the minutes again. The module cache is read-only, hence the
# temporary output name and a rename at the end.
define build-go-module
@mkdir -p $(dir $@)
@set -e; \
dir=$$(cd / && GOFLAGS= GOWORK=off $(GO) mod download -json $(1)@$(2) | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p'); \
if [ -z "$$dir" ]; then echo "$(notdir $@): go mod download found no module directory"; exit 1; fi; \
echo "building $(notdir $@) $(2) from $$dir (minutes, once)"; \
cd "$$dir" && GOFLAGS=-buildvcs=false GOWORK=off CGO_ENABLED=0 $(GO) build -trimpath -o $@.tmp $(3); \
mv $@.tmp $@
endef

# Jaeger for the telemetry end-to-end test (telemetry/jaegertest reads
# JAEGER_BIN; without it that test is skipped), a few minutes to build.
jaeger: $(JAEGER_BIN)
	@echo $(JAEGER_BIN)

$(JAEGER_BIN):
	$(call build-go-module,github.com/jaegertracing/jaeger,$(JAEGER_VERSION),./cmd/jaeger)

# The S3 server the shared-cache tests run against (sidecar/fleettest reads
# VERSITYGW_BIN; without it those tests are skipped): versitygw, a real
# S3-compatible server (Apache-2.0) that is one static binary built from its
# Go module, serving a directory with its posix backend, so each test gets
# its own store in a temporary directory. Built from empty module and build
# caches on 2 CPUs it took about 2 minutes (123 s; 202 s on a busy machine);
# MinIO is far larger to build and AGPL. Built and cached like Jaeger above;
# its go.mod has no replace directives, so a plain module-mode build works.
versitygw: $(VERSITYGW_BIN)
	@echo $(VERSITYGW_BIN)

$(VERSITYGW_BIN):
	$(call build-go-module,github.com/versity/versitygw,$(VERSITYGW_VERSION),./cmd/versitygw)

# Redis for the fleet's tests (sidecar/fleettest reads REDIS_SERVER, else
# redis-server on PATH): Debian's package. Its service is not started: each
# test runs its own on a loopback port, without persistence, and a
# policy-rc.d that refuses (Debian's mechanism, honoured by systemd's
# deb-systemd-invoke too) stops the package from starting one on 6379, unless
# the machine already has a policy-rc.d of its own. Where there is no
# apt-get the tests that need Redis are skipped.
redis: $(REDIS_SERVER)

$(REDIS_SERVER):
	@if command -v apt-get >/dev/null; then \
	  set -e; export DEBIAN_FRONTEND=noninteractive; \
	  if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; \
	    trap 'rm -f /usr/sbin/policy-rc.d' EXIT; \
	  fi; \
	  apt-get update && apt-get install -y --no-install-recommends redis-server; \
	else echo "redis: no apt-get here; the fleet's Redis tests will be skipped"; fi

# Headless Chromium renders the admin status page in its test
# (TestStatusPageInChromium, skipped when /usr/bin/chromium is missing):
# Debian's package, installed once (about 30 s). Where there is no apt-get
# the test is skipped. `make screenshots` redraws the README's pictures:
# the status page, and one build's waterfall page (TestBuildPageInChromium;
# Jaeger's own UI is not part of its Go module, so the build's picture is
# modgate's page).
.PHONY: chromium screenshots
CHROMIUM := /usr/bin/chromium

chromium: $(CHROMIUM)

$(CHROMIUM):
	@if command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; apt-get update && apt-get install -y chromium; \
	else echo "chromium: no apt-get here; the status page's browser test will be skipped"; fi

screenshots: chromium
	MODGATE_SCREENSHOTS=1 $(GO) test -count=1 -run '^(TestStatusPageInChromium|TestBuildPageInChromium)$$' -v ./sidecar/

# Cross-compile modgate for every platform it supports, with cgo off as in
# the container image. Binaries land in $(CROSS_OUT) (bin/cross), named
# modgate-GOOS-GOARCH[.exe].
.PHONY: cross test-deploy
CROSS_PLATFORMS := linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64 windows/arm64
CROSS_OUT ?= $(BIN)/cross

cross:
	@mkdir -p $(CROSS_OUT)
	@set -e; for p in $(CROSS_PLATFORMS); do \
	  os=$${p%/*}; arch=$${p#*/}; ext=; if [ "$$os" = windows ]; then ext=.exe; fi; \
	  echo "cross: $$os/$$arch"; \
	  CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -tags '$(TAGS)' -ldflags "$(LDFLAGS)" -o $(CROSS_OUT)/modgate-$$os-$$arch$$ext ./cmd/modgate; \
	done

# deploy/ is its own module (its Kubernetes dependencies stay out of the
# root go.mod), so `go test ./...` at the root does not reach it. Its tests
# only read files: the race detector would find nothing and triples the
# build of the Kubernetes packages, so they run without it.
DEPLOY_TESTFLAGS ?= -count=1 -timeout=5m

test-deploy:
	cd deploy && $(GO) vet ./... && $(GO) test $(DEPLOY_TESTFLAGS) ./...

# `make soak` runs modgate for SOAK (default 5m) with every feature on
# (faulty|healthy reverse chain, policy with a deny rule, audit log, short
# breakers, forward mode with MITM), driven by real go commands and a load
# generator while the faulty upstream is broken and healed in turn, then
# prints a table of pass criteria and fails if one fails (sidecar/soak).
# The settle phase after the load waits up to 100 s for pooled upstream
# connections to time out. SOAKFLAGS go to the test, e.g.
# SOAKFLAGS='-soak.faults=500,healthy,hang,healthy -soak.step=3s'.
SOAK ?= 5m
SOAKFLAGS ?=
.PHONY: soak
soak:
	$(GO) test -count=1 -run '^TestSoak$$' -v -timeout 30m ./sidecar/soak -soak.d=$(SOAK) $(SOAKFLAGS)
