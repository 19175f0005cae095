"""Real servers for the cluster tests, each on 127.0.0.1 and a temporary directory: PostgreSQL (Debian's package,
which `make test` installs when missing: `make postgres`) and an MLflow tracking server with its backend store on it."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PASSWORD = "dspark-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_binaries() -> Path | None:
    """The directory holding initdb and pg_ctl: on PATH, else the newest of Debian's /usr/lib/postgresql/*/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


class PostgresServer:
    """A throwaway PostgreSQL cluster: superuser `dspark` with a password, TCP on 127.0.0.1 only (password
    checked), a Unix socket in its own directory. PostgreSQL refuses to run as root, so as root it runs as the
    `postgres` system user the Debian package creates."""

    def __init__(self):
        binaries = postgres_binaries()
        if binaries is None:
            raise RuntimeError("PostgreSQL's initdb was not found; run `make postgres` (it installs Debian's postgresql)")
        self.bin = binaries
        self.root = Path(tempfile.mkdtemp(prefix="dspark-postgres-"))  # not under a root-only pytest directory
        self.data, self.port = self.root / "data", free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        (self.root / "password").write_text(PASSWORD + "\n")
        if self.as_user:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.root / "password", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "dspark", f"--pwfile={self.root / 'password'}",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8")
        self.start()

    def _run(self, program: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bin / program), *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60", "-o",
                  f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
                  f"-c max_connections=200", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://dspark:{password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg2

        connection = psycopg2.connect(self.url())
        try:
            connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            connection.cursor().execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return self.url(name)

    def close(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)


class MLflowServer:
    """`mlflow server` with its backend store in PostgreSQL and artifacts proxied into a local directory."""

    def __init__(self, backend_store_uri: str, artifacts: Path):
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = open(artifacts.parent / f"mlflow-server-{self.port}.log", "wb")
        executable = Path(sys.executable).parent / "mlflow"
        self.process = subprocess.Popen(
            [str(executable), "server", "--backend-store-uri", backend_store_uri, "--artifacts-destination",
             str(artifacts), "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120  # it migrates a new database first (~20 s on 2 busy cores)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        self.close()
        raise RuntimeError(f"mlflow server did not answer in 120 s: {Path(self.log.name).read_text()[-2000:]}")

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
        self.log.close()
