"""Markers follow the directory: tests/unit are `unit`, tests/system are `system`,
tests/vm (the cgroup v2 lane) are `vm`."""

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kind = Path(item.fspath).relative_to(HERE).parts[0]
        if kind in ("unit", "system", "vm"):
            item.add_marker(getattr(pytest.mark, kind))
