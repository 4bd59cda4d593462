# weft: a drop-in replacement for flannel. See README.md.
GO ?= go
BIN := bin

.PHONY: all build test lint fuzz clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

# The whole suite. Privileged tests (network namespaces, netlink) need root;
# CI runs as root, so they run there rather than skip.
test:
	$(GO) test -count=1 -timeout 20m ./...

lint:
	$(GO) vet ./...
	@out="$$(gofmt -l $$(git ls-files '*.go'))"; if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# A short run of every fuzz target (the seed corpora also run in `make test`).
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime 10s $$pkg || exit 1; \
	  done; \
	done

clean:
	rm -rf $(BIN)
