"""`medcls serve` as a real process on 127.0.0.1, bounded concurrent requests, and a browser test."""

from __future__ import annotations

import io
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from .live import served

ARTIFACTS = Path(os.environ.get("MEDCLS_TEST_ARTIFACTS", "test-artifacts"))


@pytest.fixture(scope="module")
def server(bundle):
    out, _ = bundle
    with served(out, "--backend", "onnx", "--max-wait-ms", "5") as (base, _proc):
        yield base


def png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_concurrent_requests_all_answered(server, pneumonia_arrays):
    images = [png(pneumonia_arrays["test_images"][i]) for i in range(40)]

    def call(i: int) -> tuple[int, dict]:
        r = httpx.post(server + "/v1/predict", files={"file": (f"{i}.png", images[i])}, timeout=60)
        return r.status_code, r.json()

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(call, range(len(images))))
    assert all(code == 200 for code, _ in answers), [a for a in answers if a[0] != 200][:3]
    for _, body in answers:
        p = body["probabilities"]
        assert abs(sum(p.values()) - 1) < 1e-4 and body["predicted"] in p
    metrics = httpx.get(server + "/metrics").text
    # micro-batching gathered concurrent requests: some model call saw more than one image
    count = float(next(line.split()[-1] for line in metrics.splitlines() if line.startswith("medcls_batch_size_count")))
    total = float(next(line.split()[-1] for line in metrics.splitlines() if line.startswith("medcls_batch_size_sum")))
    assert total == len(images) and count < len(images)


def _browser_or_skip():
    """playwright.sync_api, or a skip (a failure when MEDCLS_REQUIRE_BROWSER=1, as in CI) without chromium."""
    missing = None if shutil.which("chromium") else "Debian chromium is not installed (make browser-deps)"
    try:
        import playwright.sync_api as pw
    except ImportError:
        pw, missing = None, missing or "playwright is not installed (pip install -e '.[dev]')"
    if missing and os.environ.get("MEDCLS_REQUIRE_BROWSER") == "1":
        pytest.fail(f"the browser test must run here (MEDCLS_REQUIRE_BROWSER=1): {missing}")
    if missing:
        pytest.skip(missing)
    return pw


def test_web_page_in_headless_chromium(server, pneumonia_arrays, tmp_path):
    pw = _browser_or_skip()
    img = tmp_path / "xray.png"
    Image.fromarray(pneumonia_arrays["test_images"][0]).save(img)
    args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=args)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(server + "/")
        page.set_input_files("#file", str(img))
        page.wait_for_selector("#result[data-ready='1']", timeout=60_000)
        bars = page.locator("#bars .bar")
        assert bars.count() == 2
        decision = page.inner_text("#decision")
        assert "Decision:" in decision and "the threshold" in decision
        assert "fitted on val (operating point youden)" in decision  # the provenance, in words
        assert page.is_visible("#ood") and "distribution" in page.inner_text("#ood")  # the gate's verdict, shown
        assert page.get_attribute("#ood", "data-flagged") in ("0", "1")
        for img_id in ("image", "base", "heat"):  # original and overlay side by side
            assert page.eval_on_selector(f"#{img_id}", "el => el.naturalWidth") >= 224, img_id
        assert page.is_visible(".scale") and "map" in page.inner_text("#cam-layer")
        page.fill("#opacity", "20")
        page.dispatch_event("#opacity", "input")
        assert page.eval_on_selector("#heat", "el => getComputedStyle(el).opacity") == "0.2"
        page.fill("#opacity", "60")
        page.dispatch_event("#opacity", "input")
        assert page.is_hidden("#coarse")  # the default 7x7 layer: no coarse-map warning
        page.screenshot(path=str(ARTIFACTS / "web-page.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "web-page.png").stat().st_size > 10_000
