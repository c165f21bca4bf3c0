"""One VM for the cgroup v2 lane's session, powered off at the end."""

import os
import shutil

import pytest

from tests.vm.vm import QEMU, Vm

_vm: Vm | None = None


@pytest.fixture(scope="session")
def vm():
    global _vm
    if os.geteuid() != 0:
        pytest.fail("the cgroup v2 lane boots a VM from a root-owned disk image and needs root")
    if shutil.which(QEMU) is None:
        pytest.fail(f"{QEMU} is missing: `make lab-vm` installs it (apt package "
                    "qemu-system-x86); the cgroup v2 lane cannot run without it")
    _vm = Vm()
    try:
        _vm.up()
    except Exception as e:
        _vm.down()
        pytest.fail(f"the cgroup v2 VM did not come up: {e}")
    yield _vm
    if not os.environ.get("AIRUT_LAB_KEEP"):  # set it to look around after a failure
        _vm.down()


def pytest_terminal_summary(terminalreporter):
    if _vm and _vm.timings:
        terminalreporter.section("cgroup v2 VM")
        for step, seconds in _vm.timings.items():
            terminalreporter.write_line(f"{step}: {seconds:.1f} s")
