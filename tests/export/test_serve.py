"""``zir serve``'s app, started with uvicorn on 127.0.0.1 (``conftest.py``): good and bad uploads over real
HTTP, a slow prediction that does not block ``/health``, a bounded load run (its latencies are printed, not
asserted), and ``zir serve`` refusing, by name, a run or ONNX file it cannot serve."""

from __future__ import annotations

import io
import json
import struct
import time
import urllib.error
import urllib.request
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="pip install 'zir[serve]' to test the server")

from zir.cli import main  # noqa: E402
from zir.export.serve import BadUpload, decode_upload  # noqa: E402


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
    assert set(body["classes"]) <= set(predictor.classes)
    assert _get(url + "/health")[1] and json.loads(_get(url + "/health")[1])["status"] == "ok"
    assert b"/predict" in _get(url + "/")[1]
    assert "/predict" in json.loads(_get(url + "/openapi.json")[1])["paths"]


def _huge_png(w: int = 20_000, h: int = 20_000) -> bytes:
    """A whole, valid ``w`` x ``h`` black PNG, 1 bit a pixel: about 50 KB on the wire, 400 million
    pixels once decoded (PIL cannot make one without allocating them)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows, z = bytes(1 + (w + 7) // 8) * 1000, zlib.compressobj(9)  # filter byte + packed bits, per row
    idat = b"".join(z.compress(rows) for _ in range(h // 1000)) + z.compress(bytes(len(rows) // 1000 * (h % 1000)))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat + z.flush()) + chunk(b"IEND", b""))


def _corrupt_png() -> bytes:
    data = _png(40, 40)
    at = data.index(b"IDAT") + 60
    return data[:at] + bytes(range(100)) + data[at + 100:]  # the compressed pixels overwritten


def _jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


# (case, the upload (made when the test runs), its file name, status, words the error must hold)
BAD = [
    ("empty upload", lambda: b"", "x.png", 400, "empty"),
    ("text file renamed .jpg", lambda: b"hello, I am not an image\n" * 10, "photo.jpg", 400, "not an image"),
    ("truncated PNG", lambda: _png(40, 40)[:200], "x.png", 400, "not an image"),
    ("truncated JPEG", lambda: _jpeg(64, 64)[:600], "x.jpg", 400, "not an image"),
    ("corrupt PNG", _corrupt_png, "x.png", 400, "not an image"),
    ("1x1 image", lambda: _png(1, 1), "x.png", 400, "1x1 pixels, smaller than 16"),
    ("too many bytes", lambda: _png(300, 300), "x.png", 413, "bytes"),
    ("more pixels than --max-pixels", lambda: _huge_png(2000, 1000), "x.png", 413,
     "2000x1000 = 2000000 pixels, more than the limit of 1000000"),
    ("20000x20000 PNG", _huge_png, "x.png", 413, "pixels than the limit of 1000000"),
]


@pytest.mark.parametrize("case, make, name, status, words", BAD, ids=[b[0] for b in BAD])
def test_bad_uploads_get_4xx_json_and_the_server_keeps_serving(server, case, make, name, status, words):
    url, _ = server
    got, body = _post(url, make(), name=name)
    assert got == status and words in body["error"] and "send" in body["error"], (case, got, body)
    assert _post(url, _png(32, 32))[0] == 200  # and the next request is served


def test_the_default_limits_refuse_a_20000x20000_png_before_decoding_it():
    small = Image.open(io.BytesIO(_huge_png(70, 2100)))  # the same writer, small enough to decode
    assert small.size == (70, 2100) and not np.asarray(small).any()
    with pytest.raises(BadUpload, match="pixels than the limit of 40000000") as e:
        decode_upload(_huge_png())
    assert e.value.status == 413


def test_a_missing_field_and_the_smallest_image(server):
    url, _ = server
    got, body = _post(url, _png(8, 8), field="image")
    assert got == 422 and "field 'file'" in body["error"]
    got, body = _post(url, _png(16, 16))
    assert got == 200 and body["width"] == 16


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


def _onnx(path, inputs: list[tuple[str, int]], outputs: list[str]) -> None:
    """A small valid ONNX graph (not made by ``zir export``): each output is the first input, cast to float."""
    onnx = pytest.importorskip("onnx", reason="pip install 'zir[export]' to test ONNX files")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", [inputs[0][0]], [o], to=TensorProto.FLOAT) for o in outputs], "other",
        [helper.make_tensor_value_info(n, t, ["B", 3, "H", "W"]) for n, t in inputs],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_zir_serve_refuses_by_name_what_it_cannot_serve(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime", reason="pip install 'zir[export]' to test the onnx backend")
    import uvicorn
    from onnx import TensorProto

    def never(*args, **kwargs):
        raise AssertionError("zir serve started a server for a model it should have refused")

    monkeypatch.setattr(uvicorn, "run", never)
    sidecar = {"task": "detect", "classes": ["circle"], "outputs": {k: [] for k in ("boxes", "scores", "labels", "counts")}}
    _onnx(tmp_path / "segmenter.onnx", [("images", TensorProto.UINT8)], ["semantic"])  # another task
    (tmp_path / "segmenter.onnx.json").write_text(json.dumps(sidecar))
    _onnx(tmp_path / "float_input.onnx", [("input", TensorProto.FLOAT)], ["boxes", "scores", "labels", "counts"])
    (tmp_path / "float_input.onnx.json").write_text(json.dumps(sidecar))  # another model's input
    _onnx(tmp_path / "lone.onnx", [("images", TensorProto.UINT8)], ["semantic"])
    cases = [
        (["missing_run"], "'missing_run' is not a run folder"),
        (["missing_run", "--backend", "onnx"], "missing_run: no such run folder or .onnx file"),
        (["segmenter.onnx", "--backend", "onnx"], "returns ['semantic'], but its sidecar segmenter.onnx.json "
                                                  "describes a detect model"),
        (["float_input.onnx", "--backend", "onnx"], "takes [('input', 'tensor(float)')]"),
        (["lone.onnx", "--backend", "onnx"], "lone.onnx.json: the sidecar of lone.onnx is missing"),
    ]
    monkeypatch.chdir(tmp_path)
    for argv, words in cases:
        assert main(["serve", *argv, "--port", "0"]) == 2, argv
        err = capsys.readouterr().err
        assert words in err and ("zir export" in err or "zir train" in err), (argv, err)
