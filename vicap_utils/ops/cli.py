"""`vicap COMMAND …` (also `python -m vicap_utils`): a command's module is imported only when it
runs (`vicap audit` never imports torch); user errors exit 2 with one line."""

import argparse
import importlib
import sys
from collections.abc import Sequence

from vicap_utils.ops.hardware import torch_threads
from vicap_utils.ops.io import VicapError

# command -> the module whose `cli_<command>(args)` runs it and returns an exit code
COMMANDS = {"synth": "vicap_utils.toy.data", "audit": "vicap_utils.audit",
            "split": "vicap_utils.data", "train": "vicap_utils.train",
            "predict": "vicap_utils.predict", "evaluate": "vicap_utils.metrics",
            "env": "vicap_utils.ops.env"}
REPLACE_FOREIGN = "replace an existing --out file that vicap did not write"


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit 2, like every other user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command, per the CLI contract (docs/architecture.md)."""
    parser = _Parser(prog="vicap", description="Vietnamese image captioning with BLIP + LoRA.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="draw the synthetic ball-sports caption set")
    p.add_argument("--out", required=True, help="output folder (images/ and captions JSON)")
    p.add_argument("--n-images", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lang", choices=["vi", "en"], default="vi")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a set vicap drew earlier in OUT (nothing else there)")

    p = sub.add_parser("audit", help="check a caption set; write the clean set and a report")
    p.add_argument("--annotations", required=True,
                   help="COCO-style captions JSON, Flickr8k.token.txt or Flickr8k captions.txt")
    p.add_argument("--images", required=True, help="images folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: cores)")

    p = sub.add_parser("split", help="seeded split by image into train/val COCO files")
    p.add_argument("--annotations", required=True, help="clean COCO-style captions JSON")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=42)

    p = sub.add_parser("train", help="audit the data, then LoRA fine-tuning")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--profile", help="named profile: mini, uitviic-blip, flickr8k-blip2, auto")
    src.add_argument("--config", help="config JSON (e.g. a run's config.json)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE", help="override one config value (repeatable)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last/")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in OUT")
    p.add_argument("--scst-from", metavar="ADAPTER_DIR",
                   help="self-critical training (CIDEr-D reward) from a cross-entropy adapter")

    p = sub.add_parser("predict", help="caption images with an adapter or a base model")
    p.add_argument("--model", required=True,
                   help="an adapter folder (a run's best/ or final/), or a base model (hub id, "
                        "saved-model folder, or mini) that captions zero-shot")
    p.add_argument("--no-adapter", action="store_true",
                   help="with an adapter folder: caption with its base model alone")
    p.add_argument("--annotations", required=True, help="COCO-style JSON listing the images")
    p.add_argument("--images", required=True, help="images folder")
    p.add_argument("--out", required=True, help="predictions JSON (COCO results)")
    for flag in ("--num-beams", "--max-new-tokens", "--batch-size"):  # unset: the model's eval.*
        p.add_argument(flag, type=int)
    p.add_argument("--overwrite", action="store_true", help=REPLACE_FOREIGN)

    p = sub.add_parser("evaluate", help="score predictions against references")
    p.add_argument("--predictions", required=True, help="COCO results JSON")
    p.add_argument("--references", required=True, help="COCO-style captions JSON")
    p.add_argument("--out", help="metrics JSON (per-image CIDEr CSV is written beside it)")
    p.add_argument("--train-captions", help="COCO-style training captions, for novel_rate")
    p.add_argument("--allow-missing", action="store_true",
                   help="score only the reference images that have a prediction")
    p.add_argument("--tokenize", choices=("syllable", "words"), default="syllable",
                   help="syllable: captions as written (default); words: segmented into "
                        "Vietnamese words first (needs underthesea), as KTVIC's published scores")
    p.add_argument("--compare", metavar="METRICS_JSON",
                   help="also show these metrics beside another model's (e.g. cross-entropy's)")
    p.add_argument("--overwrite", action="store_true", help=REPLACE_FOREIGN)

    sub.add_parser("env", help="print where we run: Kaggle or not, GPU, inputs, output folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, dispatch, and turn user errors into one line on stderr with exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "out", None) == "" or (getattr(args, "resume", False) and args.overwrite):
            raise VicapError("--out is empty; name the output" if args.out == "" else
                             "--resume continues a run, --overwrite starts it again: give one")
        if args.command in ("train", "predict"):  # the two that run a model on the CPU too
            torch_threads()
        module = importlib.import_module(COMMANDS[args.command])
        return int(getattr(module, f"cli_{args.command}")(args) or 0)
    except VicapError as exc:  # one line (a newline in a path escaped), written at once
        line = str(exc).replace("\n", "\\n").replace("\r", "\\r")
        try:  # a path's undecodable bytes (surrogate escapes) shown as \xff, not \udcff
            line = line.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # another lone surrogate: escaped as it is
            line = line.encode("utf-8", "backslashreplace").decode("utf-8")
        sys.stderr.write(f"vicap {args.command}: error: {line}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"vicap {args.command}: interrupted\n")
        return 130
