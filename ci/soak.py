#!/usr/bin/env python3
"""Soak test of `bitnet serve`: mixed hostile and friendly load on loopback for a while, then
the books are balanced.

    python3 ci/soak.py --bitnet target/release/bitnet [--minutes 20] [--json out.json]

It converts the shared bitllama2c model (BITNET_SHARED or ../shared) and starts the server on
a free loopback port with short timeouts and a rate limit, then runs at once, until time is up:

  - good requests: whole completions and streamed chats (four clients, 127.0.1.1-4, each
    also sending the bad requests below from 127.0.2.1-4);
  - malformed bodies (bad JSON, wrong types, unknown fields) and oversize bodies;
  - clients that disconnect in the middle of a stream;
  - slowloris clients: heads sent a byte at a time, and bodies that never finish;
  - bursts of twice the rate limit's burst at once (from 127.0.0.2);
  - a kubelet-style liveness prober in its own process (a new connection every 100 ms).

Clients that get 429 or 503 come back after a second (their Retry-After), as real ones do.
The load generator runs at a lower priority (nice 10) than the server and the prober: the
clients of a real server are on other machines. Every 10 s it samples the server's RSS. At the end it checks, and prints as JSON:

  - RSS after warm-up flat: the median of the last quarter's samples within 5% of the median
    of the second quarter's (the first quarter is warm-up);
  - nothing leaked: active sequences, queue depth, in-flight requests, KV tokens all 0;
  - every request accounted for: completed + rejected + cancelled = sent on the client, and the
    server's per-route answer counts and cancellations agree;
  - liveness p99 under 5 ms, and every probe answered;
  - slow clients cut at their timeouts.

Exit 0 when every check holds, 1 when one fails, 2 on a usage or setup error. Standard library
only.
"""

import argparse
import json
import multiprocessing as mp
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HEADER_TIMEOUT = 5
BODY_TIMEOUT = 5
MAX_BODY = 65536
RATE = 20
BURST = 20
COMPLETION_ROUTES = ("/v1/completions", "/v1/chat/completions")


def http(addr, method, path, body=None, source="127.0.0.1", timeout=120, raw_body=None):
    """One request on a new connection; returns (status, headers dict, body bytes)."""
    s = socket.create_connection(addr, timeout=timeout, source_address=(source, 0))
    try:
        data = raw_body if raw_body is not None else (json.dumps(body).encode() if body is not None else b"")
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        ).encode()
        s.sendall(head + data)
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
        return parse(b"".join(chunks))
    finally:
        s.close()


def parse(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


class Books:
    """Client-side counts, per category: sent, completed, rejected, cancelled, errors."""

    def __init__(self):
        self.lock = threading.Lock()
        self.c = {}
        self.errors = []
        self.backoff = set()

    def add(self, cat, outcome, n=1, status=None):
        with self.lock:
            d = self.c.setdefault(cat, {"sent": 0, "completed": 0, "rejected": 0, "cancelled": 0, "error": 0,
                                        "statuses": {}})
            d[outcome] += n
            if status is not None:
                d["statuses"][str(status)] = d["statuses"].get(str(status), 0) + n
        if status in (429, 503):
            # As real clients do: come back after Retry-After (at least 1 s), not at once.
            self.backoff.add(threading.get_ident())

    def error(self, cat, what):
        with self.lock:
            self.errors.append(f"{cat}: {what}")
        self.add(cat, "error")


def good_completion(addr, books, rng):
    books.add("good", "sent")
    st, _, body = http(addr, "POST", "/v1/completions", source=rng.source, body={
        "prompt": rng.choice(["Once upon a time", "The little dog", "Lily and Ben", "One day"]),
        "max_tokens": rng.randint(8, 48), "temperature": 0.8, "seed": rng.randint(0, 1 << 30)})
    if st == 200:
        json.loads(body)["choices"][0]["text"]
        books.add("good", "completed", status=st)
    elif st in (429, 503):
        books.add("good", "rejected", status=st)
    else:
        books.error("good", f"status {st}: {body[:200]!r}")


def read_until(s, marker, limit=1 << 20):
    buf = b""
    while marker not in buf and len(buf) < limit:
        b = s.recv(4096)
        if not b:
            break
        buf += b
    return buf


def good_stream(addr, books, rng, cancel):
    cat = "cancel" if cancel else "stream"
    books.add(cat, "sent")
    s = socket.create_connection(addr, timeout=120, source_address=(rng.source, 0))
    try:
        body = json.dumps({"messages": [{"role": "user", "content": "Tell me a story."}],
                           "max_tokens": 200 if cancel else rng.randint(8, 40), "stream": True,
                           "temperature": 0.8, "seed": rng.randint(0, 1 << 30)}).encode()
        s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: soak\r\nContent-Length: {len(body)}\r\n"
                  f"Connection: close\r\n\r\n".encode() + body)
        if cancel:
            # Wait for the first content chunk, then hang up.
            buf = read_until(s, b"data: {")
            if not buf.startswith(b"HTTP/1.1 200"):
                st = int(buf.split()[1]) if buf.startswith(b"HTTP/1.1") else 0
                if st in (429, 503):
                    return books.add(cat, "rejected", status=st)
                return books.error(cat, f"no stream: {buf[:200]!r}")
            return books.add(cat, "cancelled", status=200)
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
        raw = b"".join(chunks)
        st = int(raw.split()[1])
        if st == 200 and b"data: [DONE]" in raw:
            books.add(cat, "completed", status=st)
        elif st in (429, 503):
            books.add(cat, "rejected", status=st)
        else:
            books.error(cat, f"status {st}: {raw[:200]!r}")
    finally:
        s.close()


