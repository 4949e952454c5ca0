"""The real `tritonserver` binary, taken from the nvidia-pytriton wheel without its Python requirements.

    python -m intentrec.serving.tritonserver               # fetch it once into <venv>/tools/tritonserver
    python -m intentrec.serving.tritonserver --wheel nvidia_pytriton-0.7.0-....whl   # from a wheel on disk

intentrec uses only the server that wheel carries (binary, shared libraries, python backend and its
stubs), not pytriton's Python API, whose requirements (numpy<2) would pin the project's own. So the
wheel is downloaded with `pip download --no-deps` and only `pytriton/tritonserver/` and
`nvidia_pytriton.libs/` are extracted, in the wheel's layout (the binary finds its libraries through a
relative RPATH). The python backend's stub of that release is built against numpy 1's ABI (a BYTES
tensor arrives corrupted under numpy 2), so numpy<2, with the releases of pandas, pyarrow and scipy that run
on it, is installed beside it (`<tools>/python`) and put first on the stub's path only: the project
itself runs on numpy 2 and current pyarrow and scipy; the models in Triton's python backend run on
numpy 1.26 with the same other packages. `./scripts/test.sh` and `./scripts/demo.sh` run
this when the server is missing.
`INTENTREC_TRITON_HOME=<folder with bin/tritonserver>` points at another installation.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "nvidia-pytriton==0.7.0"
TOOLS = Path(sys.prefix) / "tools" / "tritonserver"
MEMBERS = ("pytriton/tritonserver/", "nvidia_pytriton.libs/")
# numpy 1 and the newest releases of the compiled packages that still run on it.
STUB_PACKAGES = ("numpy<2", "pandas<3.1", "pyarrow<23", "scipy<1.16")


def stub_site(home: Path) -> Path | None:
    """The folder to put first on the python backend stub's path (STUB_PACKAGES), when `home` has one."""
    site = home.parent.parent / "python"
    return site if (site / "numpy").is_dir() else None


def find_home() -> Path | None:
    """The folder holding bin/tritonserver: $INTENTREC_TRITON_HOME, <venv>/tools/tritonserver, or an
    installed nvidia-pytriton package; None when there is none."""
    candidates = []
    if os.environ.get("INTENTREC_TRITON_HOME"):
        candidates.append(Path(os.environ["INTENTREC_TRITON_HOME"]))
    candidates.append(TOOLS / "pytriton" / "tritonserver")
    try:
        import pytriton

        candidates.append(Path(pytriton.__file__).parent / "tritonserver")
    except ImportError:
        pass
    return next((c for c in candidates if (c / "bin" / "tritonserver").is_file()), None)


def install(target: Path = TOOLS, wheel: Path | None = None) -> Path:
    """Extract the server of the nvidia-pytriton wheel (downloaded without dependencies unless given) into
    `target`; returns the folder holding bin/tritonserver."""
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            done = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp, WHEEL],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise SystemExit(f"error: pip download {WHEEL} failed: {done.stderr.strip()[-600:]}")
            wheel = next(Path(tmp).glob("nvidia_pytriton-*.whl"))
        staging = Path(tmp) / "staging"
        with zipfile.ZipFile(wheel) as archive:
            for info in archive.infolist():
                if info.filename.startswith(MEMBERS) and not info.is_dir():
                    path = archive.extract(info, staging)
                    mode = (info.external_attr >> 16) & 0o777
                    os.chmod(path, mode or 0o644)
        if not (staging / "pytriton" / "tritonserver" / "bin" / "tritonserver").is_file():
            raise SystemExit(f"error: {wheel} holds no pytriton/tritonserver/bin/tritonserver.")
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--no-deps",
                "-q",
                "--target",
                str(staging / "python"),
                *STUB_PACKAGES,
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(
                f"error: pip install {' '.join(STUB_PACKAGES)} for the python backend failed: {done.stderr.strip()[-600:]}"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(staging), target)
    return target / "pytriton" / "tritonserver"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, default=None, help="a downloaded nvidia-pytriton wheel")
    parser.add_argument("--force", action="store_true", help="extract again even when one is present")
    args = parser.parse_args(argv)
    home = find_home()
    if home is None or args.force:
        home = install(wheel=args.wheel)
    print(home)
    return 0


if __name__ == "__main__":
    sys.exit(main())
