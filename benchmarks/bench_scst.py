"""What the CIDEr-D reward costs inside a self-critical training step on this CPU: whole SCST
steps of the `mini` profile (sample k captions per image, reward, baseline, log-probs, backward,
optimizer step) timed with the reward's share inside them, one torch thread, CPU seconds.

    vicap train --profile mini --out runs/mini          # a cross-entropy adapter first
    python benchmarks/bench_scst.py --adapter runs/mini/best [--steps 6] [--set scst.samples=5]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from vicap_utils import scst
from vicap_utils.config import load_config
from vicap_utils.train import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True, help="a cross-entropy run's best/ (mini)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps, after one untimed")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = scst.training_config(load_config("mini", overrides=args.overrides))
    reward_seconds = []
    timed = scst.rewards

    def rewards(*a, **k):
        start = time.process_time()
        out = timed(*a, **k)
        reward_seconds.append(time.process_time() - start)
        return out

    scst.rewards = rewards  # Scst calls the module's function: time each call
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(cfg, out, log=lambda *a: None, scst_from=args.adapter)
        trainer.model.train()
        batches = iter(trainer.loader)
        steps, rewards_per_step = [], []
        for i in range(args.steps + 1):
            batch, reward_seconds[:] = next(batches), []
            start = time.process_time()
            loss = trainer.batch_loss(batch)
            loss.backward()
            trainer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            if i:  # the first step warms caches up
                steps.append(time.process_time() - start)
                rewards_per_step.append(sum(reward_seconds))
    step, reward = statistics.median(steps), statistics.median(rewards_per_step)
    s = cfg.scst
    print(json.dumps({"images_per_step": s.batch_size, "samples_per_image": s.samples,
                      "training_captions": sum(map(len, trainer.scst.refs)),
                      "step_cpu_s": round(step, 4), "reward_cpu_s": round(reward, 4),
                      "reward_share": round(reward / step, 4)}))
    print(f"SCST step {step:.3f} s, of which the reward {reward:.4f} s: {reward / step:.1%} "
          f"(target < 20 %)")


if __name__ == "__main__":
    main()
