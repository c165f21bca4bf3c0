# The two commands of README.md: `make demo` and `make test` (both as root).
SHELL := /bin/bash
export AIRUT_LAB ?= /var/lib/airut-lab
PY := $(AIRUT_LAB)/venv/bin/python
# The Debian 12 package, rebuilt when a file it is made of changed.
DEB12 := dist/.deb12-built

.PHONY: test test-v2 test-package demo lab lab-vm lab-down lint unit system bench deb

# Unit and nspawn system tests, the cgroup v2 lane in its VM, then the built .deb in a
# clean Debian 12 machine (one guest at a time: they never compete for the processor).
test: lab lab-vm lint $(DEB12)
	$(PY) -m pytest tests --ignore=tests/vm --ignore=tests/package
	$(PY) -m pytest tests/vm
	$(PY) -m pytest tests/package

demo:
	bash tests/lab/demo.sh

lab:
	bash tests/lab/build.sh

# The cgroup v2 lane's VM (qemu, Debian 12): built once, cached in $(AIRUT_LAB)/vm.
lab-vm: lab
	bash tests/lab/vm/build.sh

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

$(DEB12): $(shell git ls-files airut_* bin debian units pyproject.toml README.md doc 2>/dev/null)
	$(MAKE) lab
	bash debian/make-deb.sh bookworm dist
	touch $@

# The .debs for Debian 12 and 13, each built in a clean chroot of its release
# (debian/make-deb.sh).
deb:
	bash debian/make-deb.sh bookworm dist
	bash debian/make-deb.sh trixie dist
