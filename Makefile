# modgate: `make run` serves on 127.0.0.1:7070, `make test` is what CI runs.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
# Tools the Makefile installs for itself, kept out of the repository.
TOOLS := $(CURDIR)/.tools
STATICCHECK_VERSION := v0.8.2
STATICCHECK := $(TOOLS)/staticcheck-$(STATICCHECK_VERSION)

# Flags for `make run`, e.g. make run RUN_FLAGS='--upstream https://proxy.example.test'
RUN_FLAGS ?=
# How long each fuzz target runs under `make fuzz`.
FUZZTIME ?= 30s
# Test packages and flags; CI runs them all with the race detector.
PKGS ?= ./...
TESTFLAGS ?= -race -count=1 -timeout=30m

.PHONY: all build run test lint bench fuzz clean

all: build

build:
	$(GO) build -o $(BIN)/modgate ./cmd/modgate

run: build
	$(BIN)/modgate run $(RUN_FLAGS)

test: lint
	$(GO) test $(TESTFLAGS) $(PKGS)

lint: $(STATICCHECK)
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...

$(STATICCHECK):
	@mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	mv $(TOOLS)/staticcheck $@

# Benchmarks print results that benchstat reads; ratios against the
# floor are reported as extra metrics in the same run.
bench:
	$(GO) test -run='^$$' -bench=. -benchmem -count=1 $(PKGS)

# Each fuzz target runs for FUZZTIME; crashers land in testdata/fuzz.
fuzz:
	@set -e; for pkg in $$($(GO) list $(PKGS)); do \
	  for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$t"; $(GO) test -run='^$$' -fuzz="^$$t$$" -fuzztime=$(FUZZTIME) $$pkg; \
	  done; \
	done

clean:
	rm -rf $(BIN)