MALFORMED = [
    b"{not json",
    b'{"prompt": 7}',
    b'{"prompt": "x", "max_tokens": -3}',
    b'{"prompt": "x", "temperature": "hot"}',
    b'{"prompt": "x", "no_such_field": 1}',
    b'{"messages": []}',
    b"[]",
    b"",
]


def malformed(addr, books, rng):
    books.add("malformed", "sent")
    st, _, body = http(addr, "POST", rng.choice(COMPLETION_ROUTES), raw_body=rng.choice(MALFORMED),
                       source=rng.source)
    if 400 <= st < 500 and json.loads(body)["error"]["message"]:
        books.add("malformed", "rejected", status=st)
    else:
        books.error("malformed", f"status {st}: {body[:200]!r}")


def oversize(addr, books, rng):
    books.add("oversize", "sent")
    data = json.dumps({"prompt": "x" * (MAX_BODY + rng.randint(1, 4 * MAX_BODY))}).encode()
    try:
        st, _, body = http(addr, "POST", "/v1/completions", raw_body=data, source=rng.source)
    except (ConnectionResetError, BrokenPipeError):
        # The server answered 413 and closed before reading the rest; the client's socket
        # saw the reset first. The server's own count has the 413.
        return books.add("oversize", "rejected", status="reset")
    if st in (413, 429):
        books.add("oversize", "rejected", status=st)
    else:
        books.error("oversize", f"status {st}: {body[:200]!r}")


