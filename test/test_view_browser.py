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


def _free_port_triple() -> int:
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


def wait_for_map(page, min_share: float, timeout_s: float):
    """Screenshots until the 3D view's non-background share reaches ``min_share``."""
    t0 = time.monotonic()
    share, png = 0.0, b""
    while time.monotonic() - t0 < timeout_s:
        png = page.screenshot()
        share = float(map_pixels(png)[1].mean())
        if share >= min_share:
            break
        page.wait_for_timeout(500)
    return share, png, time.monotonic() - t0


def test_live_view_in_chromium(tmp_path):
    chromium = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (requirements.txt)")
    pytest.importorskip("rerun", reason="rerun-sdk (the view extra) is not installed")
    port = _free_port_triple()
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
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            ctx = browser.new_context(viewport=VIEWPORT)
            requests = []
            ctx.on("request", lambda r: requests.append(r.url))
            page = ctx.new_page()
            page.goto(url)
            page.wait_for_function("window.nmStarted === true", timeout=90_000)
            wait_line("outputs", 120)   # the run is over: the whole map has been logged
            share, png, _ = wait_for_map(page, 0.05, 60)
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
            late = browser.new_context(viewport=VIEWPORT)
            late.on("request", lambda r: requests.append(r.url))
            page2 = late.new_page()
            page2.goto(url)
            page2.wait_for_function("window.nmStarted === true", timeout=90_000)
            share2, _, waited = wait_for_map(page2, 0.05, 20)
            assert share2 >= 0.05, f"late browser: 3D view blank after {waited:.1f} s ({share2:.3f})"
            assert waited < 10.0, f"late browser waited {waited:.1f} s for the map"
            blocked += page2.evaluate("window.nmBlocked")
            browser.close()
        foreign = sorted({u for u in requests if not u.startswith(("http://127.0.0.1", "data:", "blob:"))})
        assert not foreign, f"requests left this machine: {foreign}"
        print(f"non-background {share:.3f}, mesh colors {on_mesh:.2f}, late browser {waited:.1f} s; "
              f"blocked in the page: {sorted(set(blocked))}")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
