"""``zir serve``'s app, started with uvicorn on 127.0.0.1: good and bad uploads over real HTTP, a slow
prediction that does not block ``/health``, and a bounded load run (its latencies are printed, not asserted)."""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="pip install 'zir[serve]' to test the server")
import uvicorn  # noqa: E402

from zir.config import RunConfig  # noqa: E402
from zir.engine.predictor import Predictor  # noqa: E402
from zir.export.serve import create_app  # noqa: E402
from zir.models import build_model  # noqa: E402

CLASSES = ["circle", "square", "star"]


class SlowPredictor(Predictor):
    """With ``hold`` set, predict signals ``entered`` and waits until the test sets ``release``: a slow
    image, for as long as the test needs, without any clock."""

    hold = False
    entered = threading.Event()
    release = threading.Event()

    def predict(self, images, batch_size=16):
        if self.hold:
            self.entered.set()
            self.release.wait(60)
        return super().predict(images, batch_size)


@pytest.fixture(scope="module")
def server():
    torch.manual_seed(0)
    model = build_model("yolo_v1", 3, 64, {"backbone": "convnet", "width": 8, "S": 4, "hidden": 32, "neck": 32})
    with torch.no_grad():  # a fresh model finds nothing: biases in [0, 1] make it report boxes
        model.head.fc2.bias.uniform_(0, 1, generator=torch.Generator().manual_seed(0))
    predictor = SlowPredictor(model, CLASSES, RunConfig(model="yolo_v1"))
    app = create_app(predictor, max_bytes=200_000, max_pixels=1_000_000)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", predictor
    srv.should_exit = True
    thread.join(10)


def _png(w: int, h: int, seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _post(url: str, data: bytes | None, field: str = "file", name: str = "x.png") -> tuple[int, dict]:
    boundary = uuid.uuid4().hex
    body = b"" if data is None else (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
        f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "/predict", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.status, r.read()


def test_predict_answers_what_the_model_predicts(server):
    url, predictor = server
    data = _png(80, 60)
    status, body = _post(url, data)
    assert status == 200, body
    expected = predictor.predict(torch.from_numpy(np.array(Image.open(io.BytesIO(data)))).permute(2, 0, 1))[0]
    assert (body["height"], body["width"]) == (60, 80)
    assert len(body["boxes"]) == len(expected.boxes) > 0
    np.testing.assert_allclose(body["boxes"], expected.boxes.numpy(), atol=1e-3)
    assert set(body["classes"]) <= set(CLASSES)
    assert _get(url + "/health")[1] and json.loads(_get(url + "/health")[1])["status"] == "ok"
    assert b"/predict" in _get(url + "/")[1]
    assert "/predict" in json.loads(_get(url + "/openapi.json")[1])["paths"]


def _bomb() -> bytes:
    """A 5000x5000 PNG of one colour: a few KiB on the wire, 25 million pixels decoded."""
    buf = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("case, data, status, words", [
    ("empty", b"", 400, "empty"),
    ("text renamed .png", b"hello, I am not an image\n" * 10, 400, "not an image"),
    ("truncated", _png(40, 40)[:200], 400, "not an image"),
    ("too many bytes", _png(300, 300), 413, "bytes"),
    ("too many pixels", _bomb(), 413, "pixels"),
])
def test_bad_uploads_get_4xx_json_and_the_server_keeps_serving(server, case, data, status, words):
    url, _ = server
    got, body = _post(url, data)
    assert got == status and words in body["error"], (case, got, body)
    assert _post(url, _png(32, 32))[0] == 200  # and the next request is served


def test_a_missing_field_and_a_1x1_image(server):
    url, _ = server
    got, body = _post(url, _png(8, 8), field="image")
    assert got == 422 and "field 'file'" in body["error"]
    got, body = _post(url, _png(1, 1))
    assert got == 200 and body["width"] == 1


def test_a_slow_prediction_does_not_block_health(server):
    url, predictor = server
    predictor.hold = True
    try:
        slow = ThreadPoolExecutor(1).submit(_post, url, _png(32, 32))
        assert predictor.entered.wait(60)  # the slow request is in the model now, held there
        assert json.loads(_get(url + "/health")[1])["status"] == "ok"  # answered meanwhile
        assert _post(url, b"")[0] == 400  # and so is another upload
        assert not slow.done()
    finally:
        predictor.hold = False
        predictor.release.set()
    assert slow.result()[0] == 200


def test_load_300_requests_8_at_a_time(server):
    url, _ = server
    images = [_png(64, 48, seed=k) for k in range(8)]

    def one(k: int) -> tuple[int, float]:
        start = time.perf_counter()
        status, _ = _post(url, images[k % 8])
        return status, time.perf_counter() - start

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(300)))
    assert [s for s, _ in results].count(200) == 300
    ms = np.array([t for _, t in results]) * 1000
    print(f"\nload: 300 requests, 8 at a time: p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms")
