# The two commands of README.md: `make demo` and `make test` (both as root).
SHELL := /bin/bash
export AIRUT_LAB ?= /var/lib/airut-lab
PY := $(AIRUT_LAB)/venv/bin/python
# The Debian 12 and 13 packages, each rebuilt when a file it is made of changed.
DEB12 := dist/.deb12-built
DEB13 := dist/.deb13-built
DEB_SOURCES := $(shell git ls-files airut_* bin debian units pyproject.toml README.md doc 2>/dev/null)

.PHONY: test test-v2 test-package demo lab lab-vm lab-down lint unit system bench deb packages

# Unit and nspawn system tests, the Debian 13 package in a VM on cgroup v2, then the
# Debian 12 package in a clean Debian 12 machine, one guest at a time. The packages
# build while the nspawn tests run, at the lowest processor and disk priority: those
# tests wait on mail, units and timers more than they compute, and the builds take
# what they leave idle. (A session of its own with its scheduler group niced: the
# kernel shares the processor between sessions first, and the guest has its own.)
test: lab lint
	@mkdir -p dist
	setsid -w bash -c 'echo 19 > /proc/self/autogroup 2>/dev/null; exec nice -n 19 ionice -c 3 \
	  $(MAKE) --no-print-directory packages' > dist/packages.log 2>&1 & \
	builder=$$!; \
	$(PY) -m pytest tests --ignore=tests/vm --ignore=tests/package; tests=$$?; \
	wait $$builder || { tail -40 dist/packages.log; echo "make packages failed: dist/packages.log"; exit 1; }; \
	exit $$tests
	$(MAKE) lab-vm
	$(PY) -m pytest tests/vm
	$(PY) -m pytest tests/package

packages: $(DEB12) $(DEB13)

demo:
	bash tests/lab/demo.sh

lab:
	bash tests/lab/build.sh

# The cgroup v2 lane's VM (qemu, a clean Debian 13 for the Debian 13 package): built
# once, cached in $(AIRUT_LAB)/vm.
lab-vm: lab $(DEB13)
	bash tests/lab/vm/build.sh "$$(ls dist/airut_*~deb13_amd64.deb | sort -V | tail -1)"

lab-down:
	bash tests/lab/down.sh

lint: lab
	$(PY) -m ruff check .

unit: lab
	$(PY) -m pytest tests/unit

system: lab
	$(PY) -m pytest tests/system

test-v2: lab-vm
	$(PY) -m pytest tests/vm

bench: lab
	$(PY) -m bench.dispatch

test-package: lab $(DEB12)
	$(PY) -m pytest tests/package

# The tests' builds leave lintian out; `make deb` runs it.
$(DEB12): $(DEB_SOURCES)
	AIRUT_LINTIAN=no bash debian/make-deb.sh bookworm dist
	touch $@

$(DEB13): $(DEB_SOURCES)
	AIRUT_LINTIAN=no bash debian/make-deb.sh trixie dist
	touch $@

# The .debs for Debian 12 and 13, each built in a clean chroot of its release
# (debian/make-deb.sh).
deb:
	bash debian/make-deb.sh bookworm dist
	bash debian/make-deb.sh trixie dist
