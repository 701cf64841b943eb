"""Serving the live view: Rerun's gRPC server (the data), Rerun's web viewer files, and our page.

Ports (``view_port`` = P):

* ``P``: our page, bound to 127.0.0.1 (http://127.0.0.1:P).  It loads Rerun's web viewer (wasm)
  with the welcome screen and examples off and connects it to the gRPC server of the host the
  page came from.  Before the viewer starts, the page replaces ``window.fetch`` so that any
  request to another host fails at once in the browser: the viewer's update check
  (api.github.com), usage analytics (tel.rerun.io) and examples manifest (app.rerun.io), and
  the Google font of Rerun's stock page, never leave the machine.  Everything else it asks for
  (``re_viewer.js``, ``re_viewer_bg.wasm``, ``favicon.ico``) is proxied from ``P + 2``.
* ``P + 1``: Rerun's gRPC server: keeps at most ``view_memory_limit_mib`` of per-frame data for
  late browsers, sends the newest first; static data (the map) is kept outside the limit.
  Rerun binds it to all interfaces (no option to choose).
* ``P + 2``: Rerun's own web viewer server (the wasm files from the wheel), also on all
  interfaces; its stock page would contact the internet, ours does not.

The Python SDK itself sends no usage data from this process; its OpenTelemetry tracing stays
off (``TELEMETRY_ENABLED`` unset or false).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from neural_mapping.config.view import ViewConfig
from neural_mapping.view import require_rerun

log = logging.getLogger(__name__)

APP_ID = "neural_mapping"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>neural_mapping live view</title>
<style>html,body{margin:0;height:100%;overflow:hidden;background:#0d1011}
canvas{position:absolute;top:0;left:0;width:100%;height:100%}</style></head>
<body><canvas id="the_canvas_id"></canvas>
<script>
// offline: requests to any other host fail here, in the browser (update check, analytics, ...)
(function () {
  const fetch0 = window.fetch.bind(window);
  window.nmBlocked = [];
  window.fetch = function (input, init) {
    const u = new URL(typeof input === "string" ? input : (input.url || String(input)), location.href);
    if (u.hostname !== location.hostname) {
      window.nmBlocked.push(u.href);
      return Promise.reject(new TypeError("neural_mapping live view: offline, " + u.host + " blocked"));
    }
    return fetch0(input, init);
  };
})();
delete WebAssembly.instantiateStreaming;
</script>
<script src="re_viewer.js"></script>
<script>
wasm_bindgen("./re_viewer_bg.wasm").then(() => {
  const handle = new wasm_bindgen.WebHandle({
    url: ["rerun+http://" + location.hostname + ":GRPC_PORT/proxy"],
    manifest_url: "/examples_manifest.json",
    hide_welcome_screen: true, enable_history: false, persist: false, notebook: false,
  });
  window._handle = handle;
  return handle.start(document.getElementById("the_canvas_id"));
}).then(() => { window.nmStarted = true; })
  .catch((e) => { document.body.innerHTML = "<pre style='color:#ccc'>live view failed: " + e + "</pre>"; });
</script></body></html>
"""


def port_free(port: int) -> bool:
    """Nothing listens on ``port`` (checked on all interfaces, as Rerun binds there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers: TIME_WAIT is free
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


class ViewServer:
    """The three servers of one live view and its recording stream ``rec``; ``url`` to open."""

    def __init__(self, cfg: ViewConfig):
        from neural_mapping.view.logger import default_blueprint
        cfg.validate()
        os.environ.setdefault("TELEMETRY_ENABLED", "false")  # rerun's OpenTelemetry tracing: off
        rr = require_rerun()
        self.cfg = cfg
        port = cfg.view_port
        self.ports = {"page": port, "grpc": port + 1, "assets": port + 2}
        busy = [f"{name} {p}" for name, p in self.ports.items() if not port_free(p)]
        if busy:
            raise OSError(f"live view: port(s) {', '.join(busy)} in use; choose another --view-port "
                          f"(it uses {port}, {port + 1} and {port + 2})")
        self.rec = rr.RecordingStream(APP_ID, recording_id=str(uuid.uuid4()))
        self.grpc_url = self.rec.serve_grpc(
            grpc_port=self.ports["grpc"], default_blueprint=default_blueprint(),
            server_memory_limit=f"{cfg.view_memory_limit_mib:g}MiB", newest_first=True)
        self.rec.send_blueprint(default_blueprint())
        rr.serve_web_viewer(web_port=self.ports["assets"], open_browser=False, connect_to=self.grpc_url)
        self.url = f"http://127.0.0.1:{port}/"
        self._page = ThreadingHTTPServer(("127.0.0.1", port), _handler(self.ports))
        self._page.daemon_threads = True
        self._thread = threading.Thread(target=self._page.serve_forever, name="nm-view-page",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop our page and Rerun's gRPC server (Rerun's file server lives until the process
        ends: Rerun offers no way to stop it)."""
        self._page.shutdown()
        self._page.server_close()
        self.rec.flush()
        self.rec.disconnect()


def _handler(ports):
    page = PAGE.replace("GRPC_PORT", str(ports["grpc"])).encode()
    assets = f"http://127.0.0.1:{ports['assets']}"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # quiet: no line per request on the console
            log.debug("view page: " + fmt, *args)

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 (http.server API)
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                return self._send(200, page, "text/html; charset=utf-8")
            if path == "/examples_manifest.json":
                return self._send(200, b"[]", "application/json")
            try:  # the viewer's files, streamed from Rerun's file server
                with urllib.request.urlopen(assets + path, timeout=30) as r:
                    self.send_response(r.status)
                    for h in ("Content-Type", "Content-Length"):
                        if r.headers.get(h):
                            self.send_header(h, r.headers[h])
                    self.end_headers()
                    while True:
                        chunk = r.read(1 << 20)
                        if not chunk:
                            break
                        self.wfile.write(chunk)
            except urllib.error.HTTPError as e:
                self._send(e.code, b"", "text/plain")
            except (OSError, urllib.error.URLError) as e:
                self._send(502, f"live view: {e}".encode(), "text/plain")

    return Handler
