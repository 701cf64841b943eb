"""The node's live view (``web_view_port``): the node process serves the page and streams the
map while it maps real 7-Scenes frames sent over DDS; a headless Chromium sees the map; the
node still answers every frame with a pose and shuts down cleanly (exit 0, threads joined)."""

import urllib.request

import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("rerun", reason="rerun-sdk (the view extra) is not installed")

from test_ros_node import STAMP0, Harness, dget, load_frames, node_params  # noqa: E402
from test_view_browser import (foreign, free_port_triple, launch, map_pixels,  # noqa: E402
                               open_view, require_browser, wait_for_map)

N_FRAMES = 20


def test_node_serves_the_live_view(tmp_path, redkitchen):
    chromium, sync_playwright = require_browser()
    frames = load_frames(redkitchen, N_FRAMES)
    port = free_port_triple()
    h = Harness(tmp_path, node_params(tmp_path / "out", pose_source="external", web_view_port=port))
    try:
        assert h.spin_until(lambda: f"live view: open http://127.0.0.1:{port}/" in h.logs(), 60), h.logs()
        # realtime mode may drop (and count) a frame when this shared machine is loaded: the
        # subject here is the view, so a few dropped frames are tolerated
        missing = h.send_lockstep(frames, STAMP0)
        assert len(missing) <= N_FRAMES // 4, missing
        d = h.wait_idle(N_FRAMES - len(missing) - 2)
        assert dget(d, "integrated") >= N_FRAMES - len(missing) - 2, d
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).read().decode()
        assert "re_viewer.js" in page and f":{port + 1}/proxy" in page
        requests = []
        with sync_playwright() as p:
            browser = launch(p, chromium)
            _, view = open_view(browser, f"http://127.0.0.1:{port}/", requests)
            share, png, waited = wait_for_map(view, 0.03, 60)
            (tmp_path / "node_view.png").write_bytes(png)
            assert share >= 0.03, f"node view blank after {waited:.1f} s ({share:.3f})"
            assert map_pixels(png)[1].any()
            browser.close()
        assert not foreign(requests), foreign(requests)
    finally:
        h.stop_and_check()
