"""Training in several processes (two CPU processes over gloo stand in for Kaggle's T4 x2): the
feature cache shared out under an explicit timeout, the schedule counted in optimizer steps per
process, each process's own RNG state resumed."""
from __future__ import annotations

import io
import json
import os
import random
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from vicap_utils.ops import launch
from vicap_utils.ops.checkpoint import RunState, load_last, save_last
from vicap_utils.train import PROCESS_GROUP_TIMEOUT

ROOT = Path(__file__).resolve().parents[1]
CPU_DDP = {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
MAX_STEPS = 5  # fewer than the run's 2 epochs x 7 steps per process: the cap applies
SETTINGS = ["data.synthetic_images=48", "train.epochs=2", "train.batch_size=8",
            "train.grad_accum=2", f"train.max_steps={MAX_STEPS}", "train.patience=0",
            "eval.num_beams=1", "eval.max_new_tokens=6"]

# Run in each process: a real Trainer, watched (images through the ViT, the learning rate of each
# optimizer step, the process group's timeout), then each process's RNG made its own, saved,
# scrambled and resumed by a second Trainer; every process writes what it saw to rank<N>.json.
PROBE = textwrap.dedent("""
    import json, random, sys
    from pathlib import Path

    import numpy as np
    import torch
    import torch.distributed as dist

    from vicap_utils.ops import features
    from vicap_utils.config import load_config
    from vicap_utils.dataset import image_rows
    from vicap_utils.train import Trainer


    def seed_all(seed):
        random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)


    def draws():
        return [random.random(), float(np.random.rand()), float(torch.rand(1))]


    def main():
        out, cfg = Path(sys.argv[1]), load_config("mini", overrides=sys.argv[2:])
        encoded, real = [], features.image_features

        def counting(model, pixels):
            encoded.append(len(pixels))
            return real(model, pixels)

        features.image_features = counting
        trainer = Trainer(cfg, out, log=lambda *a, **k: None)
        rank, data, ex = trainer.accelerator.process_index, trainer.data, trainer.examples
        report = {"encoded": sum(encoded),
                  "images": sum(len(image_rows(cs)[0]) for cs in (data.train, data.val)),
                  "timeout_s": dist.distributed_c10d._get_default_group()._get_backend(
                      torch.device("cpu")).options._timeout.total_seconds()}
        shared = torch.stack([ex.val_source(r) for r in range(len(ex.val_ids))]).float()
        paths = [data.val_images / data.val.images[i].file_name for i in ex.val_ids]
        alone = features.encode_images(trainer.cap, paths, show=False).float()
        report["val_features_max_diff"] = float((shared - alone).abs().max())
        lrs, step = [], trainer.scheduler.step

        def recording():
            if trainer.accelerator.sync_gradients:
                lrs.append(trainer.optimizer.param_groups[0]["lr"])
            step()

        trainer.scheduler.step = recording
        trainer._train()
        report.update(lrs=lrs, lr_after=trainer.scheduler.get_last_lr()[0])
        seed_all(rank)  # each process's own stream
        trainer.save_last()
        report["draws_saved"] = draws()
        seed_all(99)
        encoded.clear()
        Trainer(cfg, out, resume=True, log=lambda *a, **k: None)
        report.update(draws_resumed=draws(), encoded_on_resume=sum(encoded))
        (out.parent / f"rank{rank}.json").write_text(json.dumps(report))


    if __name__ == "__main__":  # not in the workers multiprocessing starts
        main()
""")


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> list[dict]:
    """What each of two processes saw in one mini run cut short by max_steps, then resumed."""
    tmp = tmp_path_factory.mktemp("two_processes")
    (tmp / "probe.py").write_text(PROBE)
    path = os.pathsep.join([str(tmp), str(ROOT), os.environ.get("PYTHONPATH", "")])
    out = io.StringIO()
    code, _ = launch.run_streamed(
        launch.distributed_command(["probe", str(tmp / "run"), *SETTINGS], 2),
        {**CPU_DDP, "PYTHONPATH": path}, out)
    assert code == 0, out.getvalue()[-3000:]
    return [json.loads((tmp / f"rank{rank}.json").read_text()) for rank in range(2)]


@pytest.mark.slow
def test_each_process_encodes_its_share_of_the_images_once(reports):
    images = reports[0]["images"]
    assert sum(r["encoded"] for r in reports) == images  # none repeats another's
    assert all(0 < r["encoded"] <= -(-images // 2) + 1 for r in reports)
    assert all(r["val_features_max_diff"] < 1e-3 for r in reports)  # as one process computes
    assert [r["encoded_on_resume"] for r in reports] == [0, 0]  # the shared file is reused


@pytest.mark.slow
def test_the_processes_wait_for_each_other_under_the_explicit_timeout(reports):
    assert [r["timeout_s"] for r in reports] == [PROCESS_GROUP_TIMEOUT.total_seconds()] * 2


@pytest.mark.slow
def test_with_max_steps_on_two_processes_the_lr_decays_to_zero_and_never_climbs(reports):
    lrs = reports[0]["lrs"]
    assert len(lrs) == MAX_STEPS and lrs == reports[1]["lrs"]
    peak = lrs.index(max(lrs))
    assert all(a > b for a, b in zip(lrs[peak:], lrs[peak + 1:]))
    assert reports[0]["lr_after"] == pytest.approx(0.0, abs=1e-12)  # the cosine's end


@pytest.mark.slow
def test_each_process_resumes_its_own_rng_state(reports):
    assert reports[0]["draws_saved"] != reports[1]["draws_saved"]
    for r in reports:
        assert r["draws_resumed"] == r["draws_saved"]


def test_a_checkpoint_with_one_rng_state_still_resumes(tmp_path):
    """rng.pt from before per-process states: one state, restored in every process."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    save_last(tmp_path, model, optimizer, scheduler, None, RunState())
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    old = {"python": random.getstate(), "numpy": np.random.get_state(),
           "torch": torch.get_rng_state()}
    expected = [random.random(), float(np.random.rand()), float(torch.rand(1))]
    torch.save(old, tmp_path / "last" / "rng.pt")
    for rank in (0, 1):
        torch.manual_seed(99)
        load_last(tmp_path, model, optimizer, scheduler, None, rank)
        assert [random.random(), float(np.random.rand()), float(torch.rand(1))] == expected
