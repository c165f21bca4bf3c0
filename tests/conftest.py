"""Markers follow the directory: tests/unit are `unit`, tests/system are `system`,
tests/vm (the cgroup v2 lane) are `vm`, tests/package (the .deb in a clean machine) are
`package`."""

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kind = Path(item.fspath).relative_to(HERE).parts[0]
        if kind in ("unit", "system", "vm", "package"):
            item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture(scope="session")
def dkim_key() -> bytes:
    """The lab domain's DKIM signing key (tests/system/mail.py signs with it)."""
    from tests.system.mail import new_dkim_key

    return new_dkim_key()
