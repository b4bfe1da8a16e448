# vicap on Kaggle, first cell: install vicap and the bundled wheels from the attached wheel
# data set (no internet needed), check Java for METEOR and the PTB tokenizer, print the
# hardware plan. Safe to run again. Inserted by kaggle/bundle.py, which fills in SETTINGS.
import importlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

SETTINGS = {"profile": "", "wheels": ["vicap"], "wheel_dataset": "vicap-wheels", "plan": None}
# CI executes the notebooks with these; a Kaggle kernel does not need them.
NOT_NEEDED_HERE = {"ipykernel", "jupytext", "papermill"}


def kaggle_input():
    """The input root: $VICAP_KAGGLE_ROOT/input (default /kaggle/input)."""
    return Path(os.environ.get("VICAP_KAGGLE_ROOT") or "/kaggle") / "input"


def wheel_info(path):
    """(normalised distribution name, version) from a wheel's file name."""
    name, version = path.name.split("-")[:2]
    return re.sub(r"[-_.]+", "-", name).lower(), version


def _version_key(version):
    return [int(p) if p.isdigit() else p for p in re.split(r"[.+-]", version)]


def find_wheel_dir(root=None):
    """The folder holding the vicap wheel in either mount layout (<root>/<slug>/ or
    <root>/datasets/<owner>/<slug>/, a sub-folder allowed); the newest vicap wins."""
    root = kaggle_input() if root is None else Path(root)
    hits = [p for pattern in ("*/", "*/*/", "datasets/*/*/", "datasets/*/*/*/")
            for p in root.glob(pattern + "vicap-*.whl")]
    if not hits:
        raise SystemExit(f"no vicap wheel under {root}: attach the data set "
                         f"<owner>/{SETTINGS['wheel_dataset']} (Add Input → Datasets), "
                         "made by kaggle/bundle.py")
    best = max(hits, key=lambda p: (_version_key(wheel_info(p)[1]),
                                    p.parent.name == SETTINGS["wheel_dataset"]))
    return best.parent


def installed_version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def install(wheel_dir):
    """pip-install this kernel's wheels from `wheel_dir` without an index and without
    dependencies (the image has them); skip those already installed at that version."""
    wheels = {wheel_info(p)[0]: p for p in sorted(wheel_dir.glob("*.whl"))}
    missing = [w for w in SETTINGS["wheels"] if w not in wheels]
    if missing:
        raise SystemExit(f"{wheel_dir}: no wheel for {', '.join(missing)}; rebuild the wheel "
                         "data set with kaggle/bundle.py and upload a new version")
    todo = [wheels[w] for w in SETTINGS["wheels"]
            if installed_version(w) != wheel_info(wheels[w])[1]]
    if not todo:
        print(f"already installed from {wheel_dir}: " + ", ".join(
            f"{w} {installed_version(w)}" for w in SETTINGS["wheels"]))
        return
    stale = "vicap_utils" in sys.modules
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index",
                    "--no-deps", *map(str, todo)], check=True)
    importlib.invalidate_caches()
    print(f"installed from {wheel_dir}: " + ", ".join(p.name for p in todo))
    if stale:
        print("vicap was already imported in this kernel: restart it to use the new version")


def unmet_requirements():
    """vicap's runtime requirements the image does not satisfy, as readable lines."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        from pip._vendor.packaging.requirements import Requirement
    lines = []
    for text in importlib.metadata.requires("vicap") or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if req.name in NOT_NEEDED_HERE:
            continue
        have = installed_version(req.name)
        if have is None:
            lines.append(f"{req.name} is missing (vicap needs {req})")
        elif not req.specifier.contains(have, prereleases=True):
            lines.append(f"{req.name} {have} is installed; vicap needs {req}")
    return lines


def java_line():
    """Whether Java runs, and what the metrics do without it."""
    java = shutil.which("java")
    if java:
        try:
            proc = subprocess.run([java, "-version"], capture_output=True, text=True,
                                  timeout=60)
            version = (proc.stderr or proc.stdout).strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            version = ""
        if version:
            return (f"Java: {version}; METEOR, METEOR-vi and the PTB tokenizer run as in "
                    "pycocoevalcap")
    return ("Java: not found; BLEU, ROUGE-L and CIDEr use vicap's pure-Python stand-in for the "
            "PTB tokenizer, and METEOR, METEOR-vi and SPICE are reported as unavailable "
            "(with internet on, apt-get install -y default-jre-headless brings them back)")


def print_plan():
    """The hardware plan for this kernel's profile; stop here if it cannot train."""
    from vicap_utils.ops.hardware import detect, plan

    settings = SETTINGS["plan"]
    result = plan(settings["family"], settings["load_in_8bit"], settings["mixed_precision"],
                  True, detect())
    if result.error:
        raise SystemExit(result.line())
    print(result.line())
    for notice in result.notices:
        print(f"note: {notice}")


def main():
    if SETTINGS["profile"]:
        os.environ.setdefault("VICAP_PROFILE", SETTINGS["profile"])
        print(f"profile: {os.environ['VICAP_PROFILE']}")
    install(find_wheel_dir())
    for line in unmet_requirements():
        print(f"note: {line}")
    print(java_line())
    if SETTINGS["plan"]:
        print_plan()


if __name__ == "__main__":
    main()
