"""The spend report as a browser sees it: headless Chromium opens the page from disk, offline.

``tests/ml/test_spend_report.py`` renders a report of real jobs the same way; this module holds the
browser helpers and checks the report of a ledger with nothing in it yet.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import IN_CI

SECTIONS = ("burn-down", "improvement", "slices", "curves", "robustness", "ood", "distill", "prompts", "failures", "notes")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


@dataclass(frozen=True)
class Rendered:
    dom: str  # the DOM once the page (and every image) has loaded
    screenshot: Path

    def section(self, section_id: str) -> str:
        found = re.search(rf'<section id="{section_id}">(.*?)</section>', self.dom, re.S)
        assert found, f"section {section_id} is missing"
        return found.group(1)

    def images(self) -> list[dict[str, str]]:
        return [dict(re.findall(r'([\w-]+)="([^"]*)"', tag)) for tag in re.findall(r"<img\b[^>]*>", self.dom)]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if IN_CI:
            pytest.fail("chromium is not installed; .ci/run installs it")
        pytest.skip("chromium is not installed")
    return found


def render(index: Path, tmp: Path) -> Rendered:
    """Open ``index`` in headless Chromium (a fresh profile, no network): its DOM and a screenshot."""
    browser = chromium()
    url = index.resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        # Virtual time runs until the page is idle: every image has loaded or failed by the dump.
        dom = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000",
                              "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = tmp / "screenshot.png"
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1200,1600",
                               "--virtual-time-budget=10000", f"--screenshot={shot}", url],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    return Rendered(dom.stdout, shot)


def pixel_spread(png: Path) -> float:
    """The standard deviation of the screenshot's grey levels: 0 for a blank page."""
    from PIL import Image, ImageStat

    with Image.open(png) as image:
        return ImageStat.Stat(image.convert("L")).stddev[0]


def assert_opens_offline(index: Path) -> None:
    """Nothing on the page comes from a network: every src and href is relative or a fragment."""
    page = index.read_text(encoding="utf-8")
    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert links and all(not re.match(r"^[a-z]+:", link) for link in links), links


def test_a_report_of_an_empty_ledger_keeps_every_section_and_says_it_has_no_data(embedded, tmp_path):
    embedded.ok("budget", "create", "b", "--total", "1.00")
    out = tmp_path / "report"
    assert f"report written to {out / 'index.html'}" in embedded.ok("report", "--out", str(out)).stdout
    assert_opens_offline(out / "index.html")
    page = render(out / "index.html", tmp_path)
    for section in SECTIONS:
        body = page.section(section)
        if section != "burn-down":  # the budget exists, so its burn-down has its one fund entry
            assert 'class="empty"' in body, section
    assert "$1.00" in page.section("burn-down")
    assert [i.get("data-loaded") for i in page.images()] == ["yes"]  # the burn-down
    assert pixel_spread(page.screenshot) > 10


def test_a_report_into_a_folder_that_cannot_be_written_is_one_line_and_exit_2(embedded, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    done = embedded.cli("report", "--out", str(blocker / "report"))
    assert done.returncode == 2 and done.stderr.startswith("error: --out") and len(done.stderr.splitlines()) == 1
