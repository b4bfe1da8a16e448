"""Where am I: Kaggle or not, which GPU, where the inputs are, where outputs go.
Kaggle paths derive from `VICAP_KAGGLE_ROOT` (default /kaggle), so tests fake each mount layout."""

import glob
import os
import platform
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vicap_utils.ops.hardware import detect
from vicap_utils.ops.io import VicapError

# Globs under the Kaggle input root, whatever the mount layout: each split's file (UIT-ViIC's
# uitvi(i)c_captions_{split}2017(_v2).json, Flickr8k's official image lists), and the files
# that find each data set (Flickr8k's captions as Flickr8k.token.txt or captions.txt).
FLICKR_SPLIT_LISTS = {s: f"Flickr_8k.{name}Images.txt"  # "dev" is our "val"
                      for s, name in (("train", "train"), ("val", "dev"), ("test", "test"))}
SPLIT_GLOBS = {
    "uitviic-blip": {s: f"**/uitvi*c_captions_{s}*.json" for s in ("train", "val", "test")},
    "flickr8k-blip2": {s: f"**/{name}" for s, name in FLICKR_SPLIT_LISTS.items()},
}
DATA_GLOBS = {"uitviic-blip": [SPLIT_GLOBS["uitviic-blip"]["train"]],
              "flickr8k-blip2": ["**/Flickr8k.token.txt", "**/flickr8k*/**/captions.txt"]}
# Folder names that usually hold a data set's images, best first.
IMAGE_DIR_GLOBS = ["train2017", "val2017", "test2017", "*train2017*", "*val2017*", "*test2017*",
                   "images", "Images", "Flicker8k_Dataset", "Flickr8k_Dataset"]


def kaggle_root() -> Path:
    """`VICAP_KAGGLE_ROOT`, else /kaggle."""
    return Path(os.environ.get("VICAP_KAGGLE_ROOT") or "/kaggle")


def kaggle_input() -> Path:
    """Where Kaggle mounts attached data sets, models and previous outputs (read-only)."""
    return kaggle_root() / "input"


def is_kaggle() -> bool:
    """True inside a Kaggle kernel (its environment variable, or its working folder)."""
    return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE")) or (kaggle_root() / "working").is_dir()


def output_dir(sub: str = "", create: bool = True) -> Path:
    """VICAP_OUTPUT when set, else the Kaggle working folder on Kaggle, else ./outputs."""
    default = kaggle_root() / "working" if is_kaggle() else Path("outputs")
    path = Path(os.environ.get("VICAP_OUTPUT") or default) / sub
    return _usable(path, "VICAP_OUTPUT") if create else path


def cache_dir(sub: str = "") -> Path:
    """VICAP_CACHE, else the user cache folder (~/.cache/vicap); for the mini base model."""
    if os.environ.get("VICAP_CACHE"):
        return _usable(Path(os.environ["VICAP_CACHE"]) / sub, "VICAP_CACHE")
    return _usable(Path.home() / ".cache/vicap" / sub, "HOME (or VICAP_CACHE)")


def _usable(path: Path, variable: str) -> Path:
    """`path`, created and proved writable (a file made and removed), else one line naming
    the environment variable that chose it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as exc:
        raise VicapError(f"{path}: {exc.strerror or exc}; set {variable} to a writable "
                         "folder") from None
    return path


def find_inputs(patterns: list[str], root: Path | None = None) -> list[Path]:
    """Files under `root` (default the Kaggle input root) matching any glob, shortest first."""
    root = kaggle_input() if root is None else root
    hits = {Path(p) for pat in patterns for p in glob.glob(str(root / pat), recursive=True)}
    return sorted(hits, key=lambda p: (len(p.parts), str(p)))


@dataclass(frozen=True)
class DataFiles:
    """A profile's data set as found: UIT-ViIC's caption files per split, or Flickr8k's one
    `captions` file with its official image lists; `image_dirs` may hold images, nearest first."""

    train: Path | None = None
    val: Path | None = None
    test: Path | None = None
    captions: Path | None = None
    image_dirs: tuple[Path, ...] = ()

    @property
    def found(self) -> bool:
        """Whether the training captions were found."""
        return (self.captions or self.train) is not None


def discover_data(profile: str, root: Path | None = None) -> DataFiles:
    """Find a real profile's caption files, official splits and candidate image folders."""
    root = kaggle_input() if root is None else root
    hits = find_inputs(DATA_GLOBS.get(profile, []), root)
    if not hits:
        return DataFiles()
    # each split's file from the same data set as the training captions (most shared folders)
    splits = {s: max(find_inputs([pattern], root), default=None,
                     key=lambda p: (_shared(p.parent, hits[0].parent), -len(p.parts)))
              for s, pattern in SPLIT_GLOBS[profile].items()}
    # folders named like image folders (train2017/, Images/, …), nearest first, ties shortest first
    dirs = [p for p in find_inputs([f"**/{n}" for n in IMAGE_DIR_GLOBS], root) if p.is_dir()]
    image_dirs = tuple(sorted(dirs, key=lambda p: -_shared(p, hits[0].parent)))
    captions = hits[0] if profile == "flickr8k-blip2" else None
    return DataFiles(**splits, captions=captions, image_dirs=image_dirs)


def _shared(a: Path, b: Path) -> int:
    """How many leading path parts two paths share."""
    return len(os.path.commonprefix([a.parts, b.parts]))


def find_image_folder(file_names: Iterable[str], roots: Iterable[Path] | None = None,
                      sample: int = 20) -> Path | None:
    """The folder under `roots` (default the Kaggle input root) holding most of an even sample
    of the given images, matched by base name; None when no folder has any."""
    names = sorted({Path(n).name for n in file_names})
    probe = names[::max(len(names) // sample, 1)][:sample]
    roots = [kaggle_input()] if roots is None else [Path(r) for r in roots]
    best, best_hits = None, 0
    for root in roots:
        for folder, _dirs, _files in os.walk(root, followlinks=True):
            hits = sum((Path(folder) / n).is_file() for n in probe)
            if hits > best_hits:
                best, best_hits = Path(folder), hits
                if hits == len(probe):
                    return best
    return best


def auto_profile() -> str:
    """On Kaggle with a GPU and the data attached, the real profile; anywhere else `mini`."""
    if os.environ.get("VICAP_PROFILE") and os.environ["VICAP_PROFILE"] != "auto":
        return os.environ["VICAP_PROFILE"]
    if is_kaggle() and detect().count:
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
    facts = detect()
    accelerator = facts.describe()
    if facts.count:
        accelerator += (f", native bf16={facts.bf16}, 8-bit={facts.int8 and facts.bitsandbytes}, "
                        f"torch kernels for it={facts.supported}")
    return {**versions(),
            "platform": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores",
            "accelerator": accelerator, "kaggle": is_kaggle(),
            "output dir": str(output_dir(create=False)), "auto profile": auto_profile()}


def print_environment() -> None:
    """Print the environment summary, one line per fact."""
    for key, value in describe().items():
        print(f"{key:>13}: {value}")


def cli_env(args: object) -> int:
    """`vicap env`: print the environment summary."""
    print_environment()
    return 0
