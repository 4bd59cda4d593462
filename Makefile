# weft: a drop-in replacement for flannel. See README.md.
GO ?= go
BIN := bin

.PHONY: all build test lint fuzz clean demo demo-down deps image

# The release version, set in deploy/VERSION only (see deploy/Dockerfile).
VERSION := $(shell cat deploy/VERSION)
IMAGE ?= ghcr.io/weft-net/weft

all: build

# The reference CNI plugins the flannel CNI plugin delegates to, built from
# the versions pinned by the tool directives in go.mod (so `make build` needs
# only the module proxy) and installed next to it in bin/.
CNI_PLUGINS := \
	github.com/containernetworking/plugins/plugins/main/bridge \
	github.com/containernetworking/plugins/plugins/ipam/host-local \
	github.com/containernetworking/plugins/plugins/main/loopback \
	github.com/containernetworking/plugins/plugins/meta/portmap

# Static (CGO_ENABLED=0), as deploy/Dockerfile builds them: nothing needs
# cgo, and a static flanneld maps no loader or libc (2 MiB less resident).
build:
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ ./cmd/... $(CNI_PLUGINS)

# The Debian packages the demo and the tests run (ip, ping, iperf3, iptables,
# nft, curl, gcc for upstream flanneld): installed when missing. The one list
# is in tools/deps.sh; .ci/run uses it too.
deps:
	@bash tools/deps.sh

# A whole cluster (etcd, 3 hosts, 2 pods each) in network namespaces, tested
# end to end: lease table, pod-to-pod ping matrix, iperf3. Needs root.
# DEMO_FLAGS passes flags, e.g. DEMO_FLAGS="--backend host-gw --keep".
demo: deps build
	$(BIN)/weft demo $(DEMO_FLAGS)

demo-down: build
	$(BIN)/weft demo down

# The whole suite. Privileged tests (network namespaces, netlink) need root;
# CI runs as root, so they run there rather than skip.
test: deps
	$(GO) test -count=1 -timeout 40m ./...

lint:
	$(GO) vet ./...
	@out="$$(gofmt -l $$(git ls-files '*.go'))"; if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# A short run of every fuzz target (the seed corpora also run in `make test`;
# CI runs tools/fuzz.sh with its shorter default).
FUZZTIME ?= 10s
fuzz:
	FUZZTIME=$(FUZZTIME) GO=$(GO) bash tools/fuzz.sh

# The image deploy/kube-flannel.yml and deploy/chart run.
image:
	docker build -f deploy/Dockerfile -t $(IMAGE):$(VERSION) .

clean:
	rm -rf $(BIN)
