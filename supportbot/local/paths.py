"""Where local runs keep their data, and the file that tells other processes where
the embedded services listen."""

from __future__ import annotations

import json
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def var_dir() -> Path:
    return Path(os.environ.get("SUPPORTBOT_VAR_DIR") or BASE_DIR / "var").resolve()


def state_file() -> Path:
    return var_dir() / "run" / "services.json"


def read_state() -> dict[str, str]:
    """URLs of the embedded services a running launcher published, or {}.

    Only while that launcher is alive: a file left by a killed one points at ports
    that something else may own by now.
    """
    try:
        data = json.loads(state_file().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or not _alive(data.pop("launcher_pid", None)):
        return {}
    return {key: value for key, value in data.items() if isinstance(value, str)}


def _alive(pid: object) -> bool:
    from supportbot.local.process import pid_alive

    return isinstance(pid, int) and pid > 0 and pid_alive(pid)


def write_state(state: dict[str, str]) -> None:
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**state, "launcher_pid": os.getpid()}, indent=2))
    tmp.replace(path)


def clear_state() -> None:
    state_file().unlink(missing_ok=True)


def secret_key_file() -> Path:
    return var_dir() / "secret_key"


def read_local_secret_key() -> str:
    try:
        return secret_key_file().read_text().strip()
    except OSError:
        return ""
