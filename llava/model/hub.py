"""Model names as upstream takes them: a local path, or a Hugging Face hub id resolved into a local directory.

Every flag upstream passes to ``from_pretrained`` accepts a hub id (``--model_name_or_path lmsys/vicuna-7b-v1.5``,
``--vision_tower openai/clip-vit-large-patch14-336``, ``--model-path liuhaotian/llava-v1.5-7b``), and
``--pretrain_mm_mlp_adapter`` accepts ``<repo id>/<file>`` as well as a local file. This module resolves such a name
once, at the edge, through ``huggingface_hub`` (so the HF cache, ``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``,
``HF_TOKEN``, ``cache_dir`` and revisions all behave as everywhere else in the HF stack); everything after it works
on a local directory and decides what it holds from the files in it.

A local path always wins over a hub id of the same spelling, as in transformers.
"""

from __future__ import annotations

import logging
import os
from os import PathLike
from pathlib import Path

logger = logging.getLogger(__name__)

# Weights of other frameworks that real repos carry next to PyTorch's (openai/clip-vit-large-patch14-336 has a TF
# and a Flax copy, over 1.5 GB each); nothing here reads them, so resolving a repo never downloads them.
IGNORED_PATTERNS = ("*.h5", "*.msgpack", "*.ot", "*.onnx", "*.onnx_data", "*.tflite", "*.gguf", "*.mlmodel")
# How a name that is not a local path reads as a hub id: `owner/name` (a repo) or `owner/name/path/in/repo` (a file).
REPO_ID_PARTS = 2
# Spellings that are paths, never hub ids: `./x/y`, `../x/y`, `/abs`, `~/x`.
PATH_PREFIXES = (".", "/", "~")


class HubResolutionError(FileNotFoundError):
    """A name is neither a local path nor something the Hugging Face hub (or its local cache) can provide."""


def is_hub_id(name: str | PathLike[str]) -> bool:
    """``owner/name`` that is not a path spelling (``./``, ``/``, ``~``) and that the hub accepts as a repo id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    text = os.fspath(name)
    if text.startswith(PATH_PREFIXES) or text.count("/") != REPO_ID_PARTS - 1:
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def resolve_model_dir(
    name_or_path: str | PathLike[str],
    *,
    cache_dir: str | PathLike[str] | None = None,
    revision: str | None = None,
    what: str = "model",
) -> Path:
    """A local directory holding ``name_or_path``: the directory itself, or the hub repo's cached snapshot.

    Online, a repo not yet in the cache is downloaded (PyTorch weights, configs, tokenizer; no TF/Flax/ONNX copies).

    Args:
        what: how the caller's user names this input (e.g. ``"--model-base"``), used in error messages.

    Raises:
        HubResolutionError: neither a local directory nor a resolvable hub repo; the message says what to do.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    text = os.fspath(name_or_path)
    if path.exists():
        raise HubResolutionError(f"{what} {text!r} is a file; pass the directory that holds the model")
    if not is_hub_id(text):
        raise HubResolutionError(
            f"{what} {text!r} does not exist: it is not a local directory, and not a Hugging Face hub id "
            "(owner/name). Pass the path of a model directory, or a hub id such as lmsys/vicuna-7b-v1.5"
        )
    from huggingface_hub import snapshot_download

    try:
        resolved = snapshot_download(
            text, revision=revision, cache_dir=cache_dir, ignore_patterns=list(IGNORED_PATTERNS)
        )
    except Exception as error:  # noqa: BLE001  (huggingface_hub raises many kinds; each gets the same advice)
        if not _is_hub_error(error):
            raise
        raise HubResolutionError(_unresolved_message(what, text, text, None, revision, cache_dir, error)) from error
    logger.info("%s %s resolved to %s", what, text, resolved)
    return Path(resolved)


def resolve_file(
    path_or_id: str | PathLike[str],
    *,
    cache_dir: str | PathLike[str] | None = None,
    revision: str | None = None,
    what: str = "file",
) -> Path:
    """A local file for ``path_or_id``: the file itself, or ``<owner>/<name>/<file in repo>`` from the hub.

    ``liuhaotian/llava-v1.5-mlp2x-336px-pretrain-vicuna-7b-v1.5/mm_projector.bin`` names ``mm_projector.bin`` in the
    repo ``liuhaotian/llava-v1.5-mlp2x-336px-pretrain-vicuna-7b-v1.5``.

    Raises:
        HubResolutionError: neither a local file nor a file the hub (or its cache) has; the message says what to do.
    """
    path = Path(path_or_id).expanduser()
    if path.is_file():
        return path
    text = os.fspath(path_or_id)
    parts = text.split("/")
    repo_id, filename = "/".join(parts[:REPO_ID_PARTS]), "/".join(parts[REPO_ID_PARTS:])
    if path.is_dir() or not filename or not is_hub_id(repo_id):
        raise HubResolutionError(
            f"{what} {text!r} does not exist: it is not a local file, and not a file on the Hugging Face hub "
            "(owner/name/file). Pass the path of the file, or e.g. "
            "liuhaotian/llava-v1.5-mlp2x-336px-pretrain-vicuna-7b-v1.5/mm_projector.bin"
        )
    from huggingface_hub import hf_hub_download

    try:
        resolved = hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir)
    except Exception as error:  # noqa: BLE001
        if not _is_hub_error(error):
            raise
        raise HubResolutionError(
            _unresolved_message(what, text, repo_id, filename, revision, cache_dir, error)
        ) from error
    logger.info("%s %s resolved to %s", what, text, resolved)
    return Path(resolved)


def _is_hub_error(error: Exception) -> bool:
    from huggingface_hub import errors

    kinds = (errors.HfHubHTTPError, errors.EntryNotFoundError, errors.HFValidationError, errors.OfflineModeIsEnabled)
    return isinstance(error, kinds + (OSError, ValueError))


def _unresolved_message(
    what: str,
    text: str,
    repo_id: str,
    filename: str | None,
    revision: str | None,
    cache_dir: str | PathLike[str] | None,
    error: Exception,
) -> str:
    from huggingface_hub import constants, errors

    target = f"file {filename!r} of the Hugging Face repo {repo_id!r}" if filename else f"Hugging Face repo {repo_id!r}"
    where = f"revision {revision or 'main'}, cache {cache_dir or constants.HF_HUB_CACHE}"
    offline = constants.HF_HUB_OFFLINE
    if isinstance(error, errors.GatedRepoError):
        reason = "the repo is gated: accept its terms on huggingface.co and log in (`hf auth login` or HF_TOKEN)"
    elif isinstance(error, errors.RepositoryNotFoundError):
        reason = "the repo does not exist, or it is private and you are not logged in (`hf auth login` or HF_TOKEN)"
    elif isinstance(error, errors.RevisionNotFoundError):
        reason = f"the repo has no revision {revision!r}"
    elif offline:
        reason = "it is not in the local cache and HF_HUB_OFFLINE=1 forbids downloading it"
    else:
        reason = f"{type(error).__name__}: {error}"
    download = f"hf download {repo_id}" + (f" {filename}" if filename else "")
    return (
        f"{what} {text!r}: no local path of that name, and the {target} ({where}) cannot be used: {reason}. "
        f"Fix: log in if the repo is private or gated (`hf auth login`), download it while online "
        f"(`{download}`{', then keep HF_HUB_OFFLINE=1' if offline else ''}; set HF_HOME or --cache_dir to the "
        "cache it is in), or pass a local path instead"
    )
