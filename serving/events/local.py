"""Local processes of the platform, for the demo, tests and benchmarks: redis-server, the collector, the web API.

    with RedisServer(tmp_dir) as redis:            # real redis-server, AOF fsynced on every write
        store = open_store(redis.url)
    with Collector("sqlite:///events.db") as collector:
        httpx.post(collector.url + "/v1/events", json=...)

Both bind 127.0.0.1 on a free port, wait until they answer and stop on exit. `Collector.kill()`
sends SIGKILL (for the durability test).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from intentrec.errors import ConfigError
from intentrec.paths import IMPORT_ROOT
from intentrec.serving.server import free_port


def _terminate(process: subprocess.Popen | None, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within `timeout` seconds."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class RedisServer:
    """A redis-server with `appendonly yes`, `appendfsync always`, data in `directory`."""

    def __init__(self, directory: str | Path, port: int | None = None, durable: bool = True):
        self.directory = Path(directory)
        self.port = port or free_port()
        self.durable = durable
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ConfigError(
                "redis-server is not installed; install Debian's package (apt-get install redis-server), "
                "which ./scripts/test.sh does when it runs as root"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        durability = ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                *durability,
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (
                        (self.directory / "redis.log").read_text()[-2000:]
                        if (self.directory / "redis.log").exists()
                        else ""
                    )
                    self.stop()
                    raise RuntimeError(f"redis-server did not start on 127.0.0.1:{self.port}:\n{log}") from None
                time.sleep(0.05)
        client.close()
        return self

    def stop(self) -> None:
        _terminate(self.process)
        self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Service:
    """`python -m <module> serve-like arguments port=<port>` as a child process on a free loopback port, ready when
    its `/healthz` answers 200."""

    module = ""
    name = ""

    def __init__(self, args: tuple[str, ...], port: int | None = None, log_file: str | Path | None = None):
        self.port = port or free_port()
        self.log_file = Path(log_file) if log_file else None
        self.args = tuple(args)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30):
        log = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        env = {**os.environ, "PYTHONPATH": str(IMPORT_ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args, f"port={self.port}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=IMPORT_ROOT,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                code = self.process.poll()
                self.stop()
                tail = self.log_file.read_text()[-2000:] if self.log_file and self.log_file.exists() else ""
                raise RuntimeError(f"{self.name} did not become ready (exit code {code}):\n{tail}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers run (what a crash or an OOM kill does)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        _terminate(self.process)
        self.process = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Collector(Service):
    """`python -m serving.events serve` as a child process on a free loopback port."""

    module, name = "intentrec.serving.events", "collector"

    def __init__(
        self, store: str, port: int | None = None, log_file: str | Path | None = None, extra_args: tuple[str, ...] = ()
    ):
        super().__init__(("serve", f"store={store}", *extra_args), port, log_file)
        self.store = store


class WebApi(Service):
    """`python -m serving.web` (the JSON API and playground over a Triton server) on a free loopback port."""

    module, name = "intentrec.serving.web", "web API"

    def __init__(self, triton: str, port: int | None = None, log_file: str | Path | None = None, **options: str):
        super().__init__((f"triton={triton}", *(f"{k}={v}" for k, v in options.items())), port, log_file)
