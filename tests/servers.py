"""Real Hearth servers for the tests: `manage.py serve` subprocesses, embedded or with Celery workers.

Embedded: SQLite in a temporary folder, the worker thread in the web process. Production: Postgres and Redis
on 127.0.0.1 (a fresh database and Redis db per server), daphne, and separate `celery worker` processes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
ADMIN_PASSWORD = "hearth-test-password"
POSTGRES_URL = os.environ.get("HEARTH_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432")
REDIS_SERVER = os.environ.get("HEARTH_TEST_REDIS_SERVER", "redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def manage(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=check, timeout=300)


class RedisServer:
    """A private `redis-server` on a free port: each test server gets its own (nothing shared with other test runs
    on this machine), and a test can stop it and start it again on the same port to play an outage. It keeps its
    data in an append-only file, as docker-compose.yml's Redis does, so a restart loses nothing."""

    def __init__(self, data_dir: Path, port: int | None = None):
        self.port = port or free_port()
        self.data_dir = data_dir
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10) -> RedisServer:
        log = (self.data_dir / f"redis-{self.port}.log").open("ab")
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--appenddirname", f"aof-{self.port}", "--dir", str(self.data_dir)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        import redis

        deadline = time.monotonic() + timeout
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=1).ping()
                return self
            except redis.RedisError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


class PostgresDoor:
    """A TCP door in front of PostgreSQL: the Hearth processes of a test server reach their database through it,
    and a test closes it (every open connection cut, new ones refused) to play a database outage, then opens it
    again. The shared PostgreSQL of the machine is never stopped."""

    def __init__(self, target: tuple[str, int]):
        import threading

        self.target = target
        self.port = free_port()
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, name="postgres-door", daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                self._forget(sock)

    def _forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def close(self) -> None:
        """The outage: every connection through the door is cut and new ones are refused."""
        self._open.clear()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            self._forget(sock)

    def open(self) -> None:
        self._open.set()


@dataclass
class HearthServer:
    env: dict[str, str]
    port: int
    data_dir: Path
    processes: list[subprocess.Popen] = field(default_factory=list)
    api_key: str = ""
    logs: list[Path] = field(default_factory=list)
    redis: RedisServer | None = None
    postgres_database: str = ""
    postgres_door: PostgresDoor | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return manage(self.env, *args, check=check)

    def spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = self.data_dir / f"{name}.log"
        self.logs.append(log)
        process = subprocess.Popen(command, cwd=ROOT, env=env or self.env, stdout=log.open("ab"),
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def start_web(self) -> None:
        self.spawn("web", [PYTHON, "manage.py", "serve", "--port", str(self.port)])

    def start_celery_worker(self, name: str = "worker") -> subprocess.Popen:
        return self.spawn(name, [PYTHON, "-m", "celery", "-A", "config", "worker", "-Q", "generation",
                                 "--hostname", f"{name}-{self.port}@%h", "--loglevel", "INFO",
                                 "--without-mingle", "--without-gossip"])

    def start_converter(self, name: str = "converter") -> subprocess.Popen:
        """A converter as docker-compose.yml runs it: the conversions queue, one at a time."""
        return self.spawn(name, [PYTHON, "-m", "celery", "-A", "config", "worker", "-Q", "conversions",
                                 "--concurrency", "1", "--hostname", f"{name}-{self.port}@%h", "--loglevel", "INFO",
                                 "--without-mingle", "--without-gossip"])

    def wait_healthy(self, timeout: float = 90, workers: int = 1) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"a server process exited early:\n{self.log_tail()}")
            try:
                last = httpx.get(f"{self.base_url}/health", timeout=5).json()
                if last["status"] == "ok" and last["workers"]["alive"] >= workers:
                    return last
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"Hearth did not become healthy: {last}\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        out = []
        for log in self.logs:
            if log.exists():
                out.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        self.processes.clear()
        if self.redis is not None:
            self.redis.stop()

    def job_statuses(self, job_ids: list[str]) -> dict[str, str]:
        """The status of each job (ids as the API gives them), read from the server's database."""
        wanted = {str(job_id).replace("-", ""): str(job_id) for job_id in job_ids}
        if self.postgres_database:
            import psycopg

            with psycopg.connect(f"{POSTGRES_URL}/{self.postgres_database}") as connection:
                rows = connection.execute("SELECT id::text, status FROM inference_generationjob").fetchall()
        else:
            import sqlite3

            with sqlite3.connect(self.data_dir / "hearth.sqlite3", timeout=30) as connection:
                rows = connection.execute("SELECT id, status FROM inference_generationjob").fetchall()
        return {wanted[str(i).replace("-", "")]: status for i, status in rows if str(i).replace("-", "") in wanted}

    def create_user(self, username: str, password: str = ADMIN_PASSWORD, *, staff: bool = False) -> str:
        """Create a user and return a new API key of theirs."""
        code = (
            "from django.contrib.auth import get_user_model; U = get_user_model(); "
            f"u = U.objects.create_user({username!r}, password={password!r}, is_staff={staff}); "
        )
        self.manage("shell", "-c", code)
        return self.manage("create_api_key", username).stdout.strip()