def burst(addr, books, rng):
    """Twice the burst size at once from 127.0.0.2: the limiter lets about BURST through."""
    threads = []
    for _ in range(2 * BURST):
        def one():
            books.add("burst", "sent")
            st, _, body = http(addr, "POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 2}, source="127.0.0.2")
            if st == 200:
                books.add("burst", "completed", status=st)
            elif st in (429, 503):
                books.add("burst", "rejected", status=st)
            else:
                books.error("burst", f"status {st}: {body[:200]!r}")
        t = threading.Thread(target=one)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()


def slow_head(addr, stats):
    """A head sent a byte every 250 ms, until the server cuts the connection."""
    s = socket.create_connection(addr, timeout=60)
    s.settimeout(0.001)
    head = b"POST /v1/completions HTTP/1.1\r\nHost: soak\r\nX-Slow: " + b"a" * 4096
    t0 = time.monotonic()
    try:
        for b in head:
            s.send(bytes([b]))
            try:
                if s.recv(1024) == b"":
                    break
            except (BlockingIOError, socket.timeout):
                pass
            time.sleep(0.25)
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        s.close()
    stats.append(("head", time.monotonic() - t0))


def slow_body(addr, books, stats):
    books.add("slow-body", "sent")
    s = socket.create_connection(addr, timeout=60)
    t0 = time.monotonic()
    try:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: soak\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n")
        s.settimeout(0.001)
        raw = b""
        while time.monotonic() - t0 < 60:
            try:
                s.send(b" ")
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                b = s.recv(65536)
                if b == b"":
                    break
                raw += b
            except (BlockingIOError, socket.timeout):
                pass
            time.sleep(0.25)
        s.settimeout(5)
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                raw += b
        except (OSError, socket.timeout):
            pass
    finally:
        s.close()
    stats.append(("body", time.monotonic() - t0))
    if raw.startswith(b"HTTP/1.1 408"):
        books.add("slow-body", "rejected", status=408)
    else:
        books.error("slow-body", f"{raw[:200]!r}")


def prober(addr, stop_at, out):
    """Liveness, kubelet-style, in its own process (no shared interpreter lock)."""
    lat, failures = [], 0
    while time.time() < stop_at:
        t0 = time.perf_counter()
        try:
            st, _, _ = http(addr, "GET", "/health/live", timeout=5)
            if st != 200:
                failures += 1
        except OSError:
            failures += 1
        lat.append(time.perf_counter() - t0)
        time.sleep(0.1)
    out.put({"latencies": lat, "failures": failures})


def metrics(addr):
    _, _, body = http(addr, "GET", "/metrics")
    out = {}
    for line in body.decode().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        out[name] = float(value)
    return out


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def worker(addr, books, stop_at, seed, errors):
    rng = random.Random(seed)
    rng.source = f"127.0.1.{seed + 1}"
    bad = random.Random(seed + 1000)
    bad.source = f"127.0.2.{seed + 1}"
    kinds = [(good_completion, 6), (lambda a, b, r: good_stream(a, b, r, False), 4),
             (lambda a, b, r: good_stream(a, b, r, True), 2), (malformed, 3), (oversize, 1)]
    table = [k for k, w in kinds for _ in range(w)]
    while time.time() < stop_at:
        try:
            kind = rng.choice(table)
            kind(addr, books, bad if kind in (malformed, oversize) else rng)
            if threading.get_ident() in books.backoff:
                books.backoff.discard(threading.get_ident())
                time.sleep(1.0)
        except Exception as e:  # noqa: BLE001 - every failure is reported, none is fatal
            errors.append(repr(e))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bitnet", required=True, help="the bitnet binary")
    ap.add_argument("--minutes", type=float, default=20)
    ap.add_argument("--json", help="write the report here too")
    ap.add_argument("--threads", type=int, default=2, help="server compute threads")
    a = ap.parse_args()
    shared = Path(os.environ.get("BITNET_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    src = shared / "models/bitllama2c-3m"
    if not (src / "model.bin").exists():
        print(f"soak: shared model not found at {src}", file=sys.stderr)
        return 2
    model = Path(f"/tmp/bitnet-soak-{os.getpid()}.gguf")
    subprocess.run([a.bitnet, "convert", "llama2c", str(src / "model.bin"), "--tokenizer", str(src / "tokenizer.model"),
                    "-o", str(model)], check=True, stdout=subprocess.DEVNULL)
    srv = subprocess.Popen(
        [a.bitnet, "serve", "-m", str(model), "--port", "0", "--threads", str(a.threads), "--parallel", "4",
         "--queue", "16", "--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT),
         "--max-body", str(MAX_BODY), "--rate-limit", str(RATE), "--rate-burst", str(BURST)],
        stderr=subprocess.PIPE, text=True)
    first = srv.stderr.readline()
    m = re.search(r"listening on http://([\d.]+):(\d+)", first)
    if not m:
        print(f"soak: unexpected first line {first!r}", file=sys.stderr)
        srv.kill()
        return 2
    addr = (m.group(1), int(m.group(2)))
    threading.Thread(target=lambda: [None for _ in srv.stderr], daemon=True).start()
    while True:
        try:
            if http(addr, "GET", "/health/ready")[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.05)

    start = time.time()
    stop_at = start + a.minutes * 60
    books, errors, slow = Books(), [], []
    q = mp.Queue()
    probe = mp.Process(target=prober, args=(addr, stop_at, q))
    probe.start()
    os.nice(10)
    threads = [threading.Thread(target=worker, args=(addr, books, stop_at, i, errors)) for i in range(4)]

    def slow_loop():
        while time.time() < stop_at:
            ts = [threading.Thread(target=slow_head, args=(addr, slow)) for _ in range(8)]
            ts += [threading.Thread(target=slow_body, args=(addr, books, slow)) for _ in range(2)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()

    def burst_loop():
        rng = random.Random(99)
        while time.time() < stop_at:
            burst(addr, books, rng)
            time.sleep(rng.uniform(5, 15))

    threads += [threading.Thread(target=slow_loop), threading.Thread(target=burst_loop)]
    for t in threads:
        t.start()
    samples = []
    while time.time() < stop_at:
        samples.append((round(time.time() - start), rss_kib(srv.pid)))
        time.sleep(10)
    for t in threads:
        t.join()
    live = q.get()
    probe.join()
    time.sleep(1)
    met = metrics(addr)
    srv.terminate()
    srv.wait(timeout=60)
    model.unlink(missing_ok=True)

    # The books.
    totals = {k: sum(d[k] for d in books.c.values()) for k in ("sent", "completed", "rejected", "cancelled", "error")}
    server_answers = sum(v for k, v in met.items()
                         if k.startswith("bitnet_http_requests_total") and any(f'route="{r}"' in k for r in COMPLETION_ROUTES))
    lat = sorted(live["latencies"])
    p99 = lat[int(0.99 * (len(lat) - 1))] * 1000 if lat else float("inf")
    # Drift: the median RSS of the last quarter against that of the second (the first is
    # warm-up). Medians of windows, not two single samples: the allocator moves a 15 MB
    # process by a megabyte either way from one sample to the next.
    n = len(samples)
    q2 = sorted(r for _, r in samples[n // 4:n // 2])
    q4 = sorted(r for _, r in samples[3 * n // 4:])
    drift = (q4[len(q4) // 2] - q2[len(q2) // 2]) / q2[len(q2) // 2] if q2 and q4 else float("inf")
    after = [r for _, r in samples[n // 4:]]
    heads = [d for k, d in slow if k == "head"]
    bodies = [d for k, d in slow if k == "body"]
    gauges = {k: met.get(k, -1) for k in ("bitnet_active_sequences", "bitnet_queue_depth",
                                           "bitnet_in_flight_requests", "bitnet_kv_cache_tokens")}
    checks = {
        "rss_flat": drift < 0.05,
        "nothing_leaked": all(v == 0 for v in gauges.values()),
        "client_books_balance": totals["completed"] + totals["rejected"] + totals["cancelled"] == totals["sent"]
        and totals["error"] == 0 and not errors,
        "server_saw_every_request": server_answers == totals["sent"],
        "cancellations_agree": met.get("bitnet_cancelled_requests_total", -1) == totals["cancelled"],
        "liveness_p99_under_5ms": p99 < 5.0 and live["failures"] == 0,
        "slow_clients_cut": bool(heads) and max(heads) < HEADER_TIMEOUT + 2
        and bool(bodies) and max(bodies) < BODY_TIMEOUT + 2,
    }
    report = {
        "minutes": a.minutes,
        "by_category": books.c,
        "totals": totals,
        "server_answers_on_completion_routes": server_answers,
        "server_cancelled": met.get("bitnet_cancelled_requests_total"),
        "server_generated_tokens": met.get("bitnet_generated_tokens_total"),
        "gauges_at_end": gauges,
        "rss_kib_samples": samples,
        "rss_drift_after_warmup": round(drift, 4),
        "rss_kib_after_warmup": {"min": min(after), "max": max(after), "first": after[0], "last": after[-1]}
        if after else None,
        "liveness": {"probes": len(lat), "failures": live["failures"],
                     "p50_ms": round(lat[len(lat) // 2] * 1000, 3) if lat else None,
                     "p99_ms": round(p99, 3), "max_ms": round(lat[-1] * 1000, 3) if lat else None},
        "slow_heads": {"n": len(heads), "max_held_s": round(max(heads), 2) if heads else None},
        "slow_bodies": {"n": len(bodies), "max_held_s": round(max(bodies), 2) if bodies else None},
        "client_errors": (books.errors + errors)[:20],
        "checks": checks,
        "ok": all(checks.values()),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
