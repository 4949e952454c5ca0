"""Run the real Triton Inference Server (the `tritonserver` binary of the nvidia-pytriton wheel, see serving.tritonserver) on a model repository.

    python -m serving.server --repository artifacts/triton/repository            # 127.0.0.1:8000 / :8001
    python -m serving.server model_repository=<export>/model_repository http_port=8000 grpc_port=8001 metrics_port=8002
    python -m serving.server --repository ... --http-port 8100 --grpc-port 8101 --address 0.0.0.0
    python -m serving.server --repository ... --model-control off    # no load/unload API at all

Binds 127.0.0.1 unless told otherwise, waits until the server and every model are ready, and shuts
down cleanly on Ctrl-C or SIGTERM. Models load in explicit mode: all of them at start, and a new
version is picked up with `serving.repository publish` without a restart.

The APIs that change the server (model repository: load, unload, index; shared memory; trace and
log settings) answer only requests that carry the header `intentrec-control-key` (over gRPC
`triton-grpc-protocol-intentrec-control-key`) with the server's control key: `INTENTREC_CONTROL_KEY` when set, else the file `artifacts/triton/control.key`
(`--control-key-file`; created with a random key and mode 0600 when missing). `publish` reads the same
key. Health, metadata, model configuration, statistics and inference stay open (see docs/security.md).
`--model-control off` starts Triton without model control: the models of the repository load at
start and never change until a restart.

The python backend runs our code with this interpreter: the backend stub in the pytriton wheel links
the system libpython, so LD_LIBRARY_PATH starts with this interpreter's LIBDIR (otherwise models fail
with `'_thread.RLock' object has no attribute '_recursion_count'`); the stub's embedded interpreter
ignores PYTHONPATH, so INTENTREC_PYTHONPATH (repository root + the venv's site-packages) is put on
sys.path by the generated model.py; and the stub sits beside `libtriton_python.so` in a backend
directory we own (`<artifacts>/triton/backends/python`).
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

from intentrec.errors import ConfigError
from intentrec.paths import IMPORT_ROOT, REPO_ROOT
from intentrec.serving.cli import key_value_flags

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "127.0.0.1"
CONTROL_HEADER = "intentrec-control-key"  # lower case: gRPC metadata keys must be
CONTROL_KEY_ENV = "INTENTREC_CONTROL_KEY"
DEFAULT_CONTROL_KEY_FILE = REPO_ROOT / "artifacts" / "triton" / "control.key"
# Triton API groups that change the server or reach its files; inference, health, metadata,
# model-config and statistics stay open.
RESTRICTED_APIS = ("model-repository", "shared-memory", "trace", "logging")
MODEL_CONTROL = ("key", "off")


def control_headers(key: str, protocol: str = "grpc") -> dict[str, str]:
    """The header carrying `key`; Triton's gRPC frontend expects its `triton-grpc-protocol-` prefix."""
    return {("triton-grpc-protocol-" if protocol == "grpc" else "") + CONTROL_HEADER: key}


