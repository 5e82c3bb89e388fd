"""Shared fixtures: the tiny offline models and data built by `llava.testing` (once per test session)."""

from __future__ import annotations

import os
import sys

import pytest

# Keep the 2-core CI machine responsive when several torch processes run at once.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# This environment's tools first, as in `llava.launch`: DeepSpeed JIT-builds its CPU op with the first `ninja` on
# PATH, and a machine-wide ninja of another version would rebuild it (about 25 s) whenever the two alternate.
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])


def pytest_sessionstart(session) -> None:
    """Start from a clean machine: segments and build locks that earlier, killed DeepSpeed jobs left behind."""
    from llava.distributed import hygiene

    hygiene.remove_orphaned_shm_segments()
    hygiene.remove_stale_build_locks()


def pytest_report_header(config) -> list[str]:
    """What a hung or failed distributed test depends on, printed at the top of every run (CI logs included)."""
    import shutil

    from llava.distributed import hygiene
    from llava.utils import cpu_description

    model, flags = cpu_description()
    wanted = ("avx2", "avx512f", "avx512bw", "avx512_bf16", "amx_bf16")
    shm = hygiene.SHM_DIR
    shm_line = "absent"
    if shm.is_dir():
        usage = shutil.disk_usage(shm)
        leftovers = len(hygiene.shm_segments())
        shm_line = f"{usage.free / 2**30:.1f} of {usage.total / 2**30:.1f} GiB free, {leftovers} DeepSpeed segments"
    locks = sorted(str(path) for path in hygiene.torch_extensions_root().glob("*/*/lock"))
    return [
        f"cpu: {model}, {os.cpu_count()} cores, {' '.join(flag for flag in wanted if flag in flags) or 'no avx2'}",
        f"/dev/shm: {shm_line}",
        f"torch extension build locks: {', '.join(locks) or 'none'}",
    ]


@pytest.fixture(autouse=True)
def _restore_default_conversation():
    """`train()` makes its template `default_conversation`, as upstream's does (also inside module-scoped fixtures,
    which run before this one): every test starts and ends with the package's own default."""
    from llava import conversation

    conversation.default_conversation = conversation.conv_vicuna_v1
    yield
    conversation.default_conversation = conversation.conv_vicuna_v1


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Paths of the tiny CLIP tower, Vicuna-like LM, LLaVA checkpoint, pretrained projector and dataset."""
    from llava.testing import build_all

    return build_all(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def tiny_tokenizer(tiny):
    """A fresh tokenizer per test (tests may add tokens or change padding)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny.llm)


@pytest.fixture
def tiny_image_processor(tiny):
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil.from_pretrained(tiny.vision_tower)


@pytest.fixture(scope="session")
def upstream():
    """Upstream LLaVA's own code in its pinned stack (a separate venv, built on first use; see upstream_env.py)."""
    import upstream_env

    return upstream_env.ensure()


@pytest.fixture(scope="session")
def hub_cache(tiny, tmp_path_factory):
    """HF_HOME of an offline Hugging Face cache holding the tiny models under the released repo ids
    (`liuhaotian/llava-v1.5-7b`, `lmsys/vicuna-7b-v1.5`, `openai/clip-vit-large-patch14-336`, ...)."""
    from llava.testing import build_hub_cache

    hf_home = tmp_path_factory.mktemp("hf_home")
    build_hub_cache(hf_home, tiny)
    return hf_home


@pytest.fixture
def hub(hub_cache, monkeypatch):
    """This process (and the subprocesses it starts) reads `hub_cache`, offline; returns its HF_HOME."""
    from hub_cache import use_hub_cache

    use_hub_cache(monkeypatch, hub_cache)
    return hub_cache
