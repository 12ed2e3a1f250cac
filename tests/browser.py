"""Open a page in headless Chromium and ask it questions (Chrome DevTools Protocol, no extra packages).

Used to check that the HTML report really renders: Bokeh draws its plots with JavaScript, so
reading the file proves nothing. The page is opened in Debian's ``chromium``; tests skip
where it is not installed. The protocol is spoken over Tornado's WebSocket client (Tornado
comes with ``distributed``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,2400",
)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


async def _session(
    ws_url: str, page_url: str, expression: str, ready: str, timeout: float, screenshot: Path | None = None
) -> tuple[Any, list[str]]:
    from tornado.websocket import websocket_connect

    conn = await websocket_connect(ws_url, max_message_size=64 * 2**20)
    errors: list[str] = []
    next_id = 0

    async def call(method: str, **params: Any) -> dict:
        nonlocal next_id
        next_id += 1
        conn.write_message(json.dumps({"id": next_id, "method": method, "params": params}))
        while True:
            message = json.loads(await conn.read_message())
            if message.get("method") == "Runtime.exceptionThrown":
                errors.append(json.dumps(message["params"]["exceptionDetails"])[:500])
            elif message.get("method") == "Runtime.consoleAPICalled" and message["params"]["type"] == "error":
                errors.append(json.dumps(message["params"]["args"])[:500])
            if message.get("id") == next_id:
                return message.get("result", {})

    await call("Runtime.enable")
    await call("Page.enable")
    await call("Page.navigate", url=page_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = await call("Runtime.evaluate", expression=ready, returnByValue=True)
        if done.get("result", {}).get("value") is True:
            break
        await asyncio.sleep(0.25)
    # asked once the page is ready (or at the deadline), never before: a value read just
    # before the page finished rendering would describe a page that no longer exists
    reply = await call("Runtime.evaluate", expression=expression, returnByValue=True)
    value = reply.get("result", {}).get("value")
    if screenshot is not None:
        shot = await call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
    conn.close()
    return value, errors


def evaluate_page(
    path: Path | str, expression: str, ready: str, timeout: float = 60.0, screenshot: Path | None = None
) -> tuple[Any, list[str]]:
    """Open ``path`` (a file, or an ``http://`` address), wait until the JavaScript ``ready`` is true, return
    ``expression``'s value and page errors; with ``screenshot``, the page as drawn then is saved there (PNG)."""
    binary = chromium()
    if binary is None:
        raise RuntimeError("chromium is not installed")
    # chromium's helper processes may still write to the profile while it is removed: ignore that
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so that the helpers go with it
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 30
            while not (port_file.exists() and port_file.read_text().strip()):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("chromium did not start its DevTools endpoint")
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as reply:
                pages = [t for t in json.load(reply) if t["type"] == "page"]
            url = path if isinstance(path, str) else path.resolve().as_uri()
            return asyncio.run(_session(pages[0]["webSocketDebuggerUrl"], url, expression, ready, timeout, screenshot))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


#: JavaScript: Bokeh's plot views in the page, how many have finished rendering, and their canvas sizes.
BOKEH_PLOTS = """(() => {
  if (!window.Bokeh || !Bokeh.index) return {plots: 0, finished: 0, titles: []};
  const views = [...Bokeh.index.all_views()].filter((v) => v.model.type === 'Figure' || v.model.type === 'Plot');
  return {
    plots: views.length,
    finished: views.filter((v) => v.has_finished()).length,
    titles: views.map((v) => v.model.title ? v.model.title.text : ''),
    sizes: views.map((v) => [v.canvas_view.bbox.width, v.canvas_view.bbox.height]),
  };
})()"""
BOKEH_READY = """(() => {
  if (!window.Bokeh || !Bokeh.index) return false;
  const views = [...Bokeh.index.all_views()].filter((v) => v.model.type === 'Figure' || v.model.type === 'Plot');
  return views.length > 0 && views.every((v) => v.has_finished());
})()"""


#: JavaScript: each plot's legends that overlap its plotting frame (the area where data is drawn),
#: with the boxes as the page laid them out: [] when every legend sits beside its plot.
LEGENDS_OVER_DATA = """(() => {
  if (!window.Bokeh || !Bokeh.index) return null;
  const box = (b) => [b.left, b.top, b.right, b.bottom];
  // by more than a pixel: a legend laid out beside the frame may start a fraction of a pixel inside it
  const overlap = (a, b) =>
    a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1;
  const found = [];
  let legends = 0;
  for (const v of Bokeh.index.all_views()) {
    if (!(v.model.type === 'Figure' || v.model.type === 'Plot')) continue;
    for (const r of v.renderer_views.values()) {
      if (r.model.type !== 'Legend' || !r.bbox) continue;
      legends += 1;
      if (overlap(r.bbox, v.frame.bbox)) {
        found.push({plot: v.model.title ? v.model.title.text : '', legend: box(r.bbox), frame: box(v.frame.bbox)});
      }
    }
  }
  return {legends: legends, over_data: found};
})()"""

#: JavaScript: the text of every table cell (in Bokeh's Divs too) that the page broke over more than one line.
WRAPPED_CELLS = """(() => {
  if (!window.Bokeh || !Bokeh.index) return null;
  const divs = [...Bokeh.index.all_views()].filter((v) => v.model.type === 'Div');
  const roots = [document, ...divs.map((v) => v.el.shadowRoot || v.el)];
  const wrapped = [];
  let cells = 0;
  for (const root of roots) {
    for (const cell of root.querySelectorAll('td, th')) {
      cells += 1;
      const range = document.createRange();
      range.selectNodeContents(cell);
      const lines = new Set([...range.getClientRects()].map((r) => Math.round(r.top)));
      if (lines.size > 1) wrapped.push(cell.innerText);
    }
  }
  return {cells: cells, wrapped: wrapped};
})()"""