def control_key(path: Path | None = None, create: bool = False) -> str:
    """The model-control key: $INTENTREC_CONTROL_KEY, else the key file (made with a random key when `create`)."""
    from_env = os.environ.get(CONTROL_KEY_ENV, "").strip()
    if from_env:
        return from_env
    path = Path(path or DEFAULT_CONTROL_KEY_FILE)
    if not path.is_file():
        if not create:
            raise ConfigError(
                f"no model-control key: {CONTROL_KEY_ENV} is not set and {path} does not exist; start the server "
                f"first (python -m serving.server writes that file) or pass the file the server uses "
                f"(--control-key-file), or set {CONTROL_KEY_ENV} to the server's key."
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{os.getpid()}")
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
        try:
            os.link(draft, path)  # atomic: a server starting at the same time reads one key or the other whole
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    key = path.read_text().strip()
    if not key or any(c.isspace() or not c.isprintable() for c in key):
        raise ConfigError(
            f"{path} holds no usable key (empty, or with spaces or control characters); delete it and "
            "restart the server to make a new one."
        )
    return key


def triton_home() -> Path:
    from intentrec.serving.tritonserver import find_home

    home = find_home()
    if home is None:
        raise ConfigError(
            "the tritonserver binary is not installed; run python -m intentrec.serving.tritonserver (or "
            "./scripts/test.sh, which does) to fetch it into this environment."
        )
    return home


def backend_directory(root: Path | None = None) -> Path:
    """A backend directory we own: python backend library, its utils and the stub for this Python."""
    home = triton_home()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = home / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ConfigError(f"no Triton python backend stub for Python {version} in {stub.parent.parent}.")
    root = Path(root or REPO_ROOT / "artifacts" / "triton" / "backends")
    target = root / "python"
    target.mkdir(parents=True, exist_ok=True)
    for source in (
        home / "backends" / "python" / "libtriton_python.so",
        home / "backends" / "python" / "triton_python_backend_utils.py",
        stub,
    ):
        link = target / source.name
        if not link.exists() or link.resolve() != source.resolve():
            if link.exists() or link.is_symlink():
                link.unlink()
            link.symlink_to(source)
    return root


def server_environment() -> dict[str, str]:
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    site = sysconfig.get_paths()["purelib"]
    from intentrec.serving.tritonserver import find_home, stub_site

    home = find_home()
    numpy1 = stub_site(home) if home is not None else None  # the stub's numpy<2 (see serving.tritonserver)
    env["PYTHONPATH"] = ":".join(str(p) for p in (numpy1, IMPORT_ROOT, site, env.get("PYTHONPATH", "")) if p)
    # The stub's embedded interpreter does not read PYTHONPATH; the generated model.py reads this one.
    env["INTENTREC_PYTHONPATH"] = env["PYTHONPATH"]
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind((DEFAULT_ADDRESS, 0))
        return s.getsockname()[1]


class TritonServer:
    """A tritonserver process on `repository`; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        repository: Path,
        http_port: int | None = 8000,
        grpc_port: int | None = 8001,
        metrics_port: int | None = 8002,
        address: str = DEFAULT_ADDRESS,
        log_file: Path | None = None,
        backend_root: Path | None = None,
        startup_timeout_s: float = 120.0,
        log_verbose: int = 0,
        model_control: str = "key",
        control_key_file: Path | None = None,
    ):
        """`model_control`: "key" (the load/unload API answers requests carrying the control key) or
        "off" (no model control: the repository's models load at start and stay)."""
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir():
            raise ConfigError(
                f"--repository {repository} is not a folder; build one with python -m serving.repository."
            )
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.address = address
        self.log_file = Path(log_file) if log_file else None
        self.backend_root = backend_root
        self.startup_timeout_s = startup_timeout_s
        self.log_verbose = log_verbose
        if model_control not in MODEL_CONTROL:
            raise ConfigError(f"model_control={model_control!r}; expected one of {list(MODEL_CONTROL)}.")
        self.model_control = model_control
        self.control_key_file = Path(control_key_file or DEFAULT_CONTROL_KEY_FILE)
        # With model control off nobody is given the key: shared memory, trace and log settings stay closed too.
        self.key = control_key(self.control_key_file, create=True) if model_control == "key" else secrets.token_hex(32)
        self.process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"{self.address if self.address != '0.0.0.0' else DEFAULT_ADDRESS}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.address if self.address != '0.0.0.0' else DEFAULT_ADDRESS}:{self.grpc_port}"

    def control_headers(self, protocol: str = "grpc") -> dict[str, str]:
        """Headers that authorise the restricted APIs (model load/unload) on this server."""
        return control_headers(self.key, protocol)

    def command(self) -> list[str]:
        home = triton_home()
        restricted = ",".join(RESTRICTED_APIS)
        if self.model_control == "key":
            control = ["--model-control-mode=explicit", "--load-model=*"]
        else:
            control = ["--model-control-mode=none"]
        key = self.key
        return [
            str(home / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={backend_directory(self.backend_root)}",
            f"--http-address={self.address}",
            f"--grpc-address={self.address}",
            f"--metrics-address={self.address}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            *control,
            f"--http-restricted-api={restricted}:{CONTROL_HEADER}={key}",
            f"--grpc-restricted-protocol={restricted}:{CONTROL_HEADER}={key}",
            "--strict-readiness=true",
            "--exit-timeout-secs=15",
            f"--log-verbose={self.log_verbose}",
        ]

    def start(self) -> TritonServer:
        for port in (self.http_port, self.grpc_port, self.metrics_port):
            with socket.socket() as s:
                if s.connect_ex((DEFAULT_ADDRESS, port)) == 0:
                    raise ConfigError(
                        f"port {port} on {DEFAULT_ADDRESS} is in use; pick others (--http-port/--grpc-port/--metrics-port)."
                    )
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.process = subprocess.Popen(
            self.command(), env=server_environment(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self._log_tail()
                raise RuntimeError(f"tritonserver exited with status {self.process.returncode} while starting.\n{tail}")
            if self.ready():
                log.info("tritonserver ready: http %s, grpc %s", self.http_url, self.grpc_url)
                return self
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"tritonserver was not ready after {self.startup_timeout_s:.0f} s.\n{self._log_tail()}")

    def _log_tail(self, lines: int = 30) -> str:
        if self.log_file and self.log_file.is_file():
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        return "(no log file; pass log_file= to see the server's output)"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self, timeout_s: float = 30.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


KEY_FLAGS = {
    "model_repository": "--repository",
    "repository": "--repository",
    "address": "--address",
    "http_port": "--http-port",
    "grpc_port": "--grpc-port",
    "metrics_port": "--metrics-port",
    "log_file": "--log-file",
    "model_control": "--model-control",
    "control_key_file": "--control-key-file",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=REPO_ROOT / "artifacts" / "triton" / "repository")
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--log-file", type=Path, default=None)
    parser.add_argument(
        "--model-control",
        default="key",
        choices=MODEL_CONTROL,
        help="key: load/unload only with the control key (publish holds it); off: no model control",
    )
    parser.add_argument(
        "--control-key-file",
        type=Path,
        default=DEFAULT_CONTROL_KEY_FILE,
        help=f"control key file (created when missing; ${CONTROL_KEY_ENV} overrides it)",
    )
    args = parser.parse_args(key_value_flags(sys.argv[1:] if argv is None else argv, KEY_FLAGS))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        server = TritonServer(
            args.repository,
            args.http_port,
            args.grpc_port,
            args.metrics_port,
            args.address,
            args.log_file,
            model_control=args.model_control,
            control_key_file=args.control_key_file,
        )
        stopping = []

        def handle(signum, _frame):
            stopping.append(signum)

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
        server.start()
    except (ConfigError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"serving {args.repository}: HTTP {server.http_url}, gRPC {server.grpc_url} (Ctrl-C stops)", flush=True)
    while not stopping and server.process.poll() is None:
        time.sleep(0.2)
    code = server.stop()
    print(f"tritonserver stopped ({'signal ' + str(stopping[0]) if stopping else 'exited'}, status {code})", flush=True)
    return 0 if stopping else (code or 1)


if __name__ == "__main__":
    sys.exit(main())
