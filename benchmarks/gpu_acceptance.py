"""GPU acceptance: what a lent GPU should run in under 10 minutes, checked, in one JSON:

    python benchmarks/gpu_acceptance.py --device cuda [--blip2-full-depth] [--out FILE]
    python benchmarks/gpu_acceptance.py --device cpu    # dry run, tiny shapes, seconds (CI)

(1) fp16 LoRA steps (autocast + GradScaler) at BLIP-base's full shape, the ViT recomputed and on
cached features: samples/s, peak memory, finite loss and gradients; (2) BLIP-2 at OPT-2.7b's
widths loaded 8-bit through `captioner.load_base`, at a third of its depth unless
`--blip2-full-depth`: its layers really `Linear8bitLt`, LoRA steps whose gradients are finite,
peak memory under a T4's 15 GiB; (3) beam-search captioning one image per call against a batch,
images/s and their ratio; (4) two processes (DDP through Accelerate, launched as `vicap train`
launches them) when two GPUs are present: samples/s and the LoRA weights equal on both. Every
section reuses `bench_train.py`'s random models of the real shapes and the package's code paths.
Writes the figures, the device, the versions and a verdict per check to FILE (default
gpu_acceptance.json in the output folder); exits 1 when a check fails.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import bench_train as bt
import torch

from vicap_utils import captioner
from vicap_utils.ops import env, launch

KIND = "vicap gpu acceptance"  # marks the JSON as this script's, so a rerun may replace it
CAP_MIB = bt.T4_BYTES / 2**20
GENERATION_TARGET = 8.0  # batched / one-at-a-time images/s on a GPU
BLIP2_DEPTH = 4  # of 12: ViT-g 13, Q-Former 4, OPT 11 layers (the real model: 39, 12, 32)
TRAIN_MODES = ("lora_no_cache", "lora_cached")


@dataclass
class Plan:
    """What one acceptance run measures: the BLIP-1 and BLIP-2 settings, the processes of the
    two-process check (0: skipped, with the reason), where the JSON goes."""

    blip: bt.Settings
    blip2: bt.Settings
    processes: int
    skip_reason: str
    out: Path


# ---------------------------------------------------------------- settings


def gpu_settings(full_depth_blip2: bool) -> tuple[bt.Settings, bt.Settings]:
    """BLIP-base at its full shape; BLIP-2 at OPT-2.7b's widths, a third of its depth or all."""
    blip = bt.Settings(device="cuda", shapes=bt.Shapes(), steps=20, warmup=3, gen_batch=16,
                       gen_single=16, pool_images=64, cache_batch=64)
    depth = 12 if full_depth_blip2 else BLIP2_DEPTH
    return blip, replace(blip, shapes=replace(bt.Shapes(), depth=depth), blip2=True, batch=4,
                         steps=10, pool_images=16, cache_batch=16)


def dry_run_settings() -> tuple[bt.Settings, bt.Settings]:
    """Tiny shapes on the CPU, under fp16 autocast and a GradScaler as on a GPU; BLIP-2 in 8-bit
    through bitsandbytes' CPU backend."""
    blip = bt.Settings(device="cpu", shapes=bt.TINY, steps=2, warmup=1, amp_on_cpu=True,
                       gen_batch=4, gen_single=2, max_new_tokens=8, pool_images=4, cache_batch=4,
                       threads=1)
    return blip, replace(blip, blip2=True, blip2_shapes=bt.TINY_BLIP2, eight_bit_on_cpu=True,
                         batch=4)


def gpu_count() -> int:
    """CUDA devices visible here."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def plan_from(argv: list[str] | None) -> tuple[Plan, argparse.Namespace]:
    """Parse the command line; a request this machine cannot serve ends in one line, exit 2."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda: the acceptance run; cpu: the dry run on tiny shapes")
    parser.add_argument("--blip2-full-depth", action="store_true",
                        help="BLIP-2 with all 39 + 12 + 32 layers (default: a third)")
    parser.add_argument("--processes", type=int, choices=(1, 2), default=None,
                        help="processes of the DDP check (default: 2 on CUDA when 2 GPUs are "
                             "present; 2 with --device cpu runs it under gloo)")
    parser.add_argument("--out", type=Path, default=None,
                        help="the JSON (default: gpu_acceptance.json in the output folder: "
                             "VICAP_OUTPUT, /kaggle/working on Kaggle, else ./outputs)")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    gpus = gpu_count()
    if args.device == "cuda" and not gpus:
        parser.exit(2, f"error: --device cuda: torch {torch.__version__} sees no CUDA GPU "
                       "here; run the dry run with --device cpu, or on a GPU machine\n")
    if args.device == "cuda" and args.processes == 2 and gpus < 2:
        parser.exit(2, f"error: --processes 2: needs two GPUs, {gpus} here; leave it out\n")
    blip, blip2 = (gpu_settings(args.blip2_full_depth) if args.device == "cuda"
                   else dry_run_settings())
    out = args.out or env.output_dir(create=False) / "gpu_acceptance.json"
    return Plan(blip, blip2, *ddp_processes(args, gpus), out), args


