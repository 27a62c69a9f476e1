"""``zir serve RUN``: a trained model behind HTTP (FastAPI + uvicorn), loaded once.

* ``POST /predict``: a multipart upload in the field ``file`` -> the prediction as JSON, in the image's
  pixels (the type ``zir predict`` writes: ``to_dict`` of the task's prediction; class maps and instance
  masks as PNG, base64, ``semantic_png`` / ``instances_png``).
* ``GET /health``: ``{"status": "ok", ...}``; ``GET /``: a page to pick an image and see the predictions
  drawn on it; ``GET /openapi.json`` and ``/docs``: FastAPI's schema and its page.

Bad input never costs a 500: an empty, oversized, undecodable or tiny (under ``min_side`` pixels a side) upload (the content is decoded, the name
and content type are not trusted), or one with more than ``max_pixels`` pixels (read from the header
before decoding, so decompression bombs are refused unread), gets a 4xx with ``{"error": "..."}``.
Inference runs in a worker thread, off the event loop, so a slow image blocks neither ``/health`` nor
the uploads of other clients.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations (UploadFile, imported
# inside create_app) at run time, and postponed ones would name types it cannot resolve
import base64
import io
from typing import Any

import numpy as np
import torch
from PIL import Image

from zir.data.contract import DetectionPrediction, SemanticPrediction

MAX_BYTES = 20 * 2**20
MAX_PIXELS = 40_000_000
MIN_SIDE = 16  # as `zir data synth`: a smaller image holds nothing a model sees once it is resized up


class BadUpload(Exception):
    """An upload the server refuses: ``status`` (4xx) and a message that says what to send instead."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def decode_upload(data: bytes, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
                  min_side: int = MIN_SIDE) -> torch.Tensor:
    """The bytes of an uploaded image -> uint8 ``(3, H, W)`` RGB, or :class:`BadUpload`."""
    if not data:
        raise BadUpload(400, "the upload is empty; send an image file in the multipart field 'file'")
    if len(data) > max_bytes:
        raise BadUpload(413, f"the upload has {len(data)} bytes, more than the limit of {max_bytes}; send a smaller image")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size  # from the header: nothing decoded yet
            if w * h > max_pixels:
                raise BadUpload(413, f"the image has {w}x{h} = {w * h} pixels, more than the limit of {max_pixels}; "
                                     "send a smaller image")
            if min(w, h) < min_side:
                raise BadUpload(400, f"the image is {w}x{h} pixels, smaller than {min_side} pixels a side; "
                                     "send a larger image")
            arr = np.asarray(im.convert("RGB"))
    except BadUpload:
        raise
    except Image.DecompressionBombError as e:  # PIL's own bound (2 * Image.MAX_IMAGE_PIXELS), met on opening
        raise BadUpload(413, f"the image has more pixels than the limit of {max_pixels} ({e}); send a smaller "
                             "image") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise BadUpload(400, f"the upload is not an image zir can decode ({type(e).__name__}: {e}); send a "
                             "PNG, JPEG, BMP or WebP file") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def _png64(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def to_json(pred: Any, classes: list[str], size: tuple[int, int]) -> dict[str, Any]:
    """A prediction as the JSON ``/predict`` answers: ``to_dict`` plus the image size and, where there
    are any, class maps and masks as base64 PNG (8-bit where the ids fit, else 16-bit)."""
    out = {"height": size[0], "width": size[1], **pred.to_dict(classes)}
    if isinstance(pred, SemanticPrediction):
        m = pred.semantic.cpu().numpy()
        out["semantic_png"] = _png64(m.astype(np.uint8 if m.max(initial=0) < 256 else np.uint16))
    elif isinstance(pred, DetectionPrediction) and pred.masks is not None:
        ids = np.zeros(pred.masks.shape[-2:], np.int64)
        for i, m in reversed(list(enumerate(pred.masks.cpu().numpy()))):  # best on top
            ids[m] = i + 1
        out["instances_png"] = _png64(ids.astype(np.uint8 if len(pred.masks) < 256 else np.uint16))
    return out


def create_app(predictor: Any, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
               min_side: int = MIN_SIDE) -> Any:
    """The FastAPI app serving ``predictor`` (a :class:`~zir.engine.predictor.Predictor` or
    :class:`~zir.export.runtime.OnnxPredictor`)."""
    from fastapi import FastAPI, File, Request, UploadFile
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse

    app = FastAPI(title="zir", description=f"{predictor.task} model; classes: {', '.join(predictor.classes)}")

    @app.exception_handler(BadUpload)
    async def _bad(request: Request, e: BadUpload) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "send the image as multipart/form-data in the field 'file' "
                                      f"({e.errors()[0].get('msg', 'invalid request') if e.errors() else ''})"},
                            status_code=422)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "task": predictor.task, "classes": predictor.classes}

    @app.post("/predict")
    async def predict(file: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008 (FastAPI's idiom)
        data = await file.read(max_bytes + 1)
        image = await run_in_threadpool(decode_upload, data, max_bytes, max_pixels, min_side)
        pred = (await run_in_threadpool(predictor.predict, image))[0]
        return to_json(pred, predictor.classes, tuple(image.shape[-2:]))

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE

    return app


def serve(run: str, host: str = "127.0.0.1", port: int = 8000, backend: str = "torch",
          max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> None:
    """Load ``run`` once and serve it until interrupted."""
    import uvicorn

    if backend == "onnx":
        from zir.export.runtime import OnnxPredictor

        predictor: Any = OnnxPredictor(run)
    else:
        from zir.engine.predictor import load

        predictor = load(run)
    uvicorn.run(create_app(predictor, max_bytes, max_pixels), host=host, port=port, log_level="info")


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>zir</title>
<style>body{font-family:sans-serif;margin:2em}canvas{max-width:100%;border:1px solid #ccc}#out{white-space:pre}</style>
</head><body>
<h1>zir</h1>
<p>Pick an image: the model's predictions are drawn on it.</p>
<input type="file" id="file" accept="image/*">
<p id="status"></p>
<canvas id="canvas"></canvas>
<div id="out"></div>
<script>
const file = document.getElementById("file"), canvas = document.getElementById("canvas");
const status = document.getElementById("status"), out = document.getElementById("out");
const colours = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"];
file.addEventListener("change", async () => {
  const f = file.files[0]; if (!f) return;
  status.textContent = "predicting...";
  const body = new FormData(); body.append("file", f);
  const r = await fetch("/predict", {method: "POST", body});
  const p = await r.json();
  if (!r.ok) { status.textContent = "error: " + p.error; return; }
  const img = new Image(); img.src = URL.createObjectURL(f); await img.decode();
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const ctx = canvas.getContext("2d"); ctx.drawImage(img, 0, 0);
  ctx.lineWidth = Math.max(2, canvas.width / 300); ctx.font = Math.max(12, canvas.width / 40) + "px sans-serif";
  const lines = [];
  if (p.boxes) {
    p.boxes.forEach((b, i) => {
      const c = colours[p.labels[i] % colours.length], text = p.classes[i] + " " + p.scores[i].toFixed(2);
      ctx.strokeStyle = c; ctx.strokeRect(b[0], b[1], b[2] - b[0], b[3] - b[1]);
      ctx.fillStyle = c; ctx.fillText(text, b[0] + 2, Math.max(12, b[1] - 3)); lines.push(text);
    });
  }
  if (p.semantic_png) {
    const m = new Image(); m.src = "data:image/png;base64," + p.semantic_png; await m.decode();
    const tmp = document.createElement("canvas"); tmp.width = m.width; tmp.height = m.height;
    const t = tmp.getContext("2d"); t.drawImage(m, 0, 0);
    const ids = t.getImageData(0, 0, m.width, m.height), over = ctx.getImageData(0, 0, m.width, m.height);
    for (let k = 0; k < ids.data.length; k += 4) {
      const id = ids.data[k]; if (!id) continue;
      const hex = colours[id % colours.length];
      for (let j = 0; j < 3; j++) over.data[k + j] = (over.data[k + j] + parseInt(hex.substr(1 + 2 * j, 2), 16)) / 2;
    }
    ctx.putImageData(over, 0, 0);
    for (const [name, n] of Object.entries(p.pixels_per_class)) lines.push(name + ": " + n + " px");
  }
  if (p.top5) p.top5.forEach(t => lines.push(t.class + " " + t.score.toFixed(3)));
  out.textContent = lines.join("\\n");
  status.textContent = "done: " + (p.boxes ? p.boxes.length + " objects" : p.class || "segmented");
  document.body.dataset.done = "1";
});
</script></body></html>
"""
