"""Where a base model's weights come from: a built-in toy model, a folder, a Kaggle input, the
Hugging Face cache, or the hub, with one clear error when none of them has it offline."""

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from vicap_utils.families import BUILTIN_MODELS
from vicap_utils.ops.env import cache_dir, find_inputs
from vicap_utils.ops.io import VicapError, read_json
from vicap_utils.toy.model import builtin_model


def resolve_base(base: str) -> str:
    """`model.base` as something `from_pretrained` loads: a built-in toy model's folder, a saved
    model, a Kaggle input holding it, a cached hub snapshot, or the hub id when reachable."""
    if (built := builtin_model(base)) is not None:
        return str(built)
    path = Path(base).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise VicapError(f"{path}: no config.json; expected a saved model folder (model.base);"
                             " set model.base to a folder save_pretrained wrote, or to a hub id")
        return str(path)
    tail = base.rstrip("/").split("/")[-1]
    for config in find_inputs([f"**/{tail}/config.json", f"**/{tail}/**/config.json"]):
        return str(config.parent)
    if cached := hub_cache(base):
        return cached
    if not hub_reachable():
        raise VicapError(
            f"model {base!r}: not a local folder, not under /kaggle/input, not in the Hugging "
            "Face cache, and the hub is unreachable; attach it as a Kaggle input or set "
            "model.base=/path/to/saved/model")
    return base


def hub_cache(repo_id: str) -> str | None:
    """The locally cached snapshot of a hub model, if an earlier run downloaded it."""
    from huggingface_hub import snapshot_download  # slow to import; only loading needs it

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure just means "not cached"
        return None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host accepts a connection (fails fast offline, no retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    from huggingface_hub import constants  # slow to import; only loading needs it

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def model_type(base: str) -> str:
    """The `model_type` in a base model's config.json ("" when it cannot be read here); a
    built-in base's without building it (a minute of pre-training for `mini`)."""
    if base in BUILTIN_MODELS:
        cache_dir("mini-base")  # where it will be built: a bad VICAP_CACHE stops us here
        return BUILTIN_MODELS[base]
    config = Path(resolve_base(base)) / "config.json"
    return str(read_json(config, "model config").get("model_type", "")) if config.is_file() else ""
