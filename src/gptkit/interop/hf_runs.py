"""Hugging Face folders and hub ids used as runs: `gptkit sample gpt2`, `gptkit serve ./hf`.

Every command's run argument (and `--init-from`, and `gptkit.load_run`) goes through
`as_run`: a gptkit run is returned as it is; a GPT-2 folder in Hugging Face layout, or a hub
id found in the local Hugging Face cache (downloaded only when downloads are on), is imported
once by `gptkit.interop.hf.import_hf` into a cache of imported runs and that run is used.

The cache is keyed by content (the hash of the folder's config, tokenizer and weight files),
not by path: the same files give the same run however they are reached, and changed files
give a new import instead of stale weights. An import is built in a private temporary
folder and renamed into place, so processes importing the same folder at once never see or
leave a half-written run; the loser of the race uses the winner's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import uuid
from pathlib import Path

from gptkit.errors import GptkitError
from gptkit.files import sha256
from gptkit.offline import hub_offline
from gptkit.rundir import CONFIG_FILE

# Bump when import_hf writes runs differently, so older cached imports are not reused.
IMPORT_FORMAT = "gptkit-hf-import-1"
# The files an import reads; their contents are the cache key.
CONTENT_FILES = ("config.json", "tokenizer.json", "vocab.json", "merges.txt",
                 "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                 "model.safetensors", "pytorch_model.bin")


def cache_root() -> Path:
    """Where imported runs live: $GPTKIT_CACHE/imports, else ~/.cache/gptkit/imports."""
    chosen = os.environ.get("GPTKIT_CACHE")
    root = Path(chosen).expanduser() if chosen else Path.home() / ".cache" / "gptkit"
    return root / "imports"


def content_key(folder: Path) -> str:
    """A hash of the files an import reads (names and contents), and of the import format."""
    digest = hashlib.sha256(IMPORT_FORMAT.encode())
    for name in CONTENT_FILES:
        file = folder / name
        if file.is_file():
            digest.update(f"\0{name}\0{sha256(file)}".encode())
    return digest.hexdigest()[:32]


def as_run(source: str | Path) -> Path:
    """`source` as a gptkit run folder, importing a Hugging Face folder or hub id on first use.

    A path that is neither (a missing run, say) is returned as it is, for the loader's own
    error; a folder that is neither a run nor a Hugging Face folder is an error here.
    """
    path = Path(source).expanduser()
    if (path / CONFIG_FILE).is_file():
        return path
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise GptkitError(
                f"{path} is neither a gptkit run ({CONFIG_FILE} is missing) nor a Hugging Face "
                "GPT-2 folder (no config.json); pass a run directory (`gptkit train` makes "
                "one) or a folder written by transformers' save_pretrained"
            )
        return _cached_import(path, f"HF folder {path}")
    if path.exists() or not _looks_like_hub_id(str(source)):
        return path
    return _cached_import(_hub_folder(str(source)), f"Hugging Face hub id {source}")


def _looks_like_hub_id(source: str) -> bool:
    """`gpt2` or `org/name`, not a path into an existing folder (`runs/typo` is a run)."""
    from gptkit.interop.hf import HUB_ID

    first = Path(source).parts[0] if Path(source).parts else ""
    return bool(HUB_ID.match(source)) and not (source.count("/") and Path(first).is_dir())


def _hub_folder(repo_id: str) -> Path:
    """The cached snapshot of a hub id; downloaded only when downloads are on."""
    from gptkit.interop.hf import HUB_FILES, hf_folder

    missing = (f"run directory {repo_id} does not exist, and the hub id {repo_id!r} is not in "
               "the local Hugging Face cache")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise GptkitError(f"{missing} (reading it needs huggingface_hub: pip install "
                          "'gptkit[hf]'); check the path") from None
    try:
        from huggingface_hub import constants

        # the cache folder named at call time (older huggingface_hub copies it at import)
        folder = Path(snapshot_download(repo_id, local_files_only=True,
                                        cache_dir=constants.HF_HUB_CACHE,
                                        allow_patterns=[*HUB_FILES, "pytorch_model.bin"]))
        if (folder / "config.json").is_file():
            return folder
    except Exception:  # huggingface_hub's "not in the cache" errors vary by version
        pass
    if hub_offline():
        raise GptkitError(
            f"{missing} and downloads are off (GPTKIT_OFFLINE or HF_HUB_OFFLINE); check the "
            f"path, or download it where there is a network (`hf download {repo_id}`) into "
            "this machine's cache (HF_HOME) or pass its folder"
        )
    return hf_folder(repo_id)


def _check_gpt2(folder: Path, what: str) -> None:
    """config.json names a GPT-2 that gptkit can run, or one line saying what it is."""
    from gptkit.interop.hf import model_config_from_hf

    config_file = folder / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
        model_config_from_hf(config)
    except (OSError, ValueError, TypeError) as exc:
        raise GptkitError(f"{what} cannot be used as a run: {config_file} is not a valid "
                          f"Hugging Face config ({exc})") from exc
    except GptkitError as exc:
        raise GptkitError(f"{what} cannot be used as a run: {exc}") from exc


def _cached_import(folder: Path, what: str) -> Path:
    """The run imported from `folder`, from the cache or imported now (atomically)."""
    from gptkit.interop.hf import import_hf

    root = cache_root()
    target = root / content_key(folder)
    if (target / CONFIG_FILE).is_file():
        return target
    _check_gpt2(folder, what)  # before announcing an import that cannot happen
    print(f"importing {what} into cache {target} (first use)", file=sys.stderr)
    root.mkdir(parents=True, exist_ok=True)
    scratch = root / f".tmp-{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        built = import_hf(str(folder), scratch / target.name)
        try:
            os.rename(built, target)
        except OSError:
            if not (target / CONFIG_FILE).is_file():  # not another process's finished import
                raise
    except GptkitError as exc:
        raise GptkitError(f"{what} cannot be used as a run: {exc}") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
