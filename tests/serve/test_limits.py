"""The API key and the body size are checked before the body is read: a huge unauthenticated upload is refused
from its headers, and a body that streams past the limit is cut there (nothing spooled beyond it)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")  # the 'serve' extra
from fastapi.testclient import TestClient

from medcls import Predictor
from medcls.serve import ServeSettings, create_app


@pytest.fixture(scope="module")
def keyed(bundle):
    out, _ = bundle
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDCLS_TEST_KEY", "s3cret")
    settings = ServeSettings(bundle=str(out), backend="onnx", api_key_env="MEDCLS_TEST_KEY",
                             max_upload_bytes=200_000, max_files=2, max_wait_ms=1)
    with TestClient(create_app(settings, Predictor.load(out, backend="onnx"))) as c:
        yield c
    mp.undo()


def _stream(n_bytes: int, chunk: int = 65536):
    head = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n\r\n\x89PNG\r\n\x1a\n"
    yield head
    sent = 0
    while sent < n_bytes:
        yield b"0" * chunk
        sent += chunk


def test_no_key_is_refused_before_the_body_is_read(keyed):
    consumed = []

    def body():
        for part in _stream(50_000_000):
            consumed.append(len(part))
            yield part

    r = keyed.post("/v1/predict", content=body(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert sum(consumed) < 5_000_000  # the 50 MB body was not read by the server


def test_a_declared_length_over_the_limit_is_refused_from_the_headers(keyed):
    r = keyed.post("/v1/predict", content=b"x" * 1_000_000,
                   headers={"X-API-Key": "s3cret", "content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and "larger than the limit" in r.json()["error"]["message"]


def test_a_streamed_body_is_cut_at_the_limit(keyed):
    r = keyed.post("/v1/predict", content=_stream(5_000_000),
                   headers={"X-API-Key": "s3cret", "content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"


def test_bad_content_length_and_key_still_work(keyed):
    ok = keyed.get("/v1/model", headers={"X-API-Key": "s3cret"})
    assert ok.status_code == 200
    assert keyed.get("/health").status_code == 200  # not behind the key
    assert keyed.get("/v1/model", headers={"X-API-Key": "wrong"}).status_code == 401


def test_metrics_and_docs_can_require_the_key(bundle, monkeypatch):
    out, _ = bundle
    monkeypatch.setenv("MEDCLS_TEST_KEY", "s3cret")
    settings = ServeSettings(bundle=str(out), backend="onnx", api_key_env="MEDCLS_TEST_KEY", protect_metrics=True,
                             protect_docs=True)
    with TestClient(create_app(settings, Predictor.load(out, backend="onnx"))) as c:
        for path in ("/metrics", "/docs", "/openapi.json"):
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers={"X-API-Key": "s3cret"}).status_code == 200, path
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200


def test_requests_beyond_the_concurrency_limit_get_503_with_retry_after():
    """Driven at the ASGI level: the first request, its body received, holds its slot while the second arrives
    (whose body completes too: then it is refused)."""
    import asyncio
    import json

    from fastapi import HTTPException

    from medcls.serve.limits import RequestLimits

    release = asyncio.Event()

    async def slow_app(scope, receive, send):
        try:
            await receive()
        except HTTPException as e:  # what FastAPI's handlers turn into the response
            await send({"type": "http.response.start", "status": e.status_code,
                        "headers": [(k.encode(), v.encode()) for k, v in e.headers.items()]})
            await send({"type": "http.response.body", "body": json.dumps({"error": {"code": "busy"}}).encode()})
            return
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    settings = ServeSettings(bundle="unused", max_concurrency=1)
    limits = RequestLimits(slow_app, settings=settings, api_key=None)

    async def call():
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        await limits({"type": "http", "path": "/v1/predict", "headers": []}, receive, send)
        return sent

    async def scenario():
        first = asyncio.create_task(call())
        await asyncio.sleep(0.05)
        second = await call()  # answered at once, while the first is in flight
        release.set()
        return await first, second

    first, second = asyncio.run(scenario())
    assert first[0]["status"] == 200
    assert second[0]["status"] == 503 and (b"retry-after", b"1") in second[0]["headers"]
    assert json.loads(second[1]["body"])["error"]["code"] == "busy"
    assert limits.in_flight == 0 and limits.receiving == 0


def test_slow_uploads_do_not_take_the_places_of_complete_requests():
    """Bodies still arriving count against max_receiving, not max_concurrency: with max_concurrency 1, three
    stalled uploads and then a complete request, the complete one is served."""
    import asyncio

    from medcls.serve.limits import RequestLimits

    stall = asyncio.Event()

    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    limits = RequestLimits(app, settings=ServeSettings(bundle="unused", max_concurrency=1, max_receiving=4),
                           api_key=None)

    async def call(stalled: bool):
        sent = []

        async def receive():
            if stalled:
                await stall.wait()
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        await limits({"type": "http", "path": "/v1/predict", "headers": []}, receive, send)
        return sent[0]["status"]

    async def scenario():
        slow = [asyncio.create_task(call(True)) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert limits.receiving == 3
        ready = await call(False)
        fifth = asyncio.create_task(call(True))
        await asyncio.sleep(0.05)
        sixth = await call(True)  # 4 arriving already (3 stalled + the fifth): refused from its headers
        stall.set()
        return ready, sixth, await asyncio.gather(*slow, fifth)

    ready, sixth, slow = asyncio.run(scenario())
    assert ready == 200 and sixth == 503 and slow == [200] * 4
    assert limits.in_flight == 0 and limits.receiving == 0


def test_the_pixel_budget_holds_large_decodes_back():
    """Three holds of 60 of a budget of 100: one at a time; a hold larger than the budget still runs (alone)."""
    import asyncio

    from medcls.serve.uploads import PixelBudget

    budget, peak, log = PixelBudget(100), [0], []

    async def job(i: int, pixels: int):
        async with budget.hold(pixels):
            peak[0] = max(peak[0], budget.used)
            log.append(("start", i))
            await asyncio.sleep(0.02)
            log.append(("end", i))

    async def scenario():
        await asyncio.gather(*(job(i, 60) for i in range(3)), job(3, 10**9))

    asyncio.run(scenario())
    assert peak[0] <= 100 and budget.used == 0
    starts = [i for kind, i in log if kind == "start"]
    assert len(starts) == 4
    for a, b in zip(log[::2], log[1::2], strict=True):  # never two 60s at once: start/end alternate
        assert a[0] == "start" and b == ("end", a[1])


def test_large_valid_images_wait_for_the_budget_and_are_all_answered(keyed_small_budget, monkeypatch):
    """Eight 2000x2000 uploads at once against a budget of two such images: all 200, never > 2 in decode."""
    import io
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from PIL import Image

    from medcls.serve import uploads

    client, budget = keyed_small_budget
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (2000, 2000), dtype=np.uint8)).save(buf, "PNG")
    real, lock, now, peak = uploads._decode, threading.Lock(), [0], [0]

    def counted(*args):
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        try:
            time.sleep(0.05)
            return real(*args)
        finally:
            with lock:
                now[0] -= 1

    monkeypatch.setattr(uploads, "_decode", counted)
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: client.post("/v1/predict", files={"file": ("a.png", buf.getvalue())},
                                                     headers={"X-API-Key": "s3cret"}).status_code, range(8)))
    assert codes == [200] * 8
    assert peak[0] == 2 and budget.used == 0


@pytest.fixture
def keyed_small_budget(bundle, monkeypatch):
    out, _ = bundle
    monkeypatch.setenv("MEDCLS_TEST_KEY", "s3cret")
    settings = ServeSettings(bundle=str(out), backend="onnx", api_key_env="MEDCLS_TEST_KEY",
                             max_upload_bytes=8_000_000, decode_pixels=8_000_000, max_wait_ms=1)
    app = create_app(settings, Predictor.load(out, backend="onnx"))
    with TestClient(app) as c:
        yield c, app.state.decode_budget


def test_an_unhandled_error_is_a_500_in_the_one_shape_and_counted(bundle, monkeypatch):
    out, _ = bundle
    pred = Predictor.load(out, backend="onnx")
    monkeypatch.setattr(pred, "preprocess", lambda img: 1 / 0)
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(buf, "PNG")
    with TestClient(create_app(ServeSettings(bundle=str(out)), pred), raise_server_exceptions=False) as c:
        r = c.post("/v1/predict", files={"file": ("a.png", buf.getvalue())})
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
        assert "ZeroDivision" not in r.text
        assert 'medcls_requests_total{route="/v1/predict",status="500"} 1.0' in c.get("/metrics").text


def test_refusals_are_counted_in_the_metrics(keyed):
    keyed.post("/v1/predict", files={"file": ("x.png", b"x")})  # no key: 401 from the middleware
    text = keyed.get("/metrics").text
    assert 'medcls_requests_total{route="unrouted",status="401"}' in text


def test_a_body_slower_than_the_minimum_rate_gets_408(monkeypatch):
    """After the grace period a body must keep arriving at min_rate bytes/s on average (a client sending
    100 bytes then 10 bytes every 0.1 s, at 100 B/s against 1000 B/s, is cut long before the 60 s deadline)."""
    import asyncio

    from fastapi import HTTPException

    from medcls.serve import limits

    monkeypatch.setattr(limits, "RATE_GRACE", 0.2)

    async def trickle():
        first = True

        async def receive():
            nonlocal first
            if not first:
                await asyncio.sleep(0.1)
            first = False
            return {"type": "http.request", "body": b"x" * 10, "more_body": True}

        bounded = limits._deadline_receive(receive, 60.0, 1000.0)
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(HTTPException) as e:
            while True:
                await bounded()
        return e.value, asyncio.get_running_loop().time() - t0

    err, took = asyncio.run(trickle())
    assert err.status_code == 408 and "slower than 1000 bytes/s" in err.detail and took < 2

    async def steady():  # 2000 B/s: never cut, completes
        n = 0

        async def receive():
            nonlocal n
            n += 1
            await asyncio.sleep(0.01)
            return {"type": "http.request", "body": b"x" * 20, "more_body": n < 60}

        bounded = limits._deadline_receive(receive, 60.0, 1000.0)
        while (await bounded()).get("more_body"):
            pass
        return n

    assert asyncio.run(steady()) == 60

    async def server_busy():  # the server reads late and slowly; the client answers at once: never its fault
        async def receive():
            return {"type": "http.request", "body": b"x", "more_body": True}

        bounded = limits._deadline_receive(receive, 60.0, 1000.0)
        for _ in range(3):
            await asyncio.sleep(0.3)  # beyond the 0.2 s grace, with 1 byte/read: 3 B/s of wall-clock time
            await bounded()
        return True

    assert asyncio.run(server_busy())


def test_a_flood_of_large_images_is_shed_before_small_ones_wait():
    """Budget 100, queue 150: one 60 runs, two 60s wait (120), a fourth 60 gets 503 at once; a 30 still fits
    beside the running one and never waits."""
    import asyncio

    from fastapi import HTTPException

    from medcls.serve.uploads import PixelBudget

    budget, release = PixelBudget(100, queue=150), asyncio.Event()

    async def job(pixels: int):
        async with budget.hold(pixels):
            await release.wait()
        return 200

    async def scenario():
        held = [asyncio.create_task(job(60)) for _ in range(3)]
        await asyncio.sleep(0.02)
        assert budget.used == 60 and budget.waiting == 120
        with pytest.raises(HTTPException) as e:
            await job(60)
        small = asyncio.create_task(job(30))
        await asyncio.sleep(0.02)
        assert budget.used == 90  # the small one did not queue behind the large ones
        release.set()
        return e.value, await asyncio.gather(*held, small)

    err, codes = asyncio.run(scenario())
    assert err.status_code == 503 and err.headers["retry-after"] == "1" and err.error_code == "busy"
    assert codes == [200] * 4 and budget.used == 0 and budget.waiting == 0
