"""catsdogs serve: a real server in a subprocess on a free loopback port, a real HTTP client."""

from __future__ import annotations

import base64
import json
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from catsdogs.cli import cli
from catsdogs.predict import Predictor
from catsdogs.serve import BODY_TIMEOUT
from tests.helpers import ROOT, make_photo

START_TIMEOUT = 90  # seconds; the test machine may be busy
BOUNDARY = "catsdogs-test-boundary"


class ServerProcess:
    """``catsdogs serve`` running in a subprocess, and where it listens."""

    def __init__(self, process: subprocess.Popen, url: str, lines: queue.Queue) -> None:
        self.process = process
        self.url = url
        self.lines = lines
        host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
        self.address = (host, int(port))

    def rest_of_output(self) -> str:
        self.process.wait(timeout=START_TIMEOUT)
        text = []
        while not self.lines.empty():
            text.append(self.lines.get())
        return "".join(text)


def reader(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)


@contextmanager
def serving(model: Path, *options: str) -> Iterator[ServerProcess]:
    """Start ``catsdogs serve --port 0`` (a free port, which it prints) and stop it after."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    process = subprocess.Popen(
        [sys.executable, "-m", "catsdogs", "serve", "--model", str(model), "--port", "0",
         *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    reading = threading.Thread(target=reader, args=(process.stdout, lines), daemon=True)
    reading.start()
    try:
        try:
            first = lines.get(timeout=START_TIMEOUT)
        except queue.Empty:
            raise AssertionError("the server printed nothing") from None
        assert first.startswith("Serving "), first + process.stderr.read()
        yield ServerProcess(process, first.split(" at ")[1].split()[0], lines)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=START_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stderr.close()
        reading.join(timeout=START_TIMEOUT)  # at the end of the output once the server is gone
        if not reading.is_alive():
            process.stdout.close()


def photo_bytes(kind: str, seed: int, extension: str = ".jpg") -> bytes:
    ok, data = cv2.imencode(extension, make_photo(kind, np.random.default_rng(seed)))
    assert ok
    return data.tobytes()


def multipart(files: list[tuple[str, bytes]], text_field: bool = False) -> tuple[bytes, str]:
    parts = []
    for name, data in files:
        disposition = 'form-data; name="file"' + ("" if text_field else f'; filename="{name}"')
        parts.append(f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()
    return body, f"multipart/form-data; boundary={BOUNDARY}"


def request(url: str, body=None, content_type: str | None = None,
            headers: dict | None = None, timeout: float = START_TIMEOUT
            ) -> tuple[int, dict, object]:
    """(status, headers, JSON or text) for one request; 4xx/5xx answers are returned too."""
    headers = dict(headers or {})
    if content_type:
        headers["Content-Type"] = content_type
    method = "POST" if body is not None else "GET"
    call = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(call, timeout=timeout) as answer:
            status, answer_headers, raw = answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        status, answer_headers, raw = error.code, dict(error.headers), error.read()
    if answer_headers.get("content-type", "").startswith("application/json"):
        return status, answer_headers, json.loads(raw)
    return status, answer_headers, raw.decode()


def post_photos(server: ServerProcess, files: list[tuple[str, bytes]], query: str = ""
                ) -> tuple[int, dict, object]:
    body, content_type = multipart(files)
    return request(server.url + "predict" + query, body, content_type)


def in_flight(server: ServerProcess) -> float:
    text = request(server.url + "metrics")[2]
    line = next(line for line in text.splitlines()
                if line.startswith("catsdogs_predict_in_flight "))
    return float(line.split()[1])


def wait_for(condition, what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


class PartialUpload:
    """A POST /predict whose body is sent in two parts, to hold a request open at will."""

    def __init__(self, server: ServerProcess, data: bytes) -> None:
        body, content_type = multipart([("slow.jpg", data)])
        self.sock = socket.create_connection(server.address, timeout=START_TIMEOUT)
        head = (f"POST /predict HTTP/1.1\r\nHost: {server.address[0]}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n")
        self.sock.sendall(head.encode() + body[:20])
        self.rest = body[20:]

    def finish(self) -> tuple[int, object]:
        self.sock.sendall(self.rest)
        answer = b""
        while chunk := self.sock.recv(65536):
            answer += chunk
        self.sock.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)


@pytest.fixture(scope="module")
def server(trained_model: Path) -> Iterator[ServerProcess]:
    with serving(trained_model, "--max-upload", "1") as running:
        yield running


def test_health_names_the_model_its_classes_and_engine(server, trained_model):
    status, _, health = request(server.url + "health")
    assert status == 200
    assert health["model"] == str(trained_model.resolve())
    assert health["classes"] == ["cats", "dogs"]
    assert health["engine"] == "onnx"
    assert health["tta"] is True  # what a request without tta= gets


def test_one_photo_answers_what_predict_json_says(server, trained_model, tmp_path):
    data = photo_bytes("cat", 21)
    (tmp_path / "kitty.jpg").write_bytes(data)
    expected = next(Predictor(trained_model).predict_paths([tmp_path / "kitty.jpg"])).to_dict()
    status, _, rows = post_photos(server, [("kitty.jpg", data)])
    assert status == 200
    assert rows == [{**expected, "path": "kitty.jpg"}]
    assert rows[0]["label"] == "cats"


def test_several_photos_in_order_with_top_and_threshold(server):
    files = [("a.jpg", photo_bytes("dog", 1)), ("b.png", photo_bytes("cat", 2, ".png")),
             ("c.jpg", photo_bytes("dog", 3))]
    status, _, rows = post_photos(server, files, "?top=5")
    assert status == 200
    assert [row["path"] for row in rows] == ["a.jpg", "b.png", "c.jpg"]
    assert [row["label"] for row in rows] == ["dogs", "cats", "dogs"]
    assert [len(row["top"]) for row in rows] == [2, 2, 2]
    status, _, rows = post_photos(server, files, "?threshold=1")
    assert status == 200 and [row["label"] for row in rows] == ["cats"] * 3


def test_raw_image_body_takes_its_name_from_content_disposition(server):
    status, _, rows = request(server.url + "predict", photo_bytes("dog", 4), "image/jpeg",
                              {"Content-Disposition": 'inline; filename="rex.jpg"'})
    assert status == 200 and rows[0]["path"] == "rex.jpg" and rows[0]["label"] == "dogs"
    status, _, rows = request(server.url + "predict", photo_bytes("dog", 4), "image/jpeg")
    assert status == 200 and rows[0]["path"] == "upload"


def test_heatmap_is_a_png_of_the_photo_at_display_size(server):
    status, _, rows = post_photos(server, [("cat.jpg", photo_bytes("cat", 5))], "?heatmap=1")
    assert status == 200
    prefix = "data:image/png;base64,"
    assert rows[0]["heatmap"].startswith(prefix)
    picture = cv2.imdecode(np.frombuffer(base64.b64decode(rows[0]["heatmap"][len(prefix):]),
                                         np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape == (256, 256, 3)


def png_bomb() -> bytes:
    """A valid small PNG whose header declares 40,000 × 40,000 pixels."""
    data = bytearray(photo_bytes("cat", 6, ".png"))
    struct.pack_into(">II", data, 16, 40_000, 40_000)
    return bytes(data)


@pytest.mark.parametrize(("name", "data", "reason"), [
    ("notes.txt", b"just some text, not a photo\n", "not an image"),
    ("cut.jpg", photo_bytes("cat", 7)[:-300], "truncated JPEG"),
    ("bomb.png", png_bomb(), "too large"),
    ("empty.jpg", b"", "empty file"),
])
def test_bad_photo_gets_422_with_the_reason_and_server_keeps_serving(server, name, data,
                                                                     reason):
    status, _, answer = post_photos(server, [(name, data)])
    assert status == 422
    assert answer["error"].startswith(f"{name}: {reason}")
    assert answer["predictions"] == [{"path": name, "error": reason}]
    status, _, rows = post_photos(server, [("ok.jpg", photo_bytes("dog", 8))])
    assert status == 200 and rows[0]["label"] == "dogs"


def test_a_bad_photo_among_good_ones_is_reported_in_place(server):
    files = [("good.jpg", photo_bytes("cat", 9)), ("bad.jpg", b"\xff\xd8\xff nope"),
             ("also.jpg", photo_bytes("dog", 10))]
    status, _, answer = post_photos(server, files)
    assert status == 422
    assert answer["error"] == "bad.jpg: undecodable image: jpeg: no frame header"
    rows = answer["predictions"]
    assert [row.get("label") for row in rows] == ["cats", None, "dogs"]
    assert rows[1] == {"path": "bad.jpg", "error": "undecodable image"}


def test_upload_over_max_upload_gets_413_with_or_without_length(server):
    big = os.urandom(1_100_000)  # --max-upload 1 (MB)
    status, _, answer = request(server.url + "predict", big, "image/jpeg")
    assert status == 413
    assert answer == {"error": "upload larger than 1 MB (--max-upload)"}
    chunks = (big[i:i + 65536] for i in range(0, len(big), 65536))  # chunked: no length
    # The piece that crosses the limit is the last one: the answer must not wait for more
    # (it once waited the whole body timeout, 30 s, for a body that had ended).
    status, _, answer = request(server.url + "predict", chunks, "image/jpeg",
                                timeout=BODY_TIMEOUT / 2)
    assert status == 413 and answer["error"] == "upload larger than 1 MB (--max-upload)"
    assert request(server.url + "health")[0] == 200


@pytest.mark.parametrize(("query", "message"), [
    ("?threshold=2", "threshold must be a number from 0 to 1, got '2'"),
    ("?threshold=abc", "threshold must be a number from 0 to 1, got 'abc'"),
    ("?top=0", "top must be a whole number from 1 to 1000, got '0'"),
    ("?top=-1", "top must be a whole number from 1 to 1000, got '-1'"),
    ("?heatmap=maybe", "heatmap must be 0 or 1, got 'maybe'"),
    ("?tops=2", "unknown query parameter 'tops'; known: threshold, top, heatmap, tta"),
])
def test_bad_query_parameters_get_400(server, query, message):
    status, _, answer = post_photos(server, [("cat.jpg", photo_bytes("cat", 11))], query)
    assert (status, answer) == (400, {"error": message})


def test_requests_without_a_photo_get_400_or_415(server):
    status, _, answer = request(server.url + "predict", b"name=cat",
                                "application/x-www-form-urlencoded")
    assert status == 415 and answer["error"].startswith("send photos as multipart/form-data")
    body, content_type = multipart([("x", b"some text")], text_field=True)
    status, _, answer = request(server.url + "predict", body, content_type)
    assert (status, answer) == (400, {"error": "form field 'file' must be a file, not text"})
    body, content_type = multipart([])
    status, _, answer = request(server.url + "predict", body, content_type)
    assert (status, answer) == (400, {"error": "no photo: send one or more form fields "
                                               "named 'file'"})
    status, _, _ = request(server.url + "predict")  # GET
    assert status == 405
    body, content_type = multipart([(f"{n}.jpg", b"x") for n in range(65)])
    status, _, answer = request(server.url + "predict", body, content_type)
    assert status == 400
    assert answer["error"].startswith("bad multipart body: Too many files")


def test_200_requests_from_8_clients_are_all_answered(server):
    photos = {"cats": photo_bytes("cat", 12), "dogs": photo_bytes("dog", 13)}

    def ask(number: int) -> tuple[int, str, str]:
        kind = "cats" if number % 2 else "dogs"
        status, _, rows = post_photos(server, [(f"{number}.jpg", photos[kind])])
        return status, kind, rows[0]["label"] if status == 200 else rows

    with ThreadPoolExecutor(8) as clients:
        answers = list(clients.map(ask, range(200)))
    assert [status for status, _, _ in answers] == [200] * 200
    assert all(kind == label for _, kind, label in answers)
    metrics = request(server.url + "metrics")[2]
    line = next(line for line in metrics.splitlines()
                if line.startswith('catsdogs_http_requests_total{route="/predict",status="200"}'))
    assert float(line.split()[1]) >= 200
    assert "catsdogs_http_request_duration_seconds_bucket" in metrics


def test_beyond_max_queue_a_client_gets_503_with_retry_after(trained_model):
    with serving(trained_model, "--workers", "1", "--max-queue", "0") as busy:
        held = PartialUpload(busy, photo_bytes("cat", 14))  # takes the only place
        wait_for(lambda: in_flight(busy) == 1, "the held request to be admitted")
        status, headers, answer = post_photos(busy, [("late.jpg", photo_bytes("dog", 15))])
        assert status == 503
        assert headers["retry-after"] == "1"
        assert answer["error"].startswith("busy: 1 requests in progress or waiting")
        status, rows = held.finish()
        assert status == 200 and rows[0]["path"] == "slow.jpg"
        wait_for(lambda: in_flight(busy) == 0, "the held request to end")
        assert post_photos(busy, [("late.jpg", photo_bytes("dog", 15))])[0] == 200


def refuses_connections(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_finishes_the_request_in_progress_then_exits_0(trained_model, stop):
    with serving(trained_model) as running:
        held = PartialUpload(running, photo_bytes("dog", 16))
        wait_for(lambda: in_flight(running) == 1, "the held request to be admitted")
        running.process.send_signal(stop)
        wait_for(lambda: refuses_connections(running.address), "the server to stop listening")
        status, rows = held.finish()
        assert status == 200 and rows[0]["label"] == "dogs"
        assert running.process.wait(timeout=START_TIMEOUT) == 0
        assert running.rest_of_output() == "Stopped.\n"


def test_onnx_path_never_imports_keras_or_tensorflow(trained_model, tmp_path):
    script = """
