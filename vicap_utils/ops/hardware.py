"""What the GPU can do, and the training plan that follows from it (precision, 8-bit, errors).

`detect()` gathers the facts once; `plan()` is a pure function of the facts and a few settings,
so every case (T4, P100, A100/H100, an arch the installed torch lacks, no GPU) is testable
without the hardware. bf16 is chosen only where the GPU computes it natively (compute
capability ≥ 8.0): `torch.cuda.is_bf16_supported()` also counts emulation (True on a T4).
`VICAP_EMULATE_T4=1` (`EMULATE_T4`) gives a machine without a GPU a T4's plan, run on the CPU
(fp16 autocast + GradScaler, 8-bit BLIP-2 through bitsandbytes' CPU backend): an emulation for
tests and rehearsals, slow, never a measure of a T4.
"""
from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from vicap_utils.families import BUILTIN_MODELS, QUANTIZES
from vicap_utils.ops.io import VicapError

PICK_INSTEAD = "choose GPU T4 x2 in the kernel settings (Settings → Accelerator)"
# Set to 1, a machine without a GPU gets the plan a T4 gets (fp16 autocast + GradScaler, 8-bit
# BLIP-2 through bitsandbytes' CPU backend), run on the CPU: for tests and Kaggle rehearsals.
EMULATE_T4 = "VICAP_EMULATE_T4"


@dataclass(frozen=True)
class GpuFacts:
    """The accelerator as torch sees it; `name` is "cpu" and `count` 0 when there is none."""

    name: str = "cpu"
    count: int = 0
    capability: tuple[int, int] = (0, 0)
    memory_gib: float = 0.0  # binary gigabytes (2**30 bytes)
    arch_list: tuple[str, ...] = ()  # torch.cuda.get_arch_list(): what torch was built for
    bitsandbytes: bool = False  # importable (not imported: importing it is slow)
    torch_version: str = ""
    emulated: bool = False  # a T4's plan run on the CPU (EMULATE_T4)

    @property
    def bf16(self) -> bool:
        """Native bf16 (Ampere and newer)."""
        return self.count > 0 and self.capability >= (8, 0)

    @property
    def int8(self) -> bool:
        """bitsandbytes 8-bit matmuls need compute capability ≥ 7.5."""
        return self.count > 0 and self.capability >= (7, 5)

    @property
    def supported(self) -> bool:
        """Whether the installed torch has kernels for this GPU (binary or PTX)."""
        return self.count == 0 or arch_supported(self.capability, self.arch_list)

    def describe(self) -> str:
        """One line: "2× Tesla T4, compute 7.5, 14.7 GiB" or "no GPU (CPU only)"."""
        if self.emulated:
            return "no GPU: a T4's plan emulated on the CPU"
        if not self.count:
            return "no GPU (CPU only)"
        return (f"{self.count}× {self.name}, compute {self.capability[0]}.{self.capability[1]}, "
                f"{self.memory_gib} GiB")


