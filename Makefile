# The two commands of the README:
#   make run    set up this machine (packages, binaries, base template) and start `cocoon server`
#   make test   set up what the tests need and run every test suite (what .ci/run calls)
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)
BIN := bin
DATA_DIR ?= /var/lib/cocoon
GOFLAGS_STATIC := CGO_ENABLED=0

.PHONY: all build envd cocoon test-registry code-interpreter setup run test test-go test-e2e cluster-test generate vet bench clean

all: build

build: envd cocoon test-registry code-interpreter

envd:
	$(GOFLAGS_STATIC) go build -trimpath -ldflags='-s -w' -o $(BIN)/envd ./cmd/envd

cocoon:
	go build -trimpath -o $(BIN)/cocoon ./cmd/cocoon

# code-interpreter is the server on port 49999 baked into code-interpreter-v1
# (`cocoon template build code-interpreter`).
code-interpreter:
	$(GOFLAGS_STATIC) go build -trimpath -ldflags='-s -w' -o $(BIN)/code-interpreter ./cmd/code-interpreter

# test-registry serves an image of the base rootfs to the end-to-end tests (tests/registry).
test-registry:
	go build -trimpath -o $(BIN)/test-registry ./tests/registry

# setup installs the host packages and tools Cocoon needs (idempotent).
setup:
	./scripts/setup.sh

run: setup build
	$(BIN)/cocoon setup --data-dir $(DATA_DIR)
	$(BIN)/cocoon template build base --data-dir $(DATA_DIR)
	$(BIN)/cocoon server --data-dir $(DATA_DIR)

test: setup build
	./scripts/test.sh

generate:
	./scripts/generate.sh

vet:
	go vet ./...
	test -z "$$(gofmt -l $$(git ls-files '*.go'))"

# A fleet on one machine: PostgreSQL, api, two proxies, three nodes (issue 14).
cluster-test: build
	scripts/cluster-test.sh

bench: build
	$(BIN)/cocoon bench --data-dir $(DATA_DIR)

clean:
	rm -rf $(BIN)
