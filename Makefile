# The two commands of README.md: `make demo` and `make test` (both as root).
SHELL := /bin/bash
export AIRUT_LAB ?= /var/lib/airut-lab
PY := $(AIRUT_LAB)/venv/bin/python

.PHONY: test test-v2 demo lab lab-vm lab-down lint unit system bench deb

# Unit and nspawn system tests, then the cgroup v2 lane in its VM (the nspawn guest is
# down by then: the two labs never compete for the processor).
test: lab lab-vm lint
	$(PY) -m pytest tests --ignore=tests/vm
	$(PY) -m pytest tests/vm

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

# The .debs for Debian 12 and 13, each built in a clean chroot of its release
# (debian/make-deb.sh).
deb:
	bash debian/make-deb.sh bookworm dist
	bash debian/make-deb.sh trixie dist
