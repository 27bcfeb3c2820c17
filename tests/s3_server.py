"""A real S3 server for tests and benchmarks: moto's server in its own process on a free local port,
and an HTTP proxy in front of it that delays every request (latency), answers some with 503 (faults),
answers every conditional PUT (If-None-Match) with 412 as a server whose object already exists does
(`--refuse-create aws|plain`: AWS's error body, which names the condition, or the bare one other
S3-compatible servers send), or answers every request with 403 and an access error code (`--deny CODE`).

    python tests/s3_server.py moto --port P
    python tests/s3_server.py proxy --port P --upstream http://127.0.0.1:Q --delay-ms 20 --fail-every 0
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

PIDS: dict[str, int] = {}  # url -> pid of each server `serve` started (benchmarks read their CPU time)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server at {url} did not start")
            time.sleep(0.05)


@contextlib.contextmanager
def serve(kind: str, **options):
    """Start `moto` or `proxy` (options: upstream, delay_ms, fail_every, refuse_create, deny) in a subprocess;
    yields its URL."""
    port = free_port()
    args = [sys.executable, __file__, kind, "--port", str(port)]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    PIDS[url] = process.pid
    try:
        _wait_ready(url + ("/moto-api/" if kind == "moto" else "/__proxy_ready__"), process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proxy_stats(url: str) -> dict:
    """{"requests": forwarded or failed, "failed": answered 503} of a proxy started by `serve`."""
    return json.loads(urllib.request.urlopen(url + "/__proxy_stats__", timeout=5).read())


def make_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in CREDENTIALS.items()
                                                  if k != "AWS_DEFAULT_REGION"},
                 region_name=CREDENTIALS["AWS_DEFAULT_REGION"]).create_bucket(Bucket=bucket)


# S3 error bodies as the servers send them (application/xml)
PRECONDITION_FAILED = {
    # AWS names the failed condition (https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html)
    "aws": b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>PreconditionFailed</Code><Message>At least one of '
           b'the pre-conditions you specified did not hold</Message><Condition>If-None-Match</Condition>'
           b'<RequestId>4NC8WAJ0EY1XKB8Z</RequestId><HostId>Xb9lT0yXk3QkWc1Y2Z3a4b5c6d7e8f9g0h=</HostId></Error>',
    # MinIO, Ceph and others: the code and message alone
    "plain": b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>PreconditionFailed</Code><Message>At least one '
             b'of the pre-conditions you specified did not hold</Message><RequestId>17A2B3C4D5E6F708</RequestId>'
             b'</Error>',
}
ACCESS_ERRORS = {
    "AccessDenied": "Access Denied",
    "InvalidAccessKeyId": "The AWS Access Key Id you provided does not exist in our records.",
    "SignatureDoesNotMatch": "The request signature we calculated does not match the signature you provided. "
                             "Check your key and signing method.",
}


def access_error(code: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{ACCESS_ERRORS[code]}'
            '</Message><RequestId>4NC8WAJ0EY1XKB8Z</RequestId><HostId>Xb9lT0yXk3QkWc1Y2Z3a4b5c6d7e8f9g0h=</HostId>'
            '</Error>').encode()


class Proxy(BaseHTTPRequestHandler):
    """Forwards each request to the upstream after `delay_ms`; every `fail_every`-th answers 503 SlowDown;
    with `refuse_create` every PUT with If-None-Match answers 412, with `deny` every request answers 403."""

    protocol_version = "HTTP/1.1"
    upstream: tuple[str, int] = ("127.0.0.1", 0)
    delay_s = 0.0
    fail_every = 0
    refuse_create = ""  # "aws" or "plain": the 412 body
    deny = ""  # an ACCESS_ERRORS code
    count = 0
    failed = 0
    lock = threading.Lock()
    local = threading.local()

    def log_message(self, *args):  # quiet
        pass

    def _forward(self):
        if self.path == "/__proxy_ready__":
            self._reply(200, [], b"ok")
            return
        if self.path == "/__proxy_stats__":
            self._reply(200, [], json.dumps({"requests": Proxy.count, "failed": Proxy.failed}).encode())
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        with Proxy.lock:
            Proxy.count += 1
            fail = Proxy.fail_every and Proxy.count % Proxy.fail_every == 0
            Proxy.failed += bool(fail)
        if Proxy.delay_s:
            time.sleep(Proxy.delay_s)
        xml = [("Content-Type", "application/xml")]
        if Proxy.deny:
            self._reply(403, xml, access_error(Proxy.deny))
            return
        if Proxy.refuse_create and self.command == "PUT" and self.headers.get("If-None-Match"):
            self._reply(412, xml, PRECONDITION_FAILED[Proxy.refuse_create])
            return
        if fail:
            error = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                     b'<Message>Please reduce your request rate.</Message></Error>')
            self._reply(503, [("Content-Type", "application/xml")], error)
            return
        connection = getattr(Proxy.local, "connection", None)
        if connection is None:
            connection = Proxy.local.connection = http.client.HTTPConnection(*Proxy.upstream, timeout=60)
        try:
            connection.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
            response = connection.getresponse()
            payload = response.read()
        except (http.client.HTTPException, OSError):
            Proxy.local.connection = None
            connection.close()
            raise
        headers = [(k, v) for k, v in response.getheaders() if k.lower() not in ("transfer-encoding", "connection",
                                                                                  "content-length")]
        self._reply(response.status, headers, payload)

    def _reply(self, status: int, headers, payload: bytes) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["moto", "proxy"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", default="")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--fail-every", type=int, default=0)
    parser.add_argument("--refuse-create", choices=["", *PRECONDITION_FAILED], default="")
    parser.add_argument("--deny", choices=["", *ACCESS_ERRORS], default="")
    args = parser.parse_args()
    if args.kind == "moto":
        os.environ.update(CREDENTIALS)
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
        server.start()
        threading.Event().wait()
    upstream = urlsplit(args.upstream)
    Proxy.upstream = (upstream.hostname, upstream.port)
    Proxy.delay_s, Proxy.fail_every = args.delay_ms / 1000.0, args.fail_every
    Proxy.refuse_create, Proxy.deny = args.refuse_create, args.deny
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", args.port), Proxy).serve_forever()


if __name__ == "__main__":
    main()
