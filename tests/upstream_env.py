"""The reference environment: upstream LLaVA's own code (PyPI ``llava-torch``) in its own pinned stack.

Upstream's package is also named ``llava``, so it lives in a separate venv (``.venv-upstream/`` in the repository
root, or ``$LLAVA_UPSTREAM_VENV``) and is only ever driven through subprocesses: a test writes a JSON request,
runs one of the scripts in ``tests/upstream_side/`` with that venv's python, and reads the JSON answer back.

The venv is built once from the registry and reused while its stamp file lists the same pins:
``make upstream-env`` builds it, and so does the ``upstream`` pytest fixture when it is missing (CI starts from a
clean clone). Run ``python tests/upstream_env.py`` to build it by hand.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
SIDE_SCRIPTS = Path(__file__).resolve().parent / "upstream_side"

# torch goes in first, alone: this exact spec is the CPU wheel; any other spec resolves to a multi-GB CUDA build.
TORCH_SPEC = "torch==2.13.0"
UPSTREAM_PACKAGE = "llava-torch==1.2.2.post1"  # installed --no-deps: its own metadata pins torch 2.0.1
# Upstream's era (its train stack at the 1.2.2 line), plus what its imports need. deepspeed: upstream's saving imports
# it even without ZeRO; its pin 0.12.6 does not import under torch 2.13, 0.19.8 does (and is what our stack uses).
UPSTREAM_PINS = (
    "transformers==4.37.2",
    "tokenizers==0.15.1",
    "sentencepiece==0.1.99",
    "accelerate==0.21.0",
    "peft==0.10.0",
    "numpy<2",
    "einops==0.6.1",
    "einops-exts==0.0.4",
    "shortuuid==1.0.13",
    "protobuf==4.25.8",
    "safetensors==0.4.5",
    "huggingface-hub==0.24.7",
    "pillow==10.4.0",
    "deepspeed==0.19.8",
)
STAMP_NAME = ".llava-upstream-pins"


def venv_dir() -> Path:
    return Path(os.environ.get("LLAVA_UPSTREAM_VENV", REPO_ROOT / ".venv-upstream"))


def stamp_text() -> str:
    return "\n".join([TORCH_SPEC, UPSTREAM_PACKAGE + " --no-deps", *UPSTREAM_PINS]) + "\n"


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def is_built(venv: Path | None = None) -> bool:
    venv = venv or venv_dir()
    stamp = venv / STAMP_NAME
    return _python(venv).exists() and stamp.is_file() and stamp.read_text() == stamp_text()


def build(venv: Path | None = None, *, python: str | None = None) -> float:
    """Create the venv (replacing a stale one) and install upstream's stack; returns the seconds it took.

    Safe to call from several processes: one builds under a lock file, the others wait and reuse its result.
    """
    venv = venv or venv_dir()
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built(venv):
            return 0.0
        start = time.monotonic()
        logger.info("building upstream's reference environment in %s (about a minute with a warm pip cache)", venv)
        if venv.exists():
            shutil.rmtree(venv)
        base = python or _base_python()
        _check_call([base, "-m", "venv", str(venv)])
        pip = [str(_python(venv)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        env = {**os.environ, "DS_BUILD_OPS": "0", "PIP_NO_INPUT": "1"}
        _check_call([*pip, TORCH_SPEC], env=env)
        _check_call([*pip, "--no-deps", UPSTREAM_PACKAGE], env=env)
        _check_call([*pip, *UPSTREAM_PINS], env=env)
        (venv / STAMP_NAME).write_text(stamp_text())
        seconds = time.monotonic() - start
        logger.info("built upstream's reference environment in %s in %.0f s", venv, seconds)
        return seconds


def _base_python() -> str:
    # The interpreter our own venv was made from (same minor version, which upstream's pins have wheels for).
    return getattr(sys, "_base_executable", None) or sys.executable


def _check_call(command: list[str], env: dict | None = None) -> None:
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(
            f"building upstream's reference environment failed: {' '.join(command)} exited {result.returncode}\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )


class UpstreamError(RuntimeError):
    """A script in the reference environment failed; the message carries its output."""


@dataclass(frozen=True)
class UpstreamEnv:
    """A built reference environment; :meth:`run` executes one ``tests/upstream_side`` script in it."""

    venv: Path

    @property
    def python(self) -> Path:
        return _python(self.venv)

    def run(self, script: str, request: dict, *, timeout: float = 900, cwd: Path | None = None) -> dict:
        """Run ``upstream_side/<script>.py`` with ``request`` as its JSON input; return its JSON answer.

        The child gets a clean ``PYTHONPATH`` and runs outside this repository, so the only ``llava`` it can
        import is upstream's (the scripts check that too).
        """
        with tempfile.TemporaryDirectory(prefix="llava-upstream-") as tmp:
            request_path, answer_path = Path(tmp) / "request.json", Path(tmp) / "answer.json"
            request_path.write_text(json.dumps(request))
            env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
            env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", DS_BUILD_OPS="0")
            env["PATH"] = os.pathsep.join([str(self.venv / "bin"), os.environ.get("PATH", "")])
            command = [str(self.python), str(SIDE_SCRIPTS / f"{script}.py"), str(request_path), str(answer_path)]
            result = subprocess.run(command, env=env, cwd=cwd or tmp, capture_output=True, text=True, timeout=timeout)
            if result.returncode or not answer_path.exists():
                raise UpstreamError(
                    f"upstream_side/{script}.py exited {result.returncode}\n--- stdout\n{result.stdout[-6000:]}\n"
                    f"--- stderr\n{result.stderr[-6000:]}"
                )
            return json.loads(answer_path.read_text())


def ensure() -> UpstreamEnv:
    """The reference environment, built first if it is missing or its pins changed."""
    venv = venv_dir()
    if not is_built(venv):
        build(venv)
    return UpstreamEnv(venv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    target = venv_dir()
    if is_built(target):
        print(f"{target} is up to date")
    else:
        print(f"built {target} in {build(target):.0f} s")
