"""The live view in a real browser: ``neural-mapping run synthetic --view`` serves it, Debian's
Chromium (headless, WebGL through SwiftShader; driven by Playwright, no browser download) opens
the URL.  After the map is complete, the 3D view is not blank (share of non-background pixels)
and shows the mesh's colors; a second browser joining late sees the map within seconds of its
viewer starting; no request left for another host.

Chromium comes from ``make venv`` (apt-get install chromium).  The test skips only where
Chromium or Playwright is missing outside CI; with ``CI`` set it fails instead.
Set ``NM_VIEW_SCREENSHOT=path.png`` to keep the screenshot (README's picture).
"""

import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                 "--no-sandbox", "--disable-dev-shm-usage"]
VIEWPORT = {"width": 960, "height": 540}
# A late browser gets the map within seconds of its viewer starting on an idle machine; with
# SwiftShader on a loaded 2-core machine (load average 12) it took 12-25 s (see README).
LATE_TIMEOUT_S = 60.0


def _missing(what: str):
    msg = f"{what}: the browser test of the live view cannot run (make venv installs it)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def _chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None:
        _missing("Debian's chromium is not installed (apt-get install chromium)")
    return path


def free_port_triple() -> int:
    for base in range(9400, 9700, 3):
        ok = True
        for p in range(base, base + 3):
            with socket.socket() as s:
                try:
                    s.bind(("0.0.0.0", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    pytest.fail("no three free consecutive ports in 9400..9700")


def map_pixels(png: bytes):
    """RGB pixels of the 3D view (left part of the default layout, below the top bar) and the
    mask of pixels that are not background (the light background and its grey grid lines are
    unsaturated and bright)."""
    import io
    from PIL import Image
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    h, w, _ = img.shape
    view = img[int(0.1 * h):int(0.9 * h), int(0.02 * w):int(0.7 * w)]
    chroma = view.max(axis=2) - view.min(axis=2)
    fg = (chroma > 25) | (view.max(axis=2) < 170)
    return view, fg


def color_bins(rgb: np.ndarray, q: int = 32) -> set:
    b = (np.asarray(rgb).reshape(-1, 3) // q).astype(np.int64)
    return set((b[:, 0] * 64 + b[:, 1] * 8 + b[:, 2]).tolist())


def launch(p, chromium: str):
    return p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)


def open_view(browser, url: str, requests: list):
    """A new browser context on ``url``, once Rerun's viewer has started in it."""
    ctx = browser.new_context(viewport=VIEWPORT)
    ctx.on("request", lambda r: requests.append(r.url))
    page = ctx.new_page()
    page.goto(url)
    page.wait_for_function("window.nmStarted === true", timeout=90_000)
    return ctx, page


def require_browser():
    """``(chromium path, sync_playwright)``; skip outside CI, fail on CI, if one is missing."""
    chromium = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (requirements.txt)")
    pytest.importorskip("rerun", reason="rerun-sdk (the view extra) is not installed")
    return chromium, sync_playwright


def foreign(requests) -> list:
    return sorted({u for u in requests if not u.startswith(("http://127.0.0.1", "data:", "blob:"))})


def wait_for_map(page, min_share: float, timeout_s: float, settle: bool = False):
    """Screenshots until the 3D view's non-background share reaches ``min_share`` (``settle``:
    and then stops growing: the whole map has arrived)."""
    t0 = time.monotonic()
    share, png, last = 0.0, b"", -1.0
    while time.monotonic() - t0 < timeout_s:
        png = page.screenshot()
        share = float(map_pixels(png)[1].mean())
        if share >= min_share and (not settle or abs(share - last) < 0.002):
            break
        last = share
        page.wait_for_timeout(1000 if settle and share >= min_share else 500)
    return share, png, time.monotonic() - t0


def test_live_view_in_chromium(tmp_path):
    chromium, sync_playwright = require_browser()
    port = free_port_triple()
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "neural_mapping.app.cli", "run", "synthetic", "--out", str(out),
           "--no-progress", "--no-views", "--synthetic-frames", "30", "--synthetic-size", "320x240",
           "--voxel-size-m", "0.04", "--view", "--view-port", str(port), "--view-hold-s", "120"]
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: "queue.Queue[str]" = queue.Queue()
    log = []
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()

    def wait_line(prefix: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                assert proc.poll() is None, "run ended early:\n" + "".join(log)
                continue
            log.append(line)
            if line.startswith(prefix):
                return line
        pytest.fail(f"no '{prefix}' line within {timeout_s} s:\n" + "".join(log))

    blocked = []
    try:
        url_line = wait_line("live view", 60)
        url = f"http://127.0.0.1:{port}/"
        assert url in url_line
        requests = []
        with sync_playwright() as p:
            browser = launch(p, chromium)
            ctx, page = open_view(browser, url, requests)
            wait_line("outputs", 120)   # the run is over: the whole map has been logged
            # (for the README's picture: wait until the whole map is on screen)
            share, png, _ = wait_for_map(page, 0.05, 60, settle=bool(os.environ.get("NM_VIEW_SCREENSHOT")))
            (tmp_path / "live_view.png").write_bytes(png)
            if os.environ.get("NM_VIEW_SCREENSHOT"):
                Path(os.environ["NM_VIEW_SCREENSHOT"]).write_bytes(png)
            assert share >= 0.05, f"3D view nearly blank: {share:.3f} non-background"
            # the mesh's colors are on screen: most foreground pixels have a color of the mesh
            import open3d as o3d
            mesh = o3d.io.read_triangle_mesh(str(out / "mesh.ply"))
            mesh_bins = color_bins(np.round(np.asarray(mesh.vertex_colors) * 255))
            view, fg = map_pixels(png)
            on_mesh = np.mean([b in mesh_bins for b in ((view[fg] // 32) @ np.array([64, 8, 1])).tolist()])
            assert on_mesh > 0.5, f"only {on_mesh:.2f} of the foreground has mesh colors"
            blocked += page.evaluate("window.nmBlocked")
            ctx.close()  # (two software-rendered pages would share the CPU)

            # a second browser joins late: the map shows within seconds of its viewer starting
            _, page2 = open_view(browser, url, requests)
            share2, _, waited = wait_for_map(page2, 0.05, LATE_TIMEOUT_S)
            assert share2 >= 0.05, f"late browser: 3D view blank after {waited:.1f} s ({share2:.3f})"
            blocked += page2.evaluate("window.nmBlocked")
            browser.close()
        assert not foreign(requests), f"requests left this machine: {foreign(requests)}"
        print(f"non-background {share:.3f}, mesh colors {on_mesh:.2f}, late browser {waited:.1f} s; "
              f"blocked in the page: {sorted(set(blocked))}")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
