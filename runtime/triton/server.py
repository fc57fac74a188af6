"""A Triton server on this machine, on loopback ports, for the tests and the load benchmark: the `tritonserver`
that the nvidia-pytriton wheel carries (with its python backend), installed in a virtual environment of its own:

    python3 -m venv .venv-tritonserver && .venv-tritonserver/bin/pip install nvidia-pytriton==0.7.0

    with LocalServer(repository, ".venv-tritonserver") as server:   # stopped, python stubs too, after the block
        server.http_url, server.grpc_url                            # 127.0.0.1 and free ports

Its own environment because of numpy: the python backend stub of that release (Triton 2.51) reads numpy's
array descriptors as numpy 1 lays them out, and garbles every tensor under numpy 2; its wheel pins numpy < 2 for
that reason, which the project's environment must not take. The stub embeds the system's libpython of the
environment's Python version and does not read PYTHONPATH: a repository's python models find numpy (this
environment's, first), Pillow, onnxruntime and hiera-deploy through the `python_path` the repository was written
with (`python_path(venv, ...)`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from ..errors import HieraRuntimeError

INSTALL = "python3 -m venv VENV && VENV/bin/pip install nvidia-pytriton==0.7.0"


def site_packages(venv) -> Path:
    """The site-packages folder of a virtual environment (lib/pythonX.Y/site-packages)."""
    found = sorted(Path(venv).resolve().glob("lib/python3.*/site-packages"))
    if not found:
        raise HieraRuntimeError(f"{venv}: not a virtual environment with a site-packages folder; {INSTALL}")
    return found[-1]


def wheel_server(venv) -> Path:
    """The tritonserver that nvidia-pytriton installed in `venv` (bin/, backends/, python_backend_stubs/)."""
    folder = site_packages(venv) / "pytriton" / "tritonserver"
    if not (folder / "bin" / "tritonserver").is_file():
        raise HieraRuntimeError(f"{venv}: no tritonserver (nvidia-pytriton) in this environment; {INSTALL}")
    return folder


def python_path(venv, *more) -> list[str]:
    """Import paths for a repository's python models on this server: the server environment's site-packages
    first (its numpy < 2), then `more` (this checkout, the environment with Pillow and onnxruntime)."""
    return [str(site_packages(venv)), *map(str, more)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend_folder(server: Path, python_version: str, into: Path) -> Path:
    """Triton's backend folder for this Python: the wheel's python backend with the stub built for it."""
    stub = server / "python_backend_stubs" / python_version / "triton_python_backend_stub"
    if not stub.is_file():
        raise HieraRuntimeError(f"{server}: no python backend stub for Python {python_version}")
    python = into / "python"
    python.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        (python / name).symlink_to(server / "backends" / "python" / name)
    (python / "triton_python_backend_stub").symlink_to(stub)
    return into


class LocalServer:
    """tritonserver (of the nvidia-pytriton in `venv`) on `repository`, HTTP and gRPC on free 127.0.0.1 ports;
    `restart()` keeps the ports."""

    def __init__(self, repository, venv, startup_timeout: float = 120):
        self.repository, self.startup_timeout = Path(repository), startup_timeout
        self.server = wheel_server(venv)
        self.workdir = Path(tempfile.mkdtemp(prefix="hiera-triton-"))
        version = site_packages(venv).parent.name.removeprefix("python")  # the stub embeds this Python
        self.backends = backend_folder(self.server, version, self.workdir / "backends")
        self.log_path = self.workdir / "tritonserver.log"
        self.http_port, self.grpc_port = free_port(), free_port()
        self.process = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        return [str(self.server / "bin" / "tritonserver"), f"--model-repository={self.repository}",
                f"--backend-directory={self.backends}", "--http-address=127.0.0.1", f"--http-port={self.http_port}",
                "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}", "--allow-metrics=false",
                "--exit-timeout-secs=5",
                # Python models talk to the server through shared memory regions named by this prefix: another
                # server on the machine must not share them.
                f"--backend-config=python,shm-region-prefix-name=hiera{os.getpid()}p{self.http_port}"]

    def start(self) -> LocalServer:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL,
                                            start_new_session=True)  # its own group: stop() ends its stubs too
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                raise HieraRuntimeError(f"tritonserver exited while starting: {self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise HieraRuntimeError(f"tritonserver was not ready after {self.startup_timeout:.0f} s: {self.log_tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the group this server started: whatever of it is left
        process.wait()

    def restart(self) -> LocalServer:
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        wanted = [line for line in text.splitlines() if line.startswith(("E", "error")) or "UNAVAILABLE" in line]
        return " | ".join((wanted or text.splitlines())[-lines:]).strip() or "(no output)"

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *_) -> None:
        self.close()
