"""Private servers for fault tests and the chaos benchmark: our own Redis, PostgreSQL and S3 on other ports.

Each is started here, on 127.0.0.1 and a free port, and stopped only by its own PID, so a test can
take its broker or its database away without touching the shared services on 6379 and 5432.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Optional

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up in {timeout}s")


class PrivateRedis:
    """A redis-server of our own, without persistence: a restart loses every queued message."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.proc: Optional[subprocess.Popen] = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "PrivateRedis":
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder), "--logfile", str(self.folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait(self.up, 20, f"redis on port {self.port}")
        return self

    def up(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
        except redis.exceptions.ConnectionError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: a crash, not a clean save
            self.proc.wait(timeout=10)
        self.proc = None


class PrivatePostgres:
    """A PostgreSQL cluster of our own (initdb into a temp folder), started and stopped by its PID."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="budgetq-pg-"))
        self.data, self.port = self.root / "data", free_port()
        self._as_postgres = os.geteuid() == 0  # initdb refuses to run as root
        if self._as_postgres:
            shutil.chown(self.root, "postgres")
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def _run(self, *argv: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        subprocess.run([*prefix, *argv], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> "PrivatePostgres":
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "pg.log"), "-w", "start")
        return self

    def pid(self) -> Optional[int]:
        pidfile = self.data / "postmaster.pid"
        return int(pidfile.read_text().split()[0]) if pidfile.exists() else None

    def stop(self, *, immediate: bool = False) -> None:
        """Stop the postmaster by its PID: SIGINT (fast: sessions cut off) or SIGQUIT (immediate: a crash)."""
        pid = self.pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGQUIT if immediate else signal.SIGINT)
        except ProcessLookupError:
            return
        _wait(lambda: not _alive(pid), 60, "the postmaster to stop")

    def create_database(self, name: Optional[str] = None) -> str:
        import psycopg

        name = name or f"budgetq_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.url().replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        self.stop(immediate=True)
        shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class S3Server:
    """moto's S3-compatible server in a thread on 127.0.0.1; workers reach it through AWS_ENDPOINT_URL."""

    def __init__(self) -> None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)

    def start(self) -> "S3Server":
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        return self

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": "budgetq-test", "AWS_SECRET_ACCESS_KEY": "budgetq-test",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint}

    def bucket(self) -> str:
        """A fresh bucket; returns its name."""
        import boto3

        name = f"budgetq-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="budgetq-test", aws_secret_access_key="budgetq-test",
                     region_name="us-east-1").create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        self.server.stop()


class MetadataServer:
    """A cloud metadata server on 127.0.0.1 in the two shapes budgetq polls, never the real address.

    AWS IMDSv2: ``PUT /latest/api/token`` (with ``X-aws-ec2-metadata-token-ttl-seconds``) returns a
    token; ``GET /latest/meta-data/spot/instance-action`` with that token answers 404 until a notice
    is given, then 200 and the instance-action JSON. GCP: ``GET
    /computeMetadata/v1/instance/preempted`` with ``Metadata-Flavor: Google`` answers FALSE, then TRUE.
    """

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        server = self
        self.noticed = False
        self.token = uuid.uuid4().hex
        self.requests: list[tuple[str, str]] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _answer(self, code: int, body: bytes = b"", content_type: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:
                server.requests.append(("PUT", self.path))
                if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    return self._answer(200, server.token.encode())
                return self._answer(400)

            def do_GET(self) -> None:
                server.requests.append(("GET", self.path))
                if self.path == "/latest/meta-data/spot/instance-action":
                    if self.headers.get("X-aws-ec2-metadata-token") != server.token:
                        return self._answer(401)
                    if not server.noticed:
                        return self._answer(404)
                    document = {"action": "terminate", "time": "2026-11-26T12:00:00Z"}
                    return self._answer(200, json.dumps(document).encode(), "application/json")
                if self.path == "/computeMetadata/v1/instance/preempted":
                    if self.headers.get("Metadata-Flavor") != "Google":
                        return self._answer(403)
                    return self._answer(200, b"TRUE" if server.noticed else b"FALSE")
                return self._answer(404)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> "MetadataServer":
        self.thread.start()
        return self

    def notice(self) -> None:
        self.noticed = True

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
