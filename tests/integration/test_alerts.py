"""configs/alerts.yml with Prometheus's own checker: `promtool check rules` (syntax, PromQL,
templates) and `promtool test rules` on tests/integration/alerts_test.yml (each alert fires on
the series that should raise it, after its `for`, and not on healthy ones). Whether the series
and labels the rules name are ones the server exports: tests/integration/test_dashboard.py.

promtool comes from PATH, or from Debian's prometheus package, downloaded and unpacked (not
installed) into ~/.cache/scorewire/prometheus once."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path.home() / ".cache" / "scorewire" / "prometheus"


def _unpacked_promtool() -> Path | None:
    binary = CACHE / "usr" / "bin" / "promtool"
    if binary.exists():
        return binary
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        return None
    download = CACHE / "download"
    download.mkdir(parents=True, exist_ok=True)
    got = subprocess.run(["apt-get", "download", "prometheus"], cwd=download, capture_output=True, text=True,
                         timeout=300)
    debs = sorted(download.glob("prometheus_*.deb"))
    if got.returncode != 0 or not debs:
        return None
    subprocess.run(["dpkg", "-x", str(debs[-1]), str(CACHE)], check=True, timeout=120)
    return binary if binary.exists() else None


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool") or _unpacked_promtool()
    if found is None:
        pytest.skip("no promtool on PATH, and Debian's prometheus package could not be downloaded (apt-get download "
                    "prometheus)")
    return str(found)


def test_promtool_accepts_the_rules(promtool):
    result = subprocess.run([promtool, "check", "rules", str(ROOT / "configs" / "alerts.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_each_alert_fires_when_it_should_and_not_otherwise(promtool):
    result = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=Path(__file__).parent,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
