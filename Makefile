# ostree-prefinalize: see README.md.
GO      ?= go
BIN     := bin/ostree-prefinalize
PREFIX  ?= /usr
DESTDIR ?=
# End-to-end tests (root, real ostree) run by default with make test.
E2E     ?= 1
FUZZTIME ?= 60s
FUZZLONG ?= 5m
DEBS    := ostree e2fsprogs attr util-linux mount systemd python3-gi bubblewrap systemd-container debootstrap
# The ostree the tests compare with (test/harness/oracle.go): a Debian suite
# (bookworm: 2022.7, trixie: 2025.2, forky: 2026.4), a comma-separated list,
# or all (harness.AllOracles, the same list as here). A
# suite other than the host's own runs from a root test/roots/build.sh
# builds once (make deps) under /var/cache/ostree-prefinalize/roots.
ORACLE  ?= all
ORACLE_SUITES = $(if $(filter all,$(ORACLE)),bookworm trixie forky,$(subst $(comma), ,$(ORACLE)))
comma   := ,
# The Debian roots TestNspawnBoot boots under systemd-nspawn (whatever the
# host's suite: they are booted, not only run from), built once by make deps.
BOOT_SUITES ?= bookworm trixie
UNITDIR ?= $(PREFIX)/lib/systemd/system
MANDIR  ?= $(PREFIX)/share/man
BUILDDIR := bin
UNITS   := ostree-prefinalize.path ostree-prefinalize-stage.service ostree-prefinalize-watch.service ostree-prefinalize-seal.service \
	ostree-prefinalize-cleanup.service ostree-prefinalize-cleanup.timer \
	ostree-prefinalize-metrics.service ostree-prefinalize-metrics.timer
DROPIN  := ostree-finalize-staged.service.d/ostree-prefinalize.conf

.PHONY: all deps build test lint demo bench fuzz fuzz-long stress install clean vet man completions systemd-verify

all: build

# Installs what the suite needs, only when missing.
deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@command -v ostree >/dev/null
	@host=$$(. /etc/os-release && echo $$VERSION_CODENAME); \
	for s in $(ORACLE_SUITES); do \
		[ "$$s" = "$$host" ] || ./test/roots/build.sh $$s || exit 1; \
	done
	@for s in $(BOOT_SUITES); do ./test/roots/build.sh $$s || exit 1; done

build:
	$(GO) build -o $(BIN) ./cmd/ostree-prefinalize

vet:
	$(GO) vet ./...

test: deps build lint
	OSTREE_PREFINALIZE_E2E=$(E2E) OSTREE_PREFINALIZE_ORACLE=$(ORACLE) $(GO) test -count=1 -timeout 80m ./...

# ORACLE=trixie runs it against trixie's ostree (all: the first, bookworm).

# Static checks, part of `make test` (so CI fails on them): go.mod and
# go.sum tidy, and staticcheck at a pinned version.
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
lint:
	$(GO) mod tidy -diff
	$(GO) run $(STATICCHECK) ./...

demo: deps build
	OSTREE_PREFINALIZE_ORACLE=$(ORACLE) ./test/demo.sh

