"""`otxlite serve` against hostile clients, over real loopback sockets: bodies past the limit however they arrive,
clients that vanish or stall, requests without the API key, and fuzzed KServe bodies and query strings."""

import contextlib
import json
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_serve import FASTER_RCNN, IMAGE, server  # noqa: F401 (server is a fixture)

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
BIG = 64 * 2**20  # bytes a hostile client offers: far past --max-body-mb 1
KSERVE = "/v2/models/export/infer"


def head(path, content_type, length=None, extra=""):
    """A request head: Content-Length when given, else chunked."""
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n{framing}\r\n{extra}"
            f"\r\n").encode()


def chunked(first, filler=b"0", total=BIG, size=2**16):
    """A chunked body: first, then filler up to total bytes (never a last chunk: the client keeps sending)."""
    if first:  # an empty chunk would end the body
        yield f"{len(first):x}\r\n".encode() + first + b"\r\n"
    for _ in range(total // size):
        yield f"{size:x}\r\n".encode() + filler * size + b"\r\n"


def plain(first, filler=b"0", total=BIG, size=2**16):
    yield first
    for _ in range(total // size):
        yield filler * size


def raw_request(port, request_head, body, timeout=60):
    """Send request_head and the body's pieces from a thread while reading the answer on a raw loopback socket:
    (status, answer JSON, body bytes the server let the client send before it answered and closed)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sent = [0]

    def write():
        try:
            sock.sendall(request_head)
            for piece in body:
                sock.sendall(piece)
                sent[0] += len(piece)
        except OSError:  # the server answered and closed the connection
            pass
    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    sock.settimeout(timeout)
    answer = b""
    try:
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        header, _, content = answer.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in header.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        while len(content) < length:
            content += sock.recv(65536)
    finally:
        with contextlib.suppress(OSError):  # the server may have closed it first
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        writer.join(30)
    return int(header.split()[1]), json.loads(content[:length]), sent[0]


def rss(running):
    return psutil.Process(running.process.pid).memory_info().rss


@FASTER_RCNN
def test_the_body_limit_holds_however_the_body_arrives_and_reading_stops_there(exported, server):
    running = server(exported[1] / "openvino.xml", "--max-body-mb", "1")
    expected = running.predict().json()
    for _ in range(10):  # warm: the allocator's pools grow to their working size
        assert running.predict().json() == expected
    part = b'--XX\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    infer = b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["'
    binary = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": BIG}}]}).encode()
    cases = {
        "raw, Content-Length": (head("/predict", "image/jpeg", BIG), plain(b"")),
        "raw, chunked": (head("/predict", "image/jpeg"), chunked(b"")),
        "multipart, Content-Length": (head("/predict", "multipart/form-data; boundary=XX", BIG), plain(part)),
        "multipart, chunked": (head("/predict", "multipart/form-data; boundary=XX"), chunked(part)),
        "KServe base64, chunked": (head(KSERVE, "application/json"), chunked(infer, b"A")),
        "KServe binary, chunked": (head(KSERVE, "application/octet-stream",
                                        extra=f"Inference-Header-Content-Length: {len(binary)}\r\n"), chunked(binary)),
    }
    before = rss(running)
    for name, (request_head, body) in cases.items():
        status, answer, sent = raw_request(running.port, request_head, body)
        assert status == 413 and "--max-body-mb 1" in answer["error"], (name, answer)
        assert sent < 16 * 2**20, (name, sent)  # reading stopped near the limit, not at the end of the 64 MB
        assert running.predict().json() == expected
    assert rss(running) - before < BIG  # six 64 MB bodies offered: less than one held, all told
    assert "Traceback" not in running.stop()


def vanish(port, path="/predict", whole=False):
    """Send part of a body (or all of it, whole) with the API key, then close without reading the answer."""
    data = IMAGE.read_bytes()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head(path, "image/jpeg", len(data), f"Authorization: Bearer {KEY}\r\n")
                     + (data if whole else data[:len(data) // 3]))
        time.sleep(0.1)


def stall(port):
    """Send the head and a third of the body with the API key, then nothing: the answer after the timeout."""
    data = IMAGE.read_bytes()
    return raw_request(port, head("/predict", "image/jpeg", len(data), f"Authorization: Bearer {KEY}\r\n"),
                       iter([data[:len(data) // 3]]))


@FASTER_RCNN
def test_vanishing_and_stalling_clients_among_good_ones_cost_a_log_line_each_and_need_the_api_key(exported, server):
    running = server(exported[1] / "openvino.xml", "--request-timeout-s", "3",
                     env={**os.environ, "OTXLITE_API_KEY": KEY})
    for route in ("/health", "/ready", "/v2/health/live", "/v2/health/ready", "/"):
        assert requests.get(running.url + route, timeout=10).status_code == 200, route
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        for method, route in (("GET", "/model"), ("GET", "/metrics"), ("POST", "/predict"), ("POST", KSERVE)):
            answer = requests.request(method, running.url + route, headers=headers, data=IMAGE.read_bytes(),
                                      timeout=10)
            assert answer.status_code == 401 and answer.headers["WWW-Authenticate"] == "Bearer", (route, headers)
            assert "Authorization: Bearer" in answer.json()["error"] or "wrong" in answer.json()["error"]
    expected = running.predict(headers=AUTH).json()
    for _ in range(10):  # warm: the allocator's pools grow to their working size
        assert running.predict(headers=AUTH).json() == expected

    before = rss(running)
    jobs = ([lambda: running.predict(headers=AUTH)] * 40 + [lambda: vanish(running.port)] * 12
            + [lambda: vanish(running.port, whole=True)] * 6 + [lambda: stall(running.port)] * 4)
    order = sorted(range(len(jobs)), key=lambda i: (i * 7919) % len(jobs))  # mixed, the same every run
    started = time.time()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: jobs[i](), order))
    assert time.time() - started < 120
    good = [r for r in results if isinstance(r, requests.Response)]
    stalled = [r for r in results if isinstance(r, tuple)]
    assert len(good) == 40 and all(r.status_code == 200 and r.json() == expected for r in good)
    assert len(stalled) == 4 and all(status == 504 and "--request-timeout-s 3" in answer["error"]
                                     for status, answer, _ in stalled)
    assert rss(running) - before < 64 * 2**20
    metrics = requests.get(running.url + "/metrics", headers=AUTH, timeout=10).text
    assert 'otxlite_requests_total{route="/predict",status="504"} 4.0' in metrics
    log = running.stop()
    assert "Traceback" not in log and log.count("went away before its request was read whole") == 12, log[-3000:]
    assert log.count("no answer within --request-timeout-s 3") == 4


@FASTER_RCNN
def test_a_request_past_its_timeout_gets_504_and_its_image_never_reaches_the_model(exported, server):
    running = server(exported[1] / "openvino.xml", "--batch-wait-ms", "3000", "--max-batch-size", "64",
                     "--request-timeout-s", "1")
    started = time.time()
    answer = running.predict()
    assert answer.status_code == 504 and "--request-timeout-s 1" in answer.json()["error"]
    assert time.time() - started < 2.5
    time.sleep(3)  # past the batch's wait: a batch would have run by now
    metrics = requests.get(running.url + "/metrics", timeout=10).text
    assert "otxlite_batch_size_count 0.0" in metrics


KNOWN_ROUTES = st.sampled_from(["/predict", KSERVE, "/model", "/health"])
scalars = st.none() | st.booleans() | st.integers(-10**6, 10**12) | st.floats() | st.text(max_size=8)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=3), max_leaves=8)
TENSOR_FIELDS = {"name": st.just("image") | values, "datatype": st.just("BYTES") | values,
                 "shape": st.just([1]) | values, "data": values, "parameters": values
                 | st.fixed_dictionaries({"binary_data_size": values})}
tensors = st.fixed_dictionaries({}, optional=TENSOR_FIELDS) | values
HEADER_VALUES = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=6)  # what HTTP lets through
infer_bodies = st.fixed_dictionaries({}, optional={"id": values, "parameters": values
                                                   | st.fixed_dictionaries({"threshold": values}),
                                                   "inputs": st.lists(tensors, max_size=2) | values}) | values


@FASTER_RCNN
def test_fuzzed_kserve_bodies_and_query_strings_get_a_json_answer_and_never_a_5xx(exported, server):
    running = server(exported[1] / "openvino.xml")
    session = requests.Session()

    def answered(response):
        assert response.status_code < 500, (response.request.url, response.request.body, response.text)
        assert response.status_code == 200 or response.json()["error"]

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=infer_bodies, binary=st.none() | st.binary(max_size=64), header=st.none() | HEADER_VALUES)
    def kserve(body, binary, header):
        text = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if header is not None or binary is not None:
            headers["Inference-Header-Content-Length"] = str(len(text)) if header is None else header
        answered(session.post(running.url + KSERVE, data=text + (binary or b""), headers=headers, timeout=30))

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(route=KNOWN_ROUTES, query=st.lists(st.tuples(st.sampled_from(["threshold", "explain", "treshold", ""])
                                                        | st.text(max_size=6), st.text(max_size=6)), max_size=3))
    def query_string(route, query):
        method = "GET" if route in ("/model", "/health") else "POST"
        answer = session.request(method, running.url + route, params=query, data=IMAGE.read_bytes(),
                                 headers={"Content-Type": "image/jpeg"}, timeout=30)
        answered(answer)
        if any(name not in ("threshold", "explain") or route != "/predict" for name, _ in query):
            assert answer.status_code == 400 and "unknown query parameter" in answer.json()["error"]

    kserve()
    query_string()
    assert "Traceback" not in running.stop()


def test_serving_beyond_loopback_without_a_key_warns_that_anyone_can_use_it(caplog):
    from otxlite.serve.app import warn_if_open

    with caplog.at_level(logging.WARNING, logger="otxlite"):
        for host, key in (("127.0.0.1", None), ("localhost", None), ("::1", None), ("0.0.0.0", KEY)):
            warn_if_open(host, key)
        assert not caplog.records
        warn_if_open("0.0.0.0", None)
        warn_if_open("cells.example.org", "")
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "Listening on 0.0.0.0 without an API key", "Listening on cells.example.org without an API key"]
    assert "anyone who can reach this port can use the model" in caplog.records[0].getMessage()
