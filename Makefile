# ostree-prefinalize: see README.md.
GO      ?= go
BIN     := bin/ostree-prefinalize
PREFIX  ?= /usr
DESTDIR ?=
# End-to-end tests (root, real ostree) run by default with make test.
E2E     ?= 1
FUZZTIME ?= 60s
FUZZLONG ?= 5m
DEBS    := ostree e2fsprogs attr util-linux mount systemd python3-gi

.PHONY: all deps build test demo bench fuzz fuzz-long stress install clean vet

all: build

# Installs what the suite needs, only when missing.
deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@command -v ostree >/dev/null

build:
	$(GO) build -o $(BIN) ./cmd/ostree-prefinalize

vet:
	$(GO) vet ./...

test: deps build
	OSTREE_PREFINALIZE_E2E=$(E2E) $(GO) test -count=1 -timeout 40m ./...

demo: deps build
	./test/demo.sh

# Go benchmarks under test/, prune's synthetic 1M-object plan, then the mock
# prune against ostree (TestPruneBench: real-file workload, plan vs ostree
# prune, execution vs ostree admin cleanup and xargs rm, warm and cold cache,
# synthetic 250k/500k/1M; medians of BENCH_RUNS runs, a table of ratios at the
# end; BENCH_RUNS=N for more runs). Root; drops the page cache; ~30 min.
bench: deps build
	OSTREE_PREFINALIZE_E2E=1 $(GO) test -count=1 -timeout 120m -run '^$$' -bench . -benchtime 1x ./test/...
	OSTREE_PREFINALIZE_E2E=1 $(GO) test -count=1 -timeout 20m -run '^$$' -bench 'Plan1M|Set1M' -benchtime 1x -benchmem ./prune/
	OSTREE_PREFINALIZE_E2E=1 OSTREE_PREFINALIZE_BENCH=1 OSTREE_PREFINALIZE_BENCH_RUNS=$(or $(BENCH_RUNS),5) \
		$(GO) test -count=1 -timeout 120m -run '^TestPruneBench$$' -v ./test/

# Every decoder of on-disk bytes has a Fuzz target; run each for FUZZTIME.
fuzz:
	./test/fuzz.sh $(FUZZTIME)

fuzz-long:
	./test/fuzz.sh $(FUZZLONG)

stress: deps build
	OSTREE_PREFINALIZE_E2E=1 OSTREE_PREFINALIZE_STRESS=1 $(GO) test -count=1 -timeout 120m ./test/...

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/ostree-prefinalize

clean:
	rm -rf bin
