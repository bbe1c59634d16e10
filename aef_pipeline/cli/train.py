"""`train`: the encoder trained on a training set, exported as a spec `run --model` uses.

aef-pipeline train --data train.zarr --model tiny --out runs/r1 --steps 600
torchrun --nproc-per-node 4 -m aef_pipeline.cli train --data train.zarr --model paper --out runs/p1 --minutes 600
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

EXIT_INTERRUPTED = 130


def add_commands(commands: Any) -> None:
    train = commands.add_parser(
        "train", help="train the STP encoder on a training set (one process, or many under torchrun)"
    )
    train.add_argument("--data", type=Path, required=True, help="a finished training set (aef-pipeline train-set)")
    train.add_argument("--model", default="tiny", help="tiny, paper, or a spec TOML: the architecture to train")
    train.add_argument("--out", type=Path, required=True, help="run directory: checkpoints, log, curves, model.toml")
    train.add_argument("--steps", type=int, help="optimizer steps (the learning rate decays to zero at the last)")
    train.add_argument("--minutes", type=float, help="wall-clock budget; with --steps, whichever ends first")
    train.add_argument("--batch-size", type=int, default=8, help="windows per step over all processes (default 8)")
    train.add_argument("--learning-rate", type=float, default=1e-3, help="peak AdamW learning rate (default 1e-3)")
    train.add_argument("--seed", type=int, default=0, help="initialisation, data order and every random draw")
    train.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (default 100)")
    train.add_argument("--device", default="auto", help="auto (this process's GPU, else CPU), cpu, cuda or cuda:N")
    train.add_argument("--text", type=Path, help="text vectors at points and times (GeoParquet...): adds a CLIP term")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=train_command)


def train_command(args: argparse.Namespace) -> int:
    from aef_pipeline.training.engine import TrainRequest, train

    request = TrainRequest(
        data=args.data,
        model=args.model,
        out=args.out,
        steps=args.steps,
        minutes=args.minutes,
        batch_size=args.batch_size,
        resume=args.resume,
        seed=args.seed,
        learning_rate=args.learning_rate,
        checkpoint_every=args.checkpoint_every,
        device=args.device,
        progress=not args.quiet,
        text=args.text,
    )
    try:
        report = train(request)
    except KeyboardInterrupt:
        print(
            f"aef-pipeline: interrupted; the last step taken (if any) is checkpointed in {args.out}: "
            "run the same command with --resume to go on",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun the first process speaks for all
    first, last = report.first_eval, report.last_eval
    change = {k: f"{first[k]:.4g} -> {last[k]:.4g}" for k in last if k in first}
    print(f"trained {report.steps} steps ({report.windows_per_second:.2f} windows/s); fixed evaluation batch: {change}")
    print(f"model spec: {report.spec}  (use it as: aef-pipeline run --model {report.spec} ...)", file=sys.stdout)
    return 0