def ddp_processes(args: argparse.Namespace, gpus: int) -> tuple[int, str]:
    """(processes of the DDP check, 0 when skipped; why it is skipped)."""
    if args.processes == 2 or (args.processes is None and args.device == "cuda" and gpus >= 2):
        return 2, ""
    if args.processes == 1:
        return 0, "skipped: --processes 1"
    if args.device == "cuda":
        return 0, f"skipped: {gpus} GPU"
    return 0, "skipped: the CPU dry run (--processes 2 runs it under gloo)"


def refuse_foreign(out: Path) -> str:
    """Why `out` must not be written (a file this script did not write), or ''."""
    if not out.exists():
        return ""
    try:
        ours = json.loads(out.read_text(encoding="utf-8")).get("kind") == KIND
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        ours = False
    return "" if ours else (f"--out {out}: the file exists and is not a vicap acceptance "
                            "report; choose another --out")


# ---------------------------------------------------------------- sections


def eight_bit_layers(cap: captioner.Captioner) -> dict[str, Any]:
    """How the loaded BLIP-2 stores its layers: bitsandbytes `Linear8bitLt` with int8 weights,
    and any linear layer of the language model that stayed unquantized (lm_head does, by
    design: `load_base` skips it)."""
    if not bt.has_bitsandbytes():
        return {"linear8bit": {"count": 0, "error": "bitsandbytes is not installed"}}
    from bitsandbytes.nn import Linear8bitLt

    inner = captioner.inner_model(cap.model)
    quantized = [m for m in inner.modules() if isinstance(m, Linear8bitLt)]
    plain = [n for n, m in inner.language_model.named_modules()
             if isinstance(m, torch.nn.Linear) and not isinstance(m, Linear8bitLt)
             and n.split(".")[-1] != "lm_head"]
    return {"linear8bit": {
        "type": f"{Linear8bitLt.__module__}.{Linear8bitLt.__qualname__}",
        "count": len(quantized),
        "int8_weights": all(m.weight.dtype == torch.int8 for m in quantized),
        "language_model_unquantized": plain}}


def blip2_steps(s: bt.Settings) -> dict[str, Any]:
    """LoRA steps on the 8-bit BLIP-2 under the 15 GiB cap; running out of memory is a result."""
    try:
        return bt.train_mode(s, "lora_no_cache", eight_bit_layers)
    except torch.OutOfMemoryError as exc:
        return {"error": f"out of memory under the {CAP_MIB:,.0f} MiB cap: "
                         f"{str(exc).splitlines()[0]}"}


def guarded(func, s: bt.Settings, *args: Any) -> dict[str, Any]:
    """`bt.isolated(func, s, *args)`; an exception becomes the section's `error`, so the other
    sections still run and the check fails."""
    try:
        return bt.isolated(func, s, *args)
    except Exception as exc:  # noqa: BLE001 - any failure is this section's verdict
        line = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
        print(f"{func.__name__}: {line}", file=sys.stderr)
        return {"error": line}


