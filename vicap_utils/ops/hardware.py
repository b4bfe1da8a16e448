"""What the GPU can do and the training plan that follows: `plan()` is a pure function of
`detect()`'s facts, so every GPU is testable without one (`VICAP_EMULATE_T4=1`: a T4's plan)."""

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

from vicap_utils.families import BUILTIN_MODELS, QUANTIZES
from vicap_utils.ops.io import VicapError

PICK_INSTEAD = "choose GPU T4 x2 in the kernel settings (Settings → Accelerator)"
EMULATE_T4 = "VICAP_EMULATE_T4"
THREADS = "VICAP_THREADS"


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

    @property
    def compute(self) -> str:
        """The compute capability as written: "7.5"."""
        return f"{self.capability[0]}.{self.capability[1]}"

    def describe(self) -> str:
        """One line: "2× Tesla T4, compute 7.5, 14.7 GiB" or "no GPU (CPU only)"."""
        if self.emulated:
            return "no GPU: a T4's plan emulated on the CPU"
        if not self.count:
            return "no GPU (CPU only)"
        return f"{self.count}× {self.name}, compute {self.compute}, {self.memory_gib} GiB"


def arch_supported(capability: tuple[int, int], arch_list: tuple[str, ...] | list[str]) -> bool:
    """Whether a cubin of the same major and no higher minor (sm_80 runs on 8.6), or PTX for an
    arch not above it, is in torch's list; an empty list (torch could not say) counts as yes."""
    if not arch_list:
        return True
    for match in filter(None, (re.fullmatch(r"(sm|compute)_(\d+)[a-z]?", a) for a in arch_list)):
        built = divmod(int(match[2]), 10)
        if built <= tuple(capability) and (match[1] == "compute" or built[0] == capability[0]):
            return True
    return False


def emulating_t4() -> bool:
    """Whether `EMULATE_T4`=1 asks for a T4's plan (on the CPU, where there is no GPU)."""
    return os.environ.get(EMULATE_T4, "") == "1"


def detect() -> GpuFacts:
    """The facts of this machine: CUDA devices, what torch was built for, bitsandbytes."""
    import torch  # slow to import: `vicap audit` and `vicap env --help` never need it

    bnb = importlib.util.find_spec("bitsandbytes") is not None
    if not torch.cuda.is_available():
        return GpuFacts(bitsandbytes=bnb, torch_version=torch.__version__, emulated=emulating_t4())
    props = torch.cuda.get_device_properties(0)
    return GpuFacts(props.name, torch.cuda.device_count(), (props.major, props.minor),
                    round(props.total_memory / 2**30, 1), tuple(torch.cuda.get_arch_list()),
                    bnb, torch.__version__)


def torch_threads() -> str:
    """Set torch's CPU threads: VICAP_THREADS, else OMP_NUM_THREADS, else the cores the load
    average leaves free (on a busy 2-core machine two threads ran 3.5× slower than one)."""
    import torch  # slow to import: `vicap audit` never needs it

    cores, value = os.cpu_count() or 1, os.environ.get(THREADS, "").strip()
    if value:
        if not (value.isdigit() and 1 <= int(value) <= cores):
            raise VicapError(f"{THREADS}={value!r}: give a whole number of torch threads from 1 "
                             f"to {cores} (this machine's cores), or unset it")
        threads, why = int(value), THREADS
    elif os.environ.get("OMP_NUM_THREADS"):
        threads, why = torch.get_num_threads(), "OMP_NUM_THREADS"
    else:
        load = getattr(os, "getloadavg", lambda: (0.0,))()[0]
        threads, why = max(1, cores - round(load)), f"{cores} cores, load {load:.1f}"
    torch.set_num_threads(threads)
    return f"{threads} ({why}; {THREADS} sets it)"


