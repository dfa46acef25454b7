"""``catsdogs serve``: a page to try a trained model and a JSON API, from one process.

The web side is a small `Starlette <https://www.starlette.io>`_ application run by
`uvicorn <https://www.uvicorn.org>`_ (ASGI). Photos are decoded and predicted in a bounded
pool of threads (OpenCV and onnxruntime release the GIL); a request beyond the pool and
``max_queue`` waiting ones is answered 503 with ``Retry-After`` at once, so memory stays
bounded whatever the number of clients. Each request body is read up to ``max_upload`` bytes
and no further (413).

* ``GET /``: the page (``serve_page.html``): pick or drop photos, see each one's class,
  probability and occlusion heat map.
* ``POST /predict``: multipart fields named ``file``, or one ``image/*`` body. Answers the rows
  of ``predict --json``; query parameters ``threshold``, ``top``, ``heatmap`` and ``tta``
  (on by default, as in ``predict``: ``tta=0`` predicts the photo alone).
* ``GET /health``: the model folder, classes, engine, and whether ``tta`` is on unless a
  request says ``tta=0``. ``GET /metrics``: Prometheus text.

Photos are decoded by :func:`data_prep.images.photo_from_bytes` (the code ``prepare`` and
``predict`` use, header checks included) and predicted by :class:`catsdogs.predict.Predictor`:
with a valid ``model.onnx`` neither Keras nor TensorFlow is imported.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.message
import ipaddress
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from catsdogs import __version__
from catsdogs.predict import Prediction, Predictor
from catsdogs.tta import TTA_DEFAULT
from data_prep.images import ImageError, photo_from_bytes

MEGABYTE = 1 << 20
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD = 20 * MEGABYTE
"""Largest request body accepted, in bytes (413 beyond)."""
DEFAULT_MAX_QUEUE = 16
"""Requests allowed to wait for a worker; more get 503 with Retry-After."""
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
MAX_PHOTOS = 64
"""Photos in one request (400 beyond)."""
BODY_TIMEOUT = 30.0
"""Seconds a client may pause while sending its body (408 beyond)."""
DRAIN_LIMIT = 64 * MEGABYTE
"""Bytes of a refused request's body read (and dropped) so that the client sees the answer."""
RETRY_AFTER_SECONDS = 1
QUERY_FIELDS = ("threshold", "top", "heatmap", "tta")
ROUTES = ("/", "/health", "/metrics", "/predict")
PAGE = "serve_page.html"
BODY_READ = "catsdogs.body_read"  # set in the request's scope once its body is all read
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class Limits:
    """How much the server takes on at once."""

    max_upload: int = DEFAULT_MAX_UPLOAD
    max_queue: int = DEFAULT_MAX_QUEUE
    workers: int = DEFAULT_WORKERS
    body_timeout: float = BODY_TIMEOUT

    def check(self) -> None:
        if self.max_upload < 1:
            raise ValueError(f"max upload must be at least 1 byte, got {self.max_upload}")
        if self.max_queue < 0:
            raise ValueError(f"max queue must be 0 or more, got {self.max_queue}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.body_timeout <= 0:
            raise ValueError(f"body timeout must be positive, got {self.body_timeout}")

    @property
    def admitted(self) -> int:
        """Requests taken on at once: those being worked on plus those waiting."""
        return self.workers + self.max_queue


class RequestError(Exception):
    """An answer other than 200: status, one-line message and extra JSON fields."""

    def __init__(self, status: int, message: str, extra: dict | None = None,
                 headers: dict[str, str] | None = None, drain: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.drain = drain  # read what is left of the body before answering
        self.message = message
        self.extra = extra or {}
        self.headers = headers or {}


@dataclass(frozen=True)
class Options:
    """What a client asked for besides the photos (the query parameters)."""

    threshold: float | None = None
    top: int = 0
    heatmap: bool = False
    tta: bool = TTA_DEFAULT


def parse_options(query: Mapping[str, str], classes: list[str]) -> Options:
    """Options from the query parameters, or :class:`RequestError` 400 for a bad one."""
    unknown = sorted(set(query) - set(QUERY_FIELDS))
    if unknown:
        raise RequestError(400, f"unknown query parameter {unknown[0]!r}; "
                                f"known: {', '.join(QUERY_FIELDS)}")
    threshold = None
    if "threshold" in query:
        try:
            threshold = float(query["threshold"])
        except ValueError:
            threshold = float("nan")
        if not 0.0 <= threshold <= 1.0:
            raise RequestError(400, f"threshold must be a number from 0 to 1, "
                                    f"got {query['threshold']!r}")
        if len(classes) != 2:
            raise RequestError(400, f"the model has {len(classes)} classes; threshold needs "
                                    "two (use top)")
    top = 0
    if "top" in query:
        text = query["top"]
        if not text.isdigit() or not 1 <= int(text) <= 1000:
            raise RequestError(400, f"top must be a whole number from 1 to 1000, got {text!r}")
        top = min(int(text), len(classes))
    return Options(threshold, top, switch(query, "heatmap"), switch(query, "tta", TTA_DEFAULT))


def switch(query: Mapping[str, str], name: str, default: bool = False) -> bool:
    """A 0/1 (or false/true) query parameter, ``default`` when absent."""
    value = query.get(name, "1" if default else "0").lower()
    if value not in ("0", "1", "false", "true"):
        raise RequestError(400, f"{name} must be 0 or 1, got {query[name]!r}")
    return value in ("1", "true")


def overlay_png(display: np.ndarray, heat: np.ndarray) -> bytes:
    """The photo with the regions that drove the decision in colour, as ``visualize`` draws
    its third panel: the positive part of the heat map, scaled to its maximum, in the jet
    colour map, with opacity 0.75 times its value."""
    import cv2

    side = display.shape[0]
    big = cv2.resize(heat.astype("float32"), (side, side), interpolation=cv2.INTER_CUBIC)
    positive = np.clip(big / max(float(big.max()), 1e-12), 0.0, 1.0)
    colours = cv2.applyColorMap(np.round(positive * 255).astype(np.uint8), cv2.COLORMAP_JET)
    alpha = (0.75 * positive)[..., None]
    photo = cv2.cvtColor(display, cv2.COLOR_RGB2BGR).astype("float32")
    blended = photo * (1.0 - alpha) + colours.astype("float32") * alpha
    ok, png = cv2.imencode(".png", np.clip(blended + 0.5, 0, 255).astype(np.uint8))
    if not ok:
        raise ValueError("could not encode the heat map as PNG")
    return png.tobytes()


class PhotoService:
    """The model behind the API: uploaded photos in, the rows of ``predict --json`` out.

    Safe to call from several threads at once (onnxruntime sessions and Keras inference are).
    """

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        # Keras models are not documented as safe to call from several threads at once:
        # predictions through Keras take turns (decoding stays parallel).
        self.model_turn: Any = (threading.Lock() if predictor.engine == "keras"
                                else contextlib.nullcontext())

    @property
    def classes(self) -> list[str]:
        return self.predictor.classes

    def health(self) -> dict[str, Any]:
        info = self.predictor.info
        return {"status": "ok", "model": str(info.path.resolve()), "classes": self.classes,
                "engine": self.predictor.engine, "image_size": info.image_size,
                "tta": TTA_DEFAULT, "catsdogs_version": __version__}

    def answer(self, uploads: list[tuple[str, bytes]], options: Options
               ) -> tuple[list[dict], list[str]]:
        """One row per upload, in order, and a message for each photo that could not be read.

        A row is :meth:`Prediction.to_dict` (``path`` is the uploaded name), plus ``heatmap``
        (a PNG data URL) when ``options.heatmap``.
        """
        info = self.predictor.info
        decoded: list[tuple[str, bytes, np.ndarray | None, ImageError | None]] = []
        for name, data in uploads:
            try:
                pixels = photo_from_bytes(data, info.image_size, info.resize_policy,
                                          info.channels)[0]
                decoded.append((name, data, pixels, None))
            except ImageError as error:
                decoded.append((name, data, None, error))
        good = [(name, pixels) for name, _, pixels, _ in decoded if pixels is not None]
        answers: Iterator[Prediction] = iter(())
        if good:
            with self.model_turn:
                answers = iter(self.predictor.predict_images(
                    np.stack([pixels for _, pixels in good]), [name for name, _ in good],
                    options.threshold, options.top, options.tta))
        rows, problems = [], []
        for name, data, pixels, error in decoded:
            if error is not None:
                rows.append(Prediction(name, error=error.reason).to_dict())
                problems.append(f"{name}: {error}")
                continue
            prediction = next(answers)
            row = prediction.to_dict()
            if options.heatmap:
                row["heatmap"] = self.heatmap(data, pixels, self.classes.index(prediction.label))
            rows.append(row)
        return rows, problems

    def heatmap(self, data: bytes, pixels: np.ndarray, target: int) -> str:
        """The occlusion heat map of ``visualize`` over the photo, as a PNG data URL."""
        from catsdogs.visualize import DISPLAY_SIZE, occlusion_map

        info = self.predictor.info
        display = photo_from_bytes(data, max(DISPLAY_SIZE, info.image_size),
                                   info.resize_policy)[0]
        with self.model_turn:
            heat, _, _ = occlusion_map(self.predictor.probabilities, pixels, target)
        png = overlay_png(display, heat)
        return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


class Metrics:
    """Request counts and latencies, in a registry of their own (Prometheus text format)."""

    def __init__(self) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            disable_created_metrics,
        )

        disable_created_metrics()  # no "_created" twin of every series: half the text
        self.registry = CollectorRegistry()
        self.requests = Counter("catsdogs_http_requests", "HTTP requests answered.",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("catsdogs_http_request_duration_seconds",
                                 "Time from request to the end of the answer.", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.photos = Counter("catsdogs_photos", "Photos answered, by outcome.", ["outcome"],
                              registry=self.registry)
        self.in_flight = Gauge("catsdogs_predict_in_flight",
                               "POST /predict requests being read, waiting or predicted.",
                               registry=self.registry)

    def text(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def middleware(self, app: Callable) -> Callable:
        """An ASGI wrapper of ``app`` that counts and times every HTTP request."""

        async def measured(scope: dict, receive: Callable, send: Callable) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            start = time.perf_counter()
            status = 500

            async def sending(message: dict) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, sending)
            finally:
                route = scope["path"] if scope["path"] in ROUTES else "other"
                self.requests.labels(route, str(status)).inc()
                self.latency.labels(route).observe(time.perf_counter() - start)

        return measured


async def read_body(request: Any, limit: int, timeout: float) -> bytes:
    """The request body, at most ``limit`` bytes (413 beyond), with at most ``timeout``
    seconds between two pieces of it (408 beyond)."""
    body = bytearray()
    while True:
        try:
            message = await asyncio.wait_for(request.receive(), timeout)
        except asyncio.TimeoutError:
            raise RequestError(408, f"no data for {timeout:g} s while reading the "
                                    "upload", drain=False) from None
        if message["type"] == "http.disconnect":
            raise RequestError(400, "the client went away during the upload", drain=False)
        body += message.get("body", b"")
        finished = not message.get("more_body", False)
        if finished:
            # also before a 413: there is nothing left to drain (the client waits for none)
            request.scope[BODY_READ] = True
        if len(body) > limit:
            raise RequestError(413, too_large_message(limit))
        if finished:
            return bytes(body)


async def drain(request: Any, timeout: float) -> None:
    """Read and drop what is left of a refused request's body (up to :data:`DRAIN_LIMIT`),
    so that the client, still sending, receives the answer rather than a reset connection."""
    if request.scope.get(BODY_READ):
        return
    dropped = 0
    with contextlib.suppress(Exception):
        while dropped <= DRAIN_LIMIT:
            message = await asyncio.wait_for(request.receive(), timeout)
            dropped += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body", False):
                return


def too_large_message(limit: int) -> str:
    size = f"{limit / MEGABYTE:g} MB" if limit >= MEGABYTE else f"{limit} bytes"
    return f"upload larger than {size} (--max-upload)"


def upload_name(content_disposition: str | None) -> str:
    """The file name a raw upload gives in its Content-Disposition header, or ``upload``."""
    if not content_disposition:
        return "upload"
    header = email.message.Message()
    header["content-disposition"] = content_disposition
    return header.get_filename() or "upload"


async def read_uploads(request: Any, limits: Limits) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of each photo sent: multipart fields named ``file``, or one raw
    ``image/*`` body."""
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException
    from starlette.requests import Request

    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind.startswith("image/"):
        body = await read_body(request, limits.max_upload, limits.body_timeout)
        return [(upload_name(request.headers.get("content-disposition")), body)]
    if kind != "multipart/form-data":
        raise RequestError(415, "send photos as multipart/form-data fields named 'file' or "
                                f"as one image/* body, not {kind or 'a body without type'}")
    body = await read_body(request, limits.max_upload, limits.body_timeout)
    replayed = False

    async def replay() -> dict:
        nonlocal replayed
        if replayed:
            return {"type": "http.disconnect"}
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=MAX_PHOTOS,
                                                         max_fields=MAX_PHOTOS)
    except (HTTPException, MultiPartException) as error:
        message = getattr(error, "detail", None) or getattr(error, "message", str(error))
        raise RequestError(400, f"bad multipart body: {message}") from None
    try:
        fields = form.getlist("file")
        if any(not isinstance(field, UploadFile) for field in fields):
            raise RequestError(400, "form field 'file' must be a file, not text")
        if not fields:
            raise RequestError(400, "no photo: send one or more form fields named 'file'")
        return [(field.filename or "upload", await field.read()) for field in fields]
    finally:
        await form.close()


def page_html() -> str:
    return (resources.files("catsdogs") / PAGE).read_text(encoding="utf-8")


class Api:
    """The HTTP side: routes, admission (503 beyond the pool and the queue) and errors."""

    def __init__(self, service: PhotoService, limits: Limits, pool: ThreadPoolExecutor
                 ) -> None:
        self.service = service
        self.limits = limits
        self.pool = pool
        self.metrics = Metrics()
        self.active = 0  # only touched on the event loop's thread
        self.page = page_html()

    def app(self) -> Callable:
        from starlette.applications import Starlette
        from starlette.routing import Route

        routes = [Route("/", self.index, methods=["GET"]),
                  Route("/health", self.health, methods=["GET"]),
                  Route("/metrics", self.prometheus, methods=["GET"]),
                  Route("/predict", self.predict, methods=["POST"])]
        return self.metrics.middleware(Starlette(routes=routes))

    async def index(self, request: Any) -> Any:
        from starlette.responses import HTMLResponse

        return HTMLResponse(self.page)

    async def health(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse(self.service.health())

    async def prometheus(self, request: Any) -> Any:
        from starlette.responses import Response

        body, media_type = self.metrics.text()
        return Response(body, media_type=media_type)

    async def predict(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        try:
            status, content = await self.admit_and_answer(request)
        except RequestError as error:
            if error.drain:
                await drain(request, self.limits.body_timeout)
            return JSONResponse({"error": error.message, **error.extra}, error.status,
                                headers=error.headers)
        except Exception as error:  # a bug or a broken model: one line in the log, JSON out
            message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            logging.getLogger("uvicorn.error").error("POST /predict failed: %s", message)
            return JSONResponse({"error": f"internal error: {message}"}, 500)
        return JSONResponse(content, status)

    async def admit_and_answer(self, request: Any) -> tuple[int, Any]:
        options = parse_options(request.query_params, self.service.classes)
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.limits.max_upload:
            raise RequestError(413, too_large_message(self.limits.max_upload))
        if self.active >= self.limits.admitted:
            raise RequestError(
                503, f"busy: {self.active} requests in progress or waiting (workers "
                     f"{self.limits.workers} + max queue {self.limits.max_queue}); retry",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        self.active += 1
        self.metrics.in_flight.inc()
        try:
            uploads = await read_uploads(request, self.limits)
            if len(uploads) > MAX_PHOTOS:
                raise RequestError(400, f"at most {MAX_PHOTOS} photos a request")
            loop = asyncio.get_running_loop()
            rows, problems = await loop.run_in_executor(
                self.pool, self.service.answer, uploads, options)
        finally:
            self.active -= 1
            self.metrics.in_flight.dec()
        self.metrics.photos.labels("predicted").inc(len(rows) - len(problems))
        if problems:
            self.metrics.photos.labels("error").inc(len(problems))
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            return 422, {"error": problems[0] + more, "predictions": rows}
        return 200, rows


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address as bound) is reachable from this machine only."""
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (port 0: a free one).

    Made with the protocol number ``IPPROTO_TCP`` (not 0): asyncio turns Nagle's algorithm off
    (TCP_NODELAY) only on such sockets, and with it on, every answer's body would wait for
    the client's delayed ACK of its headers (40 ms on Linux).
    """
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP,
            flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as error:
        raise ValueError(f"cannot listen on {host}: {error.strerror}") from None
    sock = socket.socket(family, kind, protocol)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(512)
    except OSError as error:
        sock.close()
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise ValueError(f"cannot listen on {host}:{port}: {reason}") from None
    return sock


def graceful_server(config: Any) -> Any:
    """A uvicorn server whose SIGINT and SIGTERM stop it after the requests in progress,
    then return normally (uvicorn itself raises the signal again once stopped, which would
    end the process with the signal's status rather than 0). A second signal stops it at
    once."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            signals = (signal.SIGINT, signal.SIGTERM)
            previous = {number: signal.signal(number, self.handle_exit) for number in signals}
            try:
                yield
            finally:
                for number, handler in previous.items():
                    signal.signal(number, handler)

    return GracefulServer(config)


@dataclass
class RunningServer:
    """A server bound to its address, ready to :meth:`run`."""

    url: str
    address: str
    port: int
    engine: str
    note: str | None
    classes: list[str]
    sock: socket.socket
    server: Any
    pool: ThreadPoolExecutor

    @property
    def open_to_network(self) -> bool:
        return not is_loopback(self.address)

    def run(self) -> bool:
        """Serve until SIGINT or SIGTERM. True when every request in progress was answered
        (False after a second signal stopped it at once)."""
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.pool.shutdown(wait=not self.server.force_exit, cancel_futures=True)
            self.sock.close()
        return not self.server.force_exit


def open_server(
    model_dir: str | os.PathLike[str],
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    engine: str = "auto",
    limits: Limits | None = None,
) -> RunningServer:
    """Load the model, bind ``host``:``port`` and build the server; :meth:`RunningServer.run`
    serves."""
    import uvicorn

    limits = limits or Limits()
    limits.check()
    predictor = Predictor(Path(model_dir), engine=engine)
    sock = listen(host, port)
    address, bound_port = sock.getsockname()[:2]
    pool = ThreadPoolExecutor(limits.workers, thread_name_prefix="catsdogs-serve")
    api = Api(PhotoService(predictor), limits, pool)
    config = uvicorn.Config(
        api.app(), log_level="warning", access_log=False, lifespan="off",
        server_header=False, timeout_keep_alive=5,
        # Connections beyond this get uvicorn's own 503, a last bound on open sockets.
        limit_concurrency=max(256, 4 * limits.admitted))
    shown = f"[{host}]" if ":" in host else host
    return RunningServer(
        url=f"http://{shown}:{bound_port}/", address=address, port=bound_port,
        engine=predictor.engine, note=predictor.note, classes=predictor.classes, sock=sock,
        server=graceful_server(config), pool=pool)
