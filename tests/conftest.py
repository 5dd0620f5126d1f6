import os
from pathlib import Path

import pytest

from tests import faults

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def pytest_addoption(parser):
    parser.addoption("--fault-table", action="store_true",
                     help="rewrite the README's fault table from the faults the tests recorded")


def pytest_sessionfinish(session, exitstatus):
    if not faults.ROWS or exitstatus != 0:
        return
    if session.config.getoption("--fault-table"):
        faults.write_readme()
        return
    missing = faults.missing_from_readme()
    if missing:
        # Only rows this session recorded are checked, so a partial run (-k, one file) stays valid.
        session.exitstatus = 1
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        reporter.write_line("README fault table is stale; rerun with --fault-table. Missing or changed rows:",
                            red=True)
        for row in missing:
            reporter.write_line("  " + row)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATA}")
    return SHARED_DATA
