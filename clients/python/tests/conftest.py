"""A real `wasmtx serve` per store (SQLite, PostgreSQL) with real plugins, and a small HTTP
participant server. The binary is $WASMTX_BIN, else the repository's target/debug/wasmtx
(built by `cargo test`); PostgreSQL is $WASMTX_TEST_POSTGRES, else the local test server.
With CI=true a missing store fails the run instead of skipping it."""

import json
import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
PLUGINS = REPO / "target" / "plugins" / "wasm32-wasip2" / "plugin"
POSTGRES = os.environ.get("WASMTX_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/test")


def binary() -> Path:
    found = os.environ.get("WASMTX_BIN")
    path = Path(found) if found else REPO / "target" / "debug" / "wasmtx"
    if not path.exists():
        pytest.fail(f"{path} does not exist: run `cargo test` (or cargo build -p wasmtx) first, or set WASMTX_BIN")
    return path


def plugin(name: str) -> Path:
    path = PLUGINS / f"{name}.wasm"
    if not path.exists():
        pytest.fail(f"{path} does not exist: run scripts/build-plugins first")
    return path


def fresh_postgres() -> str:
    name = f"wasmtx_py_{uuid.uuid4().hex}"
    try:
        subprocess.run(["psql", POSTGRES, "-q", "-c", f"CREATE DATABASE {name}"], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        message = f"PostgreSQL is not reachable at {POSTGRES}: {e}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return POSTGRES.rsplit("/", 1)[0] + "/" + name


class Server:
    def __init__(self, store: str):
        self.dir = tempfile.mkdtemp(prefix="wasmtx-py-")
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "WASMTX_ADMIN_TOKEN")}
        self.database = None
        if store == "postgres":
            env["DATABASE_URL"] = self.database = fresh_postgres()
        self.log = open(os.path.join(self.dir, "serve.log"), "wb")
        self.process = subprocess.Popen(
            [str(binary()), "serve", "--listen", "127.0.0.1:0", "--data-dir", self.dir],
            stdout=subprocess.PIPE, stderr=self.log, env=env)
        line = self.process.stdout.readline().decode()
        urls = [w for w in line.split() if w.startswith("http://")]
        if not urls:
            self.stop()
            pytest.fail(f"wasmtx serve did not start: {line!r}; see {self.dir}/serve.log")
        self.url = urls[0]
        threading.Thread(target=self.process.stdout.read, daemon=True).start()

    def stop(self):
        self.process.kill()
        self.process.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.database:
            # The machine's PostgreSQL outlives the run: leave nothing behind.
            name = self.database.rsplit("/", 1)[1]
            subprocess.run(["psql", POSTGRES, "-q", "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], capture_output=True, timeout=30)


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def server(request):
    s = Server(request.param)
    from wasmtx import Client
    with Client(s.url) as c:
        for name in ("payment", "inventory", "shipping", "scripted", "ledger"):
            c.push_plugin(name, plugin(name))
        scripted = plugin("scripted").read_bytes()
        ledger = plugin("payment").read_bytes()
        # The names the patterns document's examples use.
        for step in ("payment_step", "inventory_step", "shipping_step"):
            c.push_plugin(f"StepNode_{step}", scripted)
            c.push_plugin(f"CompensationNode_{step}", scripted)
        for service in ("core_banking", "fraud_detection", "compliance_check", "audit_logging"):
            c.push_plugin(service, ledger)
    yield s
    s.stop()


class Participant:
    """An HTTP participant: records every call; `fail` actions answer 422, `vote_no`
    participants (by path prefix) answer prepare with an abort vote."""

    def __init__(self):
        self.calls = []
        self.fail = set()
        self.vote_no = set()
        participant = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                participant.calls.append((self.path, body))
                action = self.path.rsplit("/", 1)[-1]
                prefix = self.path.rsplit("/", 1)[0]
                if action in participant.fail:
                    return self.answer(422, {"error": f"{action} refused"})
                if action == "prepare":
                    vote = "abort" if prefix in participant.vote_no else "prepared"
                    return self.answer(200, {"vote": vote})
                return self.answer(200, {"done": action})

            def answer(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def paths(self):
        return [path for path, _ in self.calls]


@pytest.fixture
def participant():
    p = Participant()
    yield p
    p.http.shutdown()
    p.http.server_close()


@pytest.fixture
def client(server):
    from wasmtx import Client
    with Client(server.url) as c:
        yield c


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"