import json, sys, threading, urllib.request
from catsdogs.serve import open_server
server = open_server(sys.argv[1], port=0)
thread = threading.Thread(target=server.run)
thread.start()
try:
    with open(sys.argv[2], "rb") as photo:
        call = urllib.request.Request(server.url + "predict?heatmap=1", photo.read(),
                                      {"Content-Type": "image/jpeg"})
    rows = json.load(urllib.request.urlopen(call, timeout=60))
finally:
    server.server.should_exit = True
    thread.join()
print(json.dumps({"label": rows[0]["label"], "engine": server.engine,
                  "loaded": sorted(m for m in ("keras", "tensorflow") if m in sys.modules)}))
"""
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(photo_bytes("cat", 17))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script, str(trained_model), str(photo)],
                            env=env, capture_output=True, text=True, timeout=START_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"label": "cats", "engine": "onnx", "loaded": []}


def test_the_page_is_plain_html_with_no_outside_resources(server):
    status, headers, page = request(server.url)
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert '<input id="photos" type="file" accept="image/*" multiple>' in page
    assert "http://" not in page and "https://" not in page and "//cdn" not in page


def test_busy_port_is_a_one_line_error(runner, trained_model):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(cli, ["serve", "--model", str(trained_model), "--port",
                                     str(port)])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert result.output == (f"Error: cannot listen on 127.0.0.1:{port}: "
                             "Address already in use\n")


class FakeServer:
    url = "http://0.0.0.0:8000/"
    engine = "onnx"
    note = None
    classes = ["cats", "dogs"]
    open_to_network = True

    def run(self) -> bool:
        return True


def test_listening_beyond_loopback_prints_a_warning(runner, monkeypatch, trained_model):
    import catsdogs.serve

    seen = {}

    def fake_open_server(model_dir, host, port, *, engine, limits):
        seen.update(host=host, port=port, limits=limits)
        return FakeServer()

    monkeypatch.setattr(catsdogs.serve, "open_server", fake_open_server)
    result = runner.invoke(cli, ["serve", "--model", str(trained_model), "--host", "0.0.0.0",
                                 "--max-upload", "2", "--max-queue", "3", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert result.stderr == "warning: listening on 0.0.0.0: the model is open to the network\n"
    assert result.stdout.splitlines() == [
        f"Serving {trained_model} (onnx; cats, dogs) at http://0.0.0.0:8000/ - press Ctrl-C "
        "to stop", "Stopped."]
    limits = seen["limits"]
    assert (seen["host"], seen["port"]) == ("0.0.0.0", 8000)
    assert (limits.max_upload, limits.max_queue, limits.workers) == (2 << 20, 3, 2)


def test_loopback_addresses():
    from catsdogs.serve import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.0.0.1")


def test_listening_socket_is_tcp_so_answers_are_not_delayed_by_nagle():
    from catsdogs.serve import listen

    with listen("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP  # asyncio sets TCP_NODELAY only then
        with socket.create_connection(sock.getsockname()[:2]):
            accepted, _ = sock.accept()
            with accepted:
                assert accepted.proto == socket.IPPROTO_TCP


def test_keras_engine_serves_the_same_answers(trained_model, tmp_path):
    data = photo_bytes("dog", 18)
    (tmp_path / "rex.jpg").write_bytes(data)
    expected = next(Predictor(trained_model).predict_paths([tmp_path / "rex.jpg"]))
    with serving(trained_model, "--engine", "keras", "--workers", "2") as keras_server:
        assert request(keras_server.url + "health")[2]["engine"] == "keras"
        with ThreadPoolExecutor(4) as clients:
            answers = list(clients.map(
                lambda _: post_photos(keras_server, [("rex.jpg", data)], "?heatmap=1"),
                range(4)))
    for status, _, rows in answers:
        assert status == 200 and rows[0]["label"] == "dogs"
        assert rows[0]["probabilities"] == pytest.approx(expected.probabilities, abs=1e-4)
        assert rows[0]["heatmap"].startswith("data:image/png;base64,")


def test_an_unexpected_failure_is_a_json_500_and_the_server_goes_on(trained_model,
                                                                    monkeypatch):
    from catsdogs.serve import open_server

    def broken(self, images):
        raise RuntimeError("the model broke\nsecond line")

    running = open_server(trained_model, port=0)
    thread = threading.Thread(target=running.run)
    thread.start()
    try:
        wait_for(lambda: running.server.started, "the server to start")
        served = SimpleNamespace(url=running.url)  # all post_photos needs
        monkeypatch.setattr(Predictor, "probabilities", broken)
        status, _, answer = post_photos(served, [("cat.jpg", photo_bytes("cat", 19))])
        assert (status, answer) == (500, {"error": "internal error: RuntimeError: the model "
                                                   "broke"})
        monkeypatch.undo()
        status, _, rows = post_photos(served, [("cat.jpg", photo_bytes("cat", 19))])
        assert status == 200 and rows[0]["label"] == "cats"
    finally:
        running.server.should_exit = True
        thread.join()


def test_missing_model_or_unknown_host_is_a_one_line_error(runner, trained_model, tmp_path):
    result = runner.invoke(cli, ["serve", "--model", str(tmp_path / "nothing")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output == (f"Error: no model folder at {tmp_path / 'nothing'}: run "
                             "'catsdogs train' first\n")
    result = runner.invoke(cli, ["serve", "--model", str(trained_model), "--host",
                                 "nosuchhost.invalid"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output.startswith("Error: cannot listen on nosuchhost.invalid: ")
    assert result.output.count("\n") == 1
