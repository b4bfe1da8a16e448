"""The hardware plan for each GPU Kaggle (and a workstation) may hand out, facts mocked."""
from __future__ import annotations

import pytest

from vicap_utils.__main__ import main
from vicap_utils.ops import env, hardware
from vicap_utils.ops.hardware import GpuFacts, plan
from vicap_utils.ops.io import VicapError

# torch 2.10+cu128 as shipped in Kaggle's image: no Pascal (sm_60) kernels.
CU128 = ("sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120")
T4X2 = GpuFacts("Tesla T4", 2, (7, 5), 14.7, CU128, True, "2.10.0+cu128")
P100 = GpuFacts("Tesla P100-PCIE-16GB", 1, (6, 0), 15.9, ("sm_60", "sm_70", "sm_75"), True,
                "2.4.0+cu121")
A100 = GpuFacts("NVIDIA A100-SXM4-40GB", 1, (8, 0), 39.4, CU128, True, "2.10.0+cu128")
H100 = GpuFacts("NVIDIA H100 80GB HBM3", 1, (9, 0), 79.2, CU128, False, "2.10.0+cu128")


def test_t4_trains_in_fp16_with_8bit_blip2_on_both_gpus():
    p = plan("blip2", True, "auto", True, T4X2)
    assert (p.device, p.mixed_precision, p.load_in_8bit, p.gpus, p.error) == \
        ("cuda", "fp16", True, 2, "")
    assert p.accelerate_precision == "no"  # autocast + GradScaler driven by the trainer
    assert any("num_processes=2" in n for n in p.notices)
    assert p.line() == ("hardware plan: 2× Tesla T4, compute 7.5, 14.7 GiB; mixed precision fp16; "
                        "BLIP-2 weights in 8-bit")
    blip = plan("blip", False, "auto", True, T4X2)
    assert (blip.mixed_precision, blip.load_in_8bit) == ("fp16", False)


def test_t4_never_gets_emulated_bf16():
    p = plan("blip", False, "bf16", True, T4X2)
    assert p.mixed_precision == "fp16"
    assert any("bf16 is only emulated on Tesla T4" in n for n in p.notices)
    assert plan("blip", False, "no", True, T4X2).mixed_precision == "no"


def test_p100_where_torch_has_sm60_uses_fp16_and_loads_blip2_in_fp16():
    p = plan("blip2", True, "auto", True, P100)
    assert (p.device, p.mixed_precision, p.load_in_8bit, p.error) == ("cuda", "fp16", False, "")
    assert p.notices == ("8-bit needs compute capability >= 7.5 (Tesla P100-PCIE-16GB is 6.0); "
                         "loading BLIP-2 in fp16",)


@pytest.mark.parametrize("facts", [A100, H100])
def test_ampere_and_hopper_train_in_bf16(facts):
    p = plan("blip", False, "auto", True, facts)
    assert (p.mixed_precision, p.error, p.gpus) == ("bf16", "", 1)
    assert p.accelerate_precision == "bf16"
    assert "mixed precision bf16" in p.line()


def test_blip2_without_bitsandbytes_falls_back_to_fp16_with_a_notice():
    p = plan("blip2", True, "auto", True, H100)
    assert not p.load_in_8bit
    assert any("bitsandbytes is not installed" in n for n in p.notices)


def test_gpu_the_installed_torch_was_not_built_for_stops_with_one_line():
    p100_on_cu128 = GpuFacts("Tesla P100-PCIE-16GB", 1, (6, 0), 15.9, CU128, True, "2.10.0+cu128")
    p = plan("blip", False, "auto", True, p100_on_cu128)
    assert p.error == ("Tesla P100-PCIE-16GB (compute capability 6.0) is not supported by the "
                       "installed torch 2.10.0+cu128 (built for sm_70 sm_75 sm_80 sm_86 sm_90 "
                       "sm_100 sm_120); choose GPU T4 x2 in the kernel settings "
                       "(Settings → Accelerator)")
    assert "\n" not in p.error and p.line().startswith("hardware plan: cannot train here: ")
    with pytest.raises(VicapError, match="^Tesla P100-PCIE-16GB .* choose GPU T4 x2"):
        p.check()


