"""Headless Chromium (Debian package `chromium`) for the tests that check pages in a real browser."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs `chromium` (apt-get install -y chromium)")

# Put first in <head>: page errors and console.error calls land in an attribute of <html> that
# --dump-dom shows, so a test can assert there were none.
ERROR_PROBE = """<script>
(function () {
  function note(text) { var d = document.documentElement; d.setAttribute('data-errors',
                        (d.getAttribute('data-errors') || '') + '|' + text); }
  window.addEventListener('error', function (e) { note(e.message); });
  var original = console.error; console.error = function () { note([].join.call(arguments, ' '));
                                                             original.apply(console, arguments); };
})();
</script>"""


def _chromium(*args: str, timeout: float = 120) -> str:
    cmd = [
        CHROMIUM,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--virtual-time-budget=10000",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout


def dump_dom(url: str, size: str | None = None) -> str:
    """The page's DOM after its scripts ran; `size` (e.g. "2400,1200") for pages that render only the
    table columns inside the window (the MLflow UI's runs grid)."""
    return _chromium("--dump-dom", *([f"--window-size={size}"] if size else []), url)


def page_text(dom: str) -> str:
    """The visible words of a dumped DOM, one space apart (scripts and styles left out)."""
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", text)).split())


def screenshot(url: str, path: Path, size: str = "1200,2000") -> Path:
    _chromium(f"--screenshot={path}", f"--window-size={size}", url)
    return path


def with_error_probe(html_file: Path, out: Path) -> Path:
    text = html_file.read_text()
    out.write_text(text.replace("<head>", "<head>" + ERROR_PROBE, 1))
    return out


def distinct_colours(png: Path) -> int:
    from PIL import Image

    with Image.open(png) as image:
        return len(set(image.convert("RGB").resize((300, 500)).getdata()))