def arch_supported(capability: tuple[int, int], arch_list: tuple[str, ...] | list[str]) -> bool:
    """A GPU runs torch's kernels if a cubin has its major version and a minor version not above
    its own (sm_75 runs on 7.5, sm_80 on 8.6), or PTX for an arch not above it (JIT-compiled).
    An empty list (torch could not say) counts as supported."""
    if not arch_list:
        return True
    for arch in arch_list:
        match = re.fullmatch(r"(sm|compute)_(\d+)[a-z]?", arch)
        if not match:
            continue
        number = int(match.group(2))
        built = (number // 10, number % 10)
        if match.group(1) == "sm" and built[0] == capability[0] and built[1] <= capability[1]:
            return True
        if match.group(1) == "compute" and built <= capability:
            return True
    return False


def emulating_t4() -> bool:
    """Whether `EMULATE_T4`=1 asks for a T4's plan (on the CPU, where there is no GPU)."""
    return os.environ.get(EMULATE_T4, "") == "1"


def detect() -> GpuFacts:
    """The facts of this machine: CUDA devices, what torch was built for, bitsandbytes."""
    import torch

    bnb = importlib.util.find_spec("bitsandbytes") is not None
    if not torch.cuda.is_available():
        return GpuFacts(bitsandbytes=bnb, torch_version=torch.__version__,
                        emulated=emulating_t4())
    props = torch.cuda.get_device_properties(0)
    return GpuFacts(
        name=props.name,
        count=torch.cuda.device_count(),
        capability=(props.major, props.minor),
        memory_gib=round(props.total_memory / 2**30, 1),
        arch_list=tuple(torch.cuda.get_arch_list()),
        bitsandbytes=bnb,
        torch_version=torch.__version__,
    )


@dataclass(frozen=True)
class Plan:
    """How training will use this machine; `error` set means it must not start."""

    device: str  # "cuda" or "cpu"
    mixed_precision: str  # "no", "fp16" or "bf16"
    load_in_8bit: bool  # BLIP-2 weights through bitsandbytes
    gpus: int
    facts: GpuFacts
    notices: tuple[str, ...] = field(default_factory=tuple)
    error: str = ""

    @property
    def accelerate_precision(self) -> str:
        """What Accelerate is given: fp16 is the trainer's own (autocast + GradScaler, the same
        on a GPU and on the CPU, where Accelerate makes no scaler); bf16 needs no scaler."""
        return "no" if self.mixed_precision == "fp16" else self.mixed_precision

    def line(self) -> str:
        """One-line summary printed before training."""
        if self.error:
            return f"hardware plan: cannot train here: {self.error}"
        parts = [self.facts.describe(), f"mixed precision {self.mixed_precision}"]
        if self.load_in_8bit:
            parts.append("BLIP-2 weights in 8-bit")
        return "hardware plan: " + "; ".join(parts)

    def check(self) -> Plan:
        """Raise the plan's error as a one-line VicapError; return the plan otherwise."""
        if self.error:
            raise VicapError(self.error)
        return self


def eight_bit_decision(family: str, load_in_8bit: bool, facts: GpuFacts) -> tuple[bool, str]:
    """Whether BLIP-2 loads in 8-bit here, and the one-line notice when asked for but not
    possible (no GPU, compute capability < 7.5, or no bitsandbytes)."""
    if not (load_in_8bit and family in QUANTIZES):
        return False, ""
    if facts.emulated:
        return facts.bitsandbytes, "" if facts.bitsandbytes else (
            "bitsandbytes is not installed; the emulated T4 loads BLIP-2 in fp32")
    if not facts.count:
        return False, "8-bit needs a CUDA GPU; loading the model in fp32 on the CPU"
    cap = f"{facts.capability[0]}.{facts.capability[1]}"
    if not facts.int8:
        return False, (f"8-bit needs compute capability >= 7.5 ({facts.name} is {cap}); "
                       "loading BLIP-2 in fp16")
    if not facts.bitsandbytes:
        return False, ("bitsandbytes is not installed (the bundle's wheel, or pip install "
                       "bitsandbytes); loading BLIP-2 in fp16")
    return True, ""


def plan(family: str, load_in_8bit: bool, mixed_precision_setting: str, real_profile: bool,
         facts: GpuFacts) -> Plan:
    """The plan for a model family ("blip"/"blip2") with the config's 8-bit and mixed-precision
    settings ("auto", "no", "fp16", "bf16"); `real_profile` means a hub-sized base model (not a
    built-in toy model or a model folder on this machine), which a CPU cannot train."""
    notices: list[str] = []
    if facts.emulated:
        return emulated_t4_plan(family, load_in_8bit, mixed_precision_setting, facts)
    if not facts.count:
        error = ("no CUDA GPU here, and real profiles need one (on Kaggle: "
                 f"{PICK_INSTEAD}); on a CPU use --profile mini") if real_profile else ""
        precision = "no" if mixed_precision_setting in ("auto", "fp16") else mixed_precision_setting
        if mixed_precision_setting == "fp16":
            notices.append("fp16 needs a GPU; training in fp32 on the CPU")
        notice = eight_bit_decision(family, load_in_8bit, facts)[1]
        notices += [notice] if notice else []
        return Plan("cpu", precision, False, 0, facts, tuple(notices), error)
    if not facts.supported:
        built = " ".join(a for a in facts.arch_list if a.startswith("sm_"))
        error = (f"{facts.name} (compute capability {facts.capability[0]}.{facts.capability[1]}) "
                 f"is not supported by the installed torch {facts.torch_version} (built for "
                 f"{built}); {PICK_INSTEAD}")
        return Plan("cuda", "no", False, facts.count, facts, (), error)
    precision = mixed_precision_setting
    if precision == "auto":
        precision = "bf16" if facts.bf16 else "fp16"
    elif precision == "bf16" and not facts.bf16:
        precision = "fp16"
        notices.append(f"bf16 is only emulated on {facts.name} (compute "
                       f"{facts.capability[0]}.{facts.capability[1]} < 8.0); using fp16")
    eight_bit, notice = eight_bit_decision(family, load_in_8bit, facts)
    notices += [notice] if notice else []
    if facts.count > 1:
        notices.append(f"{facts.count} GPUs: vicap_utils.ops.launch.launch_training(..., "
                       f"num_processes={facts.count}) trains on all of them")
    return Plan("cuda", precision, eight_bit, facts.count, facts, tuple(notices))


def emulated_t4_plan(family: str, load_in_8bit: bool, mixed_precision_setting: str,
                     facts: GpuFacts) -> Plan:
    """A T4's plan on the CPU: fp16 (autocast + GradScaler, which the trainer drives itself:
    Accelerate makes no scaler on the CPU) unless the setting is "no", and 8-bit BLIP-2."""
    precision = "no" if mixed_precision_setting == "no" else "fp16"
    eight_bit, notice = eight_bit_decision(family, load_in_8bit, facts)
    notices = [f"{EMULATE_T4}=1: running a T4's plan on the CPU, slowly (tests, rehearsals)"]
    return Plan("cpu", precision, eight_bit, 0, facts, tuple(notices + ([notice] if notice
                                                                        else [])))


def plan_for(cfg) -> Plan:
    """The plan for a resolved Config on this machine (what training and the first cell print).

    A base named on the hub or as a Kaggle model is a real profile; a built-in toy model or a
    saved-model folder on this machine is not (a CPU may train those, slowly)."""
    base = cfg.model.base
    real = base not in BUILTIN_MODELS and not Path(base).expanduser().is_dir()
    return plan(cfg.model.family, cfg.model.load_in_8bit, cfg.train.mixed_precision, real,
                detect())