@pytest.mark.parametrize("capability,arch_list,ok", [
    ((7, 5), ("sm_70", "sm_75"), True),
    ((8, 6), ("sm_80",), True),  # a cubin runs on later minor versions of its major
    ((8, 9), ("sm_90",), False),  # but never on an earlier one
    ((9, 0), ("sm_80", "compute_80"), True),  # PTX is JIT-compiled for newer GPUs
    ((6, 0), ("sm_70", "compute_70"), False),
    ((12, 0), ("sm_90a", "sm_120"), True),
    ((7, 5), (), True),  # torch could not say
])
def test_arch_support(capability, arch_list, ok):
    assert hardware.arch_supported(capability, arch_list) is ok


def test_cpu_runs_mini_only():
    cpu = GpuFacts(torch_version="2.13.0+cpu")
    mini = plan("blip", False, "auto", False, cpu)
    assert (mini.device, mini.mixed_precision, mini.error) == ("cpu", "no", "")
    assert mini.line() == "hardware plan: no GPU (CPU only); mixed precision no"
    real = plan("blip2", True, "auto", True, cpu)
    assert real.error == ("no CUDA GPU here, and real profiles need one (on Kaggle: choose GPU T4 "
                          "x2 in the kernel settings (Settings → Accelerator)); on a CPU use "
                          "--profile mini")
    assert not real.load_in_8bit
    with pytest.raises(VicapError, match="real profiles need one"):
        real.check()


def test_detect_and_env_describe_the_same_facts():
    facts = hardware.detect()
    assert env.describe()["accelerator"].startswith(facts.describe())


def test_an_emulated_t4_gets_a_t4s_plan_on_the_cpu(monkeypatch):
    monkeypatch.setenv(hardware.EMULATE_T4, "1")
    facts = hardware.detect()
    assert facts.emulated and facts.count == 0
    blip2 = plan("blip2", True, "auto", True, facts)
    assert (blip2.device, blip2.mixed_precision, blip2.error) == ("cpu", "fp16", "")
    assert blip2.load_in_8bit == facts.bitsandbytes
    assert plan("blip", False, "bf16", True, facts).mixed_precision == "fp16"
    assert plan("blip", False, "no", True, facts).mixed_precision == "no"
    assert "emulated on the CPU" in blip2.line()
    assert blip2.accelerate_precision == "no"  # the trainer drives fp16 itself
    monkeypatch.setenv(hardware.EMULATE_T4, "0")
    real = plan("blip2", True, "auto", True, hardware.detect())
    assert real.error and not real.load_in_8bit and real.mixed_precision == "no"


@pytest.fixture
def threads(monkeypatch):
    """torch's thread count restored after the test; no thread variables set."""
    import torch

    saved = torch.get_num_threads()
    for name in (hardware.THREADS, "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hardware.os, "cpu_count", lambda: 4)
    yield torch
    torch.set_num_threads(saved)


@pytest.mark.parametrize("load, expected", [(0.2, 4), (2.6, 1), (3.0, 1), (9.0, 1), (1.4, 3)])
def test_threads_follow_the_cores_the_load_leaves_free(threads, monkeypatch, load, expected):
    monkeypatch.setattr(hardware.os, "getloadavg", lambda: (load, load, load))
    line = hardware.torch_threads()
    assert threads.get_num_threads() == expected and line.startswith(f"{expected} (4 cores")


def test_vicap_threads_wins_and_omp_is_honoured(threads, monkeypatch):
    monkeypatch.setattr(hardware.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setenv(hardware.THREADS, " 2 ")
    assert hardware.torch_threads().startswith("2 (VICAP_THREADS")
    assert threads.get_num_threads() == 2
    monkeypatch.delenv(hardware.THREADS)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads.set_num_threads(3)  # what torch took from OMP_NUM_THREADS is left alone
    assert hardware.torch_threads().startswith("3 (OMP_NUM_THREADS")


@pytest.mark.parametrize("value", ["0", "5", "two", "-1", "1.5"])
def test_bad_vicap_threads_is_one_line_naming_it(threads, monkeypatch, capsys, value):
    monkeypatch.setenv(hardware.THREADS, value)
    with pytest.raises(VicapError, match=r"VICAP_THREADS=.*from 1 to 4"):
        hardware.torch_threads()
    assert main(["train", "--profile", "mini", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "VICAP_THREADS" in err