@dataclass(frozen=True)
class Plan:
    """How training will use this machine; `error` set means it must not start."""

    device: str  # "cuda" or "cpu"
    mixed_precision: str  # "no", "fp16" or "bf16"
    load_in_8bit: bool  # BLIP-2 weights through bitsandbytes
    gpus: int
    facts: GpuFacts
    notices: tuple[str, ...] = ()
    error: str = ""

    @property
    def accelerate_precision(self) -> str:
        """Accelerate's setting: the trainer drives fp16 itself (autocast + GradScaler)."""
        return "no" if self.mixed_precision == "fp16" else self.mixed_precision

    def line(self) -> str:
        """One-line summary printed before training."""
        if self.error:
            return f"hardware plan: cannot train here: {self.error}"
        eight_bit = "; BLIP-2 weights in 8-bit" if self.load_in_8bit else ""
        return (f"hardware plan: {self.facts.describe()}; mixed precision "
                f"{self.mixed_precision}{eight_bit}")

    def check(self) -> "Plan":
        """Raise the plan's error as a one-line VicapError; return the plan otherwise."""
        if self.error:
            raise VicapError(self.error)
        return self


def eight_bit_decision(family: str, load_in_8bit: bool, facts: GpuFacts) -> tuple[bool, str]:
    """Whether BLIP-2 loads in 8-bit here, and a one-line notice when asked for but impossible."""
    if not (load_in_8bit and family in QUANTIZES):
        return False, ""
    if facts.emulated:
        return facts.bitsandbytes, "" if facts.bitsandbytes else (
            "bitsandbytes is not installed; the emulated T4 loads BLIP-2 in fp32")
    if not facts.count:
        return False, "8-bit needs a CUDA GPU; loading the model in fp32 on the CPU"
    if not facts.int8:
        return False, (f"8-bit needs compute capability >= 7.5 ({facts.name} is "
                       f"{facts.compute}); loading BLIP-2 in fp16")
    if not facts.bitsandbytes:
        return False, ("bitsandbytes is not installed (the bundle's wheel, or pip install "
                       "bitsandbytes); loading BLIP-2 in fp16")
    return True, ""


def plan(family: str, load_in_8bit: bool, setting: str, real_profile: bool,
         facts: GpuFacts) -> Plan:
    """The plan for a family with the config's 8-bit and mixed-precision `setting`;
    `real_profile` means a hub-sized base model, which a CPU cannot train."""
    eight_bit, notice = eight_bit_decision(family, load_in_8bit, facts)
    notices = [notice] if notice else []
    if facts.emulated:  # fp16 unless "no", and 8-bit BLIP-2 (bitsandbytes' CPU backend)
        notices.insert(0, f"{EMULATE_T4}=1: running a T4's plan on the CPU, slowly (tests, "
                          "rehearsals)")
        return Plan("cpu", "no" if setting == "no" else "fp16", eight_bit, 0, facts, tuple(notices))
    if not facts.count:
        error = ("no CUDA GPU here, and real profiles need one (on Kaggle: "
                 f"{PICK_INSTEAD}); on a CPU use --profile mini") if real_profile else ""
        if setting == "fp16":
            notices.insert(0, "fp16 needs a GPU; training in fp32 on the CPU")
        precision = "no" if setting in ("auto", "fp16") else setting
        return Plan("cpu", precision, False, 0, facts, tuple(notices), error)
    if not facts.supported:
        built = " ".join(a for a in facts.arch_list if a.startswith("sm_"))
        error = (f"{facts.name} (compute capability {facts.compute}) is not supported by the "
                 f"installed torch {facts.torch_version} (built for {built}); {PICK_INSTEAD}")
        return Plan("cuda", "no", False, facts.count, facts, (), error)
    precision = ("bf16" if facts.bf16 else "fp16") if setting == "auto" else setting
    if precision == "bf16" and not facts.bf16:
        precision = "fp16"
        notices.insert(0, f"bf16 is only emulated on {facts.name} (compute {facts.compute} "
                          "< 8.0); using fp16")
    if facts.count > 1:
        notices.append(f"{facts.count} GPUs: vicap_utils.ops.launch.launch_training(..., "
                       f"num_processes={facts.count}) trains on all of them")
    return Plan("cuda", precision, eight_bit, facts.count, facts, tuple(notices))


def plan_for(cfg) -> Plan:
    """The plan for a resolved Config here; a built-in toy or a saved folder is no real profile."""
    base = cfg.model.base
    real = base not in BUILTIN_MODELS and not Path(base).expanduser().is_dir()
    return plan(cfg.model.family, cfg.model.load_in_8bit, cfg.train.mixed_precision, real, detect())