def base_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEARTH_", "DATABASE_URL"))}
    env.update(
        HEARTH_DATA_DIR=str(data_dir),
        HEARTH_ADMIN_PASSWORD=ADMIN_PASSWORD,
        HEARTH_LOG_LEVEL="WARNING",
        HEARTH_N_THREADS="2",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def prepare(server: HearthServer, models: dict[str, Path | tuple[Path, str]]) -> None:
    """Migrate, import the models (a path, or a (path, backend) pair), and create the admin and their key."""
    server.manage("migrate", "--noinput")
    for name, source in models.items():
        path, backend = source if isinstance(source, tuple) else (source, "")
        server.manage("import_model", str(path), "--name", name, *(["--backend", backend] if backend else []))
    server.manage("bootstrap_admin")
    credentials = (server.data_dir / "admin-credentials.txt").read_text()
    server.api_key = next(line.split(": ", 1)[1] for line in credentials.splitlines() if line.startswith("api_key"))


def start_embedded(data_dir: Path, models: dict[str, Path], **env_extra: str) -> HearthServer:
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = HearthServer(env=base_env(data_dir, HEARTH_PORT=str(port), **env_extra), port=port, data_dir=data_dir)
    prepare(server, models)
    server.start_web()
    server.wait_healthy()
    return server


def create_postgres_database() -> str:
    import psycopg

    name = f"hearth_test_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(f"{POSTGRES_URL}/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_postgres_database(name: str) -> None:
    import psycopg

    with psycopg.connect(f"{POSTGRES_URL}/postgres", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_production(data_dir: Path, models: dict[str, Path], *, workers: int = 1, postgres_door: bool = False,
                     **env_extra: str) -> HearthServer:
    """With `postgres_door`, Hearth reaches PostgreSQL through a `PostgresDoor` the test can close."""
    from urllib.parse import urlsplit

    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    database = create_postgres_database()
    redis_server = RedisServer(data_dir).start()
    database_url = f"{POSTGRES_URL}/{database}"
    door = None
    if postgres_door:
        parts = urlsplit(POSTGRES_URL)
        door = PostgresDoor((parts.hostname or "127.0.0.1", parts.port or 5432))
        database_url = f"{parts.scheme}://{parts.username or 'postgres'}@127.0.0.1:{door.port}/{database}"
    env = base_env(
        data_dir,
        HEARTH_PORT=str(port),
        HEARTH_REDIS_URL=f"{redis_server.url}/0",
        DATABASE_URL=database_url,
        HEARTH_SECRET_KEY=secrets.token_urlsafe(48),
        HEARTH_DEBUG="0",
        HEARTH_WORKER_HEARTBEAT_SECONDS="1",
        **env_extra,
    )
    server = HearthServer(env=env, port=port, data_dir=data_dir, redis=redis_server, postgres_database=database,
                          postgres_door=door)
    prepare(server, models)
    for index in range(workers):
        server.start_celery_worker(f"worker{index}")
    server.start_web()
    server.wait_healthy(workers=workers)
    return server
