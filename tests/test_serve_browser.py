"""End to end in real headless Chromium: uvicorn on a loopback port, the page, clicks, downloads.

Skips only when /usr/bin/chromium is absent (``make browser`` installs it where it can).
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium not installed at /usr/bin/chromium"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server_url():
    """A real uvicorn server with a random-weight MobileSAM, in a thread, on a free loopback port."""
    import uvicorn

    from conftest import build_official_sam
    from imseg.serve.app import ServeSettings, create_app

    app = create_app(build_official_sam("vit_t"),
                     ServeSettings(everything_options=dict(points_per_side=2, pred_iou_thresh=-1.0,
                                                           stability_score_thresh=0.0)))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def page(server_url):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        context = browser.new_context(accept_downloads=True, viewport={"width": 1200, "height": 900})
        page = context.new_page()
        page.set_default_timeout(60_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server_url + "/")
        yield page
        assert not errors, f"JavaScript errors on the page: {errors}"
        browser.close()


OVERLAY_PIXELS = """() => {
  const c = document.getElementById('overlay');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
  return n;
}"""


def wait_for_new_score(page, previous: str) -> str:
    page.wait_for_function(
        "prev => { const s = document.getElementById('score').dataset.score; return s !== '' && s !== prev; }",
        arg=previous,
    )
    return page.get_attribute("#score", "data-score")


def test_click_to_segment_in_chromium(page, sample_image, tmp_path):
    from PIL import Image
    from pycocotools.coco import COCO

    path = tmp_path / "astronaut.png"
    Image.fromarray(sample_image[:192]).save(path)  # 256 wide x 192 high
    page.set_input_files("#file", str(path))
    page.wait_for_function("document.getElementById('status').textContent.includes('ready')")
    assert page.locator("#model").inner_text() == "mobile-sam"
    assert page.evaluate("[document.getElementById('overlay').width, document.getElementById('overlay').height]") == [256, 192]

    # left click = positive point, at image pixel (100, 80) whatever the CSS scale
    box = page.locator("#prompts").bounding_box()
    scale = box["width"] / 256
    page.click("#prompts", position={"x": 100 * scale, "y": 80 * scale})
    score = wait_for_new_score(page, "")
    assert -1.5 < float(score) < 1.5
    score_text = page.inner_text("#score")
    assert score_text.startswith("score ")
    area = int(score_text.split("area ")[1].split(" ")[0])
    pixels = page.evaluate(OVERLAY_PIXELS)
    assert pixels > 0 and pixels == area, (pixels, area)
    assert page.locator(".candidate").count() == 3

    # pick another candidate: the overlay and the score follow it
    page.locator(".candidate").nth(1).click()
    second = page.get_attribute("#score", "data-score")
    assert second != score and page.evaluate(OVERLAY_PIXELS) == int(page.inner_text("#score").split("area ")[1].split(" ")[0])
    page.locator(".candidate").nth(0).click()

    # right click = negative point, then undo returns to the one-point result
    page.click("#prompts", position={"x": 200 * scale, "y": 150 * scale}, button="right")
    after_negative = wait_for_new_score(page, score)
    page.click("#undo")
    assert wait_for_new_score(page, after_negative) == score

    # downloads: COCO JSON decodes with pycocotools to exactly the overlay; PNG too
    with page.expect_download() as info:
        page.click("#download-coco")
    coco_path = tmp_path / "masks.json"
    info.value.save_as(coco_path)
    coco = COCO(str(coco_path))
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) == 1 and coco.imgs[1]["width"] == 256 and coco.imgs[1]["height"] == 192
    decoded = coco.annToMask(anns[0])
    assert decoded.shape == (192, 256) and int(decoded.sum()) == anns[0]["area"] == pixels
    assert anns[0]["score"] == pytest.approx(float(score), abs=1e-6)

    with page.expect_download() as info:
        page.click("#download-png")
    png = np.asarray(Image.open(io.BytesIO(Path(info.value.path()).read_bytes())).convert("L"))
    assert png.shape == (192, 256) and np.array_equal(png > 127, decoded.astype(bool))

    # drag = box prompt
    page.mouse.move(box["x"] + 30 * scale, box["y"] + 30 * scale)
    page.mouse.down()
    page.mouse.move(box["x"] + 180 * scale, box["y"] + 150 * scale, steps=5)
    page.mouse.up()
    wait_for_new_score(page, score)

    # segment everything: several coloured masks, COCO JSON with one annotation per mask
    page.click("#everything")
    page.wait_for_function("document.getElementById('score').textContent.endsWith('masks')")
    n = int(page.inner_text("#score").split()[0])
    assert n >= 1 and page.evaluate(OVERLAY_PIXELS) > 0
    with page.expect_download() as info:
        page.click("#download-coco")
    data = json.loads(Path(info.value.path()).read_text())
    assert len(data["annotations"]) == n


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_drop_on_the_drop_zone_uploads_once(page, sample_image):
    import base64

    uploads: list[str] = []

    def on_request(request) -> None:
        if request.method == "POST" and request.url.endswith("/v1/images"):
            uploads.append(request.url)

    page.on("request", on_request)
    try:
        page.evaluate(
            """(b64) => {
              const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
              const dt = new DataTransfer();
              dt.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
              const drop = document.getElementById("drop");
              drop.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
            }""",
            base64.b64encode(_png_bytes(sample_image[:48, :64])).decode(),
        )
        page.wait_for_function("document.getElementById('status').textContent.startsWith('dropped.png: 64×48')")
        page.wait_for_timeout(300)  # both handlers would have sent their request before the first answer
    finally:
        page.remove_listener("request", on_request)
    assert len(uploads) == 1, uploads
    assert page.evaluate("document.getElementById('overlay').width") == 64


def test_a_slow_earlier_upload_does_not_replace_a_later_one(page, sample_image, tmp_path):
    slow, fast = tmp_path / "slow.png", tmp_path / "fast.png"
    slow.write_bytes(_png_bytes(sample_image[:192]))  # 256x192
    fast.write_bytes(_png_bytes(sample_image[:64, :96]))  # 96x64
    # hold back the answer to the first upload until the second one is on screen
    page.evaluate("""() => {
      window.__realFetch = window.fetch;
      let first = true;
      window.__slowDone = false;
      window.fetch = async (...args) => {
        const response = await window.__realFetch(...args);
        if (first && String(args[0]).endsWith("/v1/images")) {
          first = false;
          await new Promise((resolve) => {
            const shown = () => document.getElementById("status").textContent.startsWith("fast.png: ");
            const poll = () => (shown() ? resolve() : setTimeout(poll, 50));
            poll();
          });
          setTimeout(() => { window.__slowDone = true; }, 500);  // after loadFile has handled the answer
        }
        return response;
      };
    }""")
    try:
        page.set_input_files("#file", str(slow))
        page.set_input_files("#file", str(fast))
        page.wait_for_function("window.__slowDone === true")  # set only once fast.png was shown and slow.png answered
        assert page.inner_text("#status").startswith("fast.png: 96×64")
        assert page.evaluate("[document.getElementById('overlay').width, document.getElementById('overlay').height]") == [96, 64]
        # prompts go to the image on screen
        box = page.locator("#prompts").bounding_box()
        page.click("#prompts", position={"x": 40 * box["width"] / 96, "y": 30 * box["height"] / 64})
        wait_for_new_score(page, "")
        assert page.locator(".candidate").count() == 3
    finally:
        page.evaluate("() => { window.fetch = window.__realFetch; }")