# Go benchmarks under test/, prune's synthetic 1M-object plan, then the mock
# prune against ostree (TestPruneBench: real-file workload, plan vs ostree
# prune, execution vs ostree admin cleanup and xargs rm, warm and cold cache,
# synthetic 250k/500k/1M; medians of BENCH_RUNS runs, a table of ratios at the
# end; BENCH_RUNS=N for more runs). Root; drops the page cache; ~30 min.
# Benchmarks against the ostree command, both sides in one run, medians of
# BENCH_RUNS (default 5) runs; root; drops the page cache for cold runs.
# BENCH_ONLY=prune|etc|watch|flood|images|contention runs one of them
# (contention: cleanup and a watcher batch beside a 2 GB dirty writer and an
# fsync loop).
BENCH_RUNS ?= 5
BENCH_ENV = OSTREE_PREFINALIZE_E2E=1 OSTREE_PREFINALIZE_BENCH=1 OSTREE_PREFINALIZE_BENCH_RUNS=$(BENCH_RUNS)
bench: deps build
	@if [ -z "$(BENCH_ONLY)" ] || [ "$(BENCH_ONLY)" = prune ]; then \
		$(GO) test -count=1 -timeout 20m -run '^$$' -bench 'Plan1M|Set1M' -benchtime 1x -benchmem ./prune/ && \
		$(BENCH_ENV) $(GO) test -count=1 -timeout 120m -run '^TestPruneBench$$' -v ./test/ ; fi
	@if [ -z "$(BENCH_ONLY)" ] || [ "$(BENCH_ONLY)" = etc ]; then \
		$(BENCH_ENV) $(GO) test -count=1 -timeout 60m -run '^TestEtcMergeBench$$' -v ./test/ ; fi
	@if [ -z "$(BENCH_ONLY)" ] || [ "$(BENCH_ONLY)" = watch ]; then \
		$(BENCH_ENV) $(GO) test -count=1 -timeout 30m -run '^TestWatchBench$$' -v ./test/ ; fi
	@if [ -z "$(BENCH_ONLY)" ] || [ "$(BENCH_ONLY)" = flood ]; then \
		$(BENCH_ENV) $(GO) test -count=1 -timeout 30m -run '^TestWatchFloodBench$$' -v ./test/ ; fi
	@if [ -z "$(BENCH_ONLY)" ] || [ "$(BENCH_ONLY)" = images ]; then \
		$(BENCH_ENV) $(GO) test -count=1 -timeout 120m -run '^TestImageGCBench$$' -v ./test/ ; fi
	@if [ -z "$(BENCH_ONLY)" ] || [ "$(BENCH_ONLY)" = contention ]; then \
		$(BENCH_ENV) $(GO) test -count=1 -timeout 60m -run '^TestContentionBench$$' -v ./test/ ; fi

# Every decoder of on-disk bytes has a Fuzz target; run each for FUZZTIME.
fuzz:
	./test/fuzz.sh $(FUZZTIME)

fuzz-long:
	./test/fuzz.sh $(FUZZLONG)

stress: deps build
	OSTREE_PREFINALIZE_E2E=1 OSTREE_PREFINALIZE_STRESS=1 $(GO) test -count=1 -timeout 120m ./test/...

# Man pages (section 8) from the commands' own help, with cobra/doc; the
# generator is built only with -tags genman, so the binary does not carry it.
man:
	rm -rf $(BUILDDIR)/man
	$(GO) run -tags genman ./cmd/ostree-prefinalize genman $(BUILDDIR)/man

completions: build
	mkdir -p $(BUILDDIR)/completions
	$(BIN) completion bash > $(BUILDDIR)/completions/ostree-prefinalize.bash
	$(BIN) completion zsh > $(BUILDDIR)/completions/_ostree-prefinalize
	$(BIN) completion fish > $(BUILDDIR)/completions/ostree-prefinalize.fish

# DESTDIR aware; the units name $(PREFIX)/bin/ostree-prefinalize.
install: build man completions
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/ostree-prefinalize
	install -d $(DESTDIR)$(UNITDIR)/ostree-finalize-staged.service.d
	for u in $(UNITS) $(DROPIN); do \
		sed 's|/usr/bin/ostree-prefinalize|$(PREFIX)/bin/ostree-prefinalize|g' dist/systemd/$$u > $(DESTDIR)$(UNITDIR)/$$u.tmp && \
		chmod 0644 $(DESTDIR)$(UNITDIR)/$$u.tmp && mv $(DESTDIR)$(UNITDIR)/$$u.tmp $(DESTDIR)$(UNITDIR)/$$u || exit 1; \
	done
	install -d $(DESTDIR)$(MANDIR)/man8
	install -m 0644 $(BUILDDIR)/man/*.8 $(DESTDIR)$(MANDIR)/man8/
	install -D -m 0644 $(BUILDDIR)/completions/ostree-prefinalize.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/ostree-prefinalize
	install -D -m 0644 $(BUILDDIR)/completions/_ostree-prefinalize $(DESTDIR)$(PREFIX)/share/zsh/vendor-completions/_ostree-prefinalize
	install -D -m 0644 $(BUILDDIR)/completions/ostree-prefinalize.fish $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/ostree-prefinalize.fish

# systemd-analyze verify on the installed units (TestSystemdVerify).
systemd-verify: deps
	OSTREE_PREFINALIZE_E2E=1 $(GO) test -count=1 -run 'TestSystemd' ./test/

clean:
	rm -rf bin