def two_processes(p: Plan) -> dict[str, Any]:
    """A few LoRA steps in `p.processes` DDP processes, launched as the package launches
    `vicap train` (torch.distributed.run; Accelerate reads its environment)."""
    if not p.processes:
        return {"status": p.skip_reason}
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "ddp.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={p.processes}", str(Path(__file__).resolve()),
                   "--device", p.blip.device, "--worker", str(result)]
        env = {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"} if p.blip.device == "cpu" else {}
        start = time.perf_counter()
        code, tail = launch.run_streamed(command, env=env, out=sys.stderr)
        if code != 0 or not result.exists():
            return {"error": f"exit code {code}: {launch.error_line(tail)}"}
        return {**json.loads(result.read_text(encoding="utf-8")),
                "wall_s": time.perf_counter() - start}


def ddp_worker(s: bt.Settings, out: Path) -> None:
    """One DDP process: the `uitviic-blip` LoRA on BLIP-1 (same seed everywhere, its own images),
    fp16 on CUDA; the main process writes samples/s and how far the ranks' LoRA weights differ."""
    from accelerate import Accelerator

    acc = Accelerator(mixed_precision="fp16" if s.device == "cuda" else "no")
    if s.device == "cuda":
        torch.cuda.set_device(acc.local_process_index)  # place(cap, "cuda") lands here
    if s.threads:
        torch.set_num_threads(s.threads)
    cap, captions, _ = bt.build(s)
    bt.add_lora(cap, s)
    rank = replace(s, seed=s.seed + acc.process_index)
    pixels = bt.pool_pixels(cap, s.pool_images, rank.seed)
    batches = bt.caption_batches(cap, captions, rank, s.warmup + s.steps)
    params = [p for p in cap.model.parameters() if p.requires_grad]
    t = bt.profile(s).train
    model, optimizer = acc.prepare(captioner.TrainingForward(cap.model, "blip", cached=False),
                                   torch.optim.AdamW(params, lr=t.lr))
    model.train()
    for i, b in enumerate(batches):
        if i == s.warmup:
            bt.sync(s.device)
            acc.wait_for_everyone()
            start = time.perf_counter()
        with acc.autocast():
            logits = model(pixels[b.rows].to(acc.device), b.input_ids.to(acc.device),
                           b.attention_mask.to(acc.device))
            step_loss = captioner.loss(logits, b.labels, smoothing=t.label_smoothing)
        acc.backward(step_loss)
        acc.clip_grad_norm_(params, t.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    bt.sync(s.device)
    acc.wait_for_everyone()
    elapsed = time.perf_counter() - start
    weights = acc.gather(torch.cat([p.detach().float().flatten() for p in params])[None])
    if acc.is_main_process:
        out.write_text(json.dumps({
            "processes": acc.num_processes, "distributed_type": str(acc.distributed_type),
            "samples_per_s": acc.num_processes * s.steps * s.batch / elapsed,
            "steps": s.steps, "batch_per_process": s.batch, "final_loss": step_loss.item(),
            "max_weight_difference": (weights - weights[0]).abs().max().item()}))


# ---------------------------------------------------------------- checks


def finite(*xs: Any) -> bool:
    """Whether every value is a finite number."""
    return all(isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def verdict(passed: bool, detail: str) -> dict[str, str]:
    """One check's result."""
    return {"status": "pass" if passed else "fail", "detail": detail}


def trains(r: dict[str, Any]) -> dict[str, str]:
    """LoRA steps ran with a finite loss at every step and a finite, non-zero last gradient."""
    if "error" in r:
        return verdict(False, r["error"])
    ok = r["losses_finite"] and finite(r["last_grad_norm"]) and r["last_grad_norm"] > 0
    return verdict(ok, f"final loss {r['final_loss']:.3f}, last gradient norm "
                       f"{r['last_grad_norm']:.3g}, {r['nonfinite_grad_steps']} step(s) skipped "
                       f"for non-finite gradients, {r['samples_per_s']:.2f} samples/s")


def fp16_check(train: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Both fp16 LoRA modes train under autocast."""
    results = {m: trains(r) for m, r in train.items()}
    amp = all(r.get("amp") for r in train.values())
    return verdict(amp and all(v["status"] == "pass" for v in results.values()),
                   "; ".join(f"{m}: {v['detail']}" for m, v in results.items())
                   + ("" if amp else "; not under fp16 autocast"))


def eight_bit_check(r: dict[str, Any]) -> dict[str, str]:
    """The language model's linear layers are bitsandbytes 8-bit layers with int8 weights."""
    q = r.get("linear8bit")
    if not q:
        return verdict(False, r.get("error", "no report of the layers"))
    if "error" in q:
        return verdict(False, q["error"])
    ok = q["count"] > 0 and q["int8_weights"] and not q["language_model_unquantized"]
    return verdict(ok, f"{q['count']} {q['type']} layers, int8 weights: {q['int8_weights']}, "
                       f"unquantized language-model layers: {q['language_model_unquantized']}")


def memory_check(r: dict[str, Any]) -> dict[str, str]:
    """BLIP-2's peak memory stays under a T4's 15 GiB."""
    if "error" in r:
        return verdict(False, r["error"])
    return verdict(r["peak_memory_mib"] <= CAP_MIB,
                   f"peak {r['peak_memory_mib']:,.0f} MiB of {CAP_MIB:,.0f}")


def generation_check(g: dict[str, Any], ratio: float | None, device: str) -> dict[str, str]:
    """Batched captioning ≥ 8× one image per call on a GPU; on the CPU only that both ran."""
    if "error" in g or ratio is None:
        return verdict(False, g.get("error", "a captioning rate is missing"))
    rates = [g[m]["images_per_s"] for m in bt.GEN_MODES]
    detail = f"batched {rates[1]:.2f} vs one at a time {rates[0]:.2f} images/s: {ratio:.2f}x"
    if device == "cuda":
        return verdict(ratio >= GENERATION_TARGET, f"{detail} (target {GENERATION_TARGET:g}x)")
    return verdict(finite(*rates) and min(rates) > 0, f"{detail} (the target applies on a GPU)")


def ddp_check(r: dict[str, Any], expected: int) -> dict[str, str]:
    """Every process trained and DDP kept the LoRA weights identical on all of them."""
    if "status" in r:
        return {"status": "skipped", "detail": r["status"]}
    if "error" in r:
        return verdict(False, r["error"])
    ok = (r["processes"] == expected and finite(r["final_loss"])
          and r["max_weight_difference"] <= 1e-6)
    return verdict(ok, f"{r['processes']} processes ({r['distributed_type']}), "
                       f"{r['samples_per_s']:.2f} samples/s in all, largest LoRA weight "
                       f"difference between processes {r['max_weight_difference']:.3g}")


# ---------------------------------------------------------------- report


def versions() -> dict[str, str | None]:
    """The package's version list, plus CUDA and bitsandbytes (read from its metadata:
    importing it here would add nothing)."""
    try:
        bnb = metadata.version("bitsandbytes")
    except metadata.PackageNotFoundError:
        bnb = "not installed"
    return {**env.versions(), "cuda": torch.version.cuda, "bitsandbytes": bnb}


def device_facts(device: str) -> dict[str, Any]:
    """The device the figures were measured on."""
    if device == "cpu":
        return {"kind": "cpu", "name": bt.device_name("cpu"), "gpus": 0}
    props = torch.cuda.get_device_properties(0)
    return {"kind": "cuda", "name": props.name, "gpus": gpu_count(),
            "memory_gib": props.total_memory / 2**30,
            "compute_capability": f"{props.major}.{props.minor}"}


def measure(p: Plan) -> dict[str, Any]:
    """Run every section, each in its own child process, and judge them."""
    start = time.perf_counter()
    train = {m: guarded(bt.train_mode, p.blip, m) for m in TRAIN_MODES}
    blip2 = guarded(blip2_steps, p.blip2)
    generate = guarded(bt.generation_modes, p.blip)
    ratio = (None if "error" in generate else bt.ratio(generate["batched"]["images_per_s"],
                                                       generate["one_at_a_time"]["images_per_s"]))
    ddp = two_processes(p)
    checks = {
        "fp16_lora_trains": fp16_check(train),
        "blip2_8bit_layers": eight_bit_check(blip2),
        "blip2_lora_trains": trains(blip2),
        "blip2_under_15_gib": memory_check(blip2),
        "generation_batched_vs_one": generation_check(generate, ratio, p.blip.device),
        "two_processes": ddp_check(ddp, p.processes),
    }
    return {
        "kind": KIND,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", "benchmarks/gpu_acceptance.py", *sys.argv[1:]]),
        "dry_run": p.blip.device == "cpu",
        "device": device_facts(p.blip.device),
        "versions": versions(),
        "settings": {"blip": asdict(p.blip), "blip2": asdict(p.blip2),
                     "blip2_depths": dict(zip(("vision", "qformer", "opt"),
                                              bt.blip2_depths(p.blip2.shapes.depth)))},
        "fp16_lora": train, "blip2_8bit": blip2,
        "generation": {**generate, "batched_vs_one_at_a_time": ratio},
        "two_processes": ddp,
        "checks": checks,
        "passed": all(c["status"] != "fail" for c in checks.values()),
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    """Measure, write the JSON, print one line per check; 1 when a check failed, 2 on a
    request this machine cannot serve."""
    p, args = plan_from(argv)
    if args.worker:
        ddp_worker(p.blip, args.worker)
        return 0
    refusal = refuse_foreign(p.out)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    report = measure(p)
    p.out.parent.mkdir(parents=True, exist_ok=True)
    p.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for name, c in report["checks"].items():
        print(f"{c['status']:>7}  {name}: {c['detail']}")
    print(f"{'passed' if report['passed'] else 'FAILED'} in {report['seconds']:.0f} s; "
          f"wrote {p.out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
