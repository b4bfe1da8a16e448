"""Where am I: Kaggle or not, which GPU, where the inputs are, where outputs go."""
from __future__ import annotations

import glob
import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

KAGGLE_INPUT = Path("/kaggle/input")
KAGGLE_WORKING = Path("/kaggle/working")

# Globs (under /kaggle/input) that find each real data set, whatever the mount layout:
# /kaggle/input/<slug>/… and /kaggle/input/datasets/<owner>/<slug>/… both match.
DATA_GLOBS = {
    "uitviic-blip": ["**/uitviic_captions_train*.json", "**/*uit*viic*/**/*train*.json"],
    "flickr8k-blip2": ["**/Flickr8k.token.txt", "**/flickr8k*/**/captions.txt"],
}


def is_kaggle() -> bool:
    """True inside a Kaggle kernel (its environment variable, or its working folder)."""
    return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE")) or KAGGLE_WORKING.is_dir()


def output_dir(sub: str = "", create: bool = True) -> Path:
    """VICAP_OUTPUT when set, else /kaggle/working on Kaggle, else ./outputs (created)."""
    if os.environ.get("VICAP_OUTPUT"):
        base = Path(os.environ["VICAP_OUTPUT"])
    elif is_kaggle():
        base = KAGGLE_WORKING
    else:
        base = Path("outputs")
    path = base / sub if sub else base
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(sub: str = "") -> Path:
    """VICAP_CACHE, else the user cache folder (~/.cache/vicap); for the mini base model."""
    base = Path(os.environ.get("VICAP_CACHE") or Path.home() / ".cache" / "vicap")
    path = base / sub if sub else base
    path.mkdir(parents=True, exist_ok=True)
    return path


def find_inputs(patterns: list[str], root: Path | None = None) -> list[Path]:
    """Files under `root` (default /kaggle/input) matching any glob, shortest path first."""
    root = KAGGLE_INPUT if root is None else root
    if not root.is_dir():
        return []
    hits = {Path(p) for pat in patterns for p in glob.glob(str(root / pat), recursive=True)}
    return sorted(hits, key=lambda p: (len(p.parts), str(p)))


@dataclass
class GpuInfo:
    """What the accelerator can do; `name` is "cpu" when there is none."""

    name: str = "cpu"
    count: int = 0
    capability: tuple[int, int] = (0, 0)
    memory_gb: float = 0.0
    fp16: bool = False
    bf16: bool = False
    int8: bool = False  # bitsandbytes 8-bit needs compute capability >= 7.5


def gpu_info() -> GpuInfo:
    """Describe the first CUDA device (all zeros on a CPU machine)."""
    import torch

    if not torch.cuda.is_available():
        return GpuInfo()
    props = torch.cuda.get_device_properties(0)
    cap = (props.major, props.minor)
    return GpuInfo(
        name=props.name,
        count=torch.cuda.device_count(),
        capability=cap,
        memory_gb=round(props.total_memory / 2**30, 1),
        fp16=cap >= (6, 0),
        bf16=torch.cuda.is_bf16_supported(),
        int8=cap >= (7, 5),
    )


def auto_profile() -> str:
    """On Kaggle with a GPU and the data attached, the real profile; anywhere else `mini`."""
    if os.environ.get("VICAP_PROFILE") and os.environ["VICAP_PROFILE"] != "auto":
        return os.environ["VICAP_PROFILE"]
    if is_kaggle() and gpu_info().count:
        for name, patterns in DATA_GLOBS.items():
            if find_inputs(patterns):
                return name
    return "mini"


def versions() -> dict[str, str]:
    """Versions of Python and the libraries results depend on."""
    out = {"python": platform.python_version()}
    for mod in ("torch", "transformers", "peft", "accelerate", "PIL", "numpy", "pandas"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = "not installed"
    return out


def describe() -> dict[str, object]:
    """Everything the top of a notebook prints: versions, hardware, Kaggle, folders."""
    return {
        "versions": versions(),
        "platform": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores",
        "kaggle": is_kaggle(),
        "gpu": asdict(gpu_info()),
        "output_dir": str(output_dir(create=False)),
        "profile_auto": auto_profile(),
    }


def print_environment() -> dict[str, object]:
    """Print the environment summary (one line per fact) and return it."""
    info = describe()
    for key, value in info["versions"].items():
        print(f"{key:>13}: {value}")
    gpu = info["gpu"]
    hw = "no GPU (CPU only)" if not gpu["count"] else (
        f"{gpu['count']}× {gpu['name']}, compute {gpu['capability'][0]}.{gpu['capability'][1]}, "
        f"{gpu['memory_gb']} GB, fp16={gpu['fp16']} bf16={gpu['bf16']} int8={gpu['int8']}"
    )
    print(f"{'platform':>13}: {info['platform']}")
    print(f"{'accelerator':>13}: {hw}")
    print(f"{'kaggle':>13}: {info['kaggle']}")
    print(f"{'output dir':>13}: {info['output_dir']}")
    print(f"{'auto profile':>13}: {info['profile_auto']}")
    return info


def cli_env(args: object) -> int:
    """`vicap env`: print the environment summary."""
    print_environment()
    sys.stdout.flush()
    return 0
