#!/usr/bin/python3
"""LoRA vs full fine-tuning on the built-in model: what each learns of the
example task (examples/zorbl_*.jsonl) and what each keeps of the base's world
(its retention set), side by side, in one run.

    python3 bench/retention_bench.py [--model DIR]

DIR defaults to data/base/retune-tiny (made by `retune serve` or
`retune pretrain --out DIR`); it is pre-trained here if missing. Both runs use
the same data, seed and number of steps; each method gets the learning rate
that suits it (LoRA's adapters start at zero and need a larger one). Prints a
table; the figures are whatever they are."""
import argparse
import json
import os
import subprocess
import sys

BIN = os.environ.get("RETUNE_BIN", "build/retune")
RUNS = [
    ("LoRA r=8 all-linear", ["--method", "lora", "--lr", "3e-3", "--lora-r", "8", "--target-modules", "all-linear"]),
    ("LoRA r=8 q,v", ["--method", "lora", "--lr", "3e-3", "--lora-r", "8", "--target-modules", "q_proj,v_proj"]),
    ("full", ["--method", "full", "--lr", "3e-4"]),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="data/base/retune-tiny")
    ap.add_argument("--epochs", default="20")
    args = ap.parse_args()
    if not os.path.exists(os.path.join(args.model, "config.json")):
        subprocess.run([BIN, "pretrain", "--out", args.model], check=True)
    retention = os.path.join(args.model, "retention.jsonl")
    rows = []
    for name, extra in RUNS:
        cmd = [BIN, "train", "--model", args.model, "--train", "examples/zorbl_train.jsonl",
               "--valid", "examples/zorbl_valid.jsonl", "--retention", retention, "--out",
               f"/tmp/retention-bench-{len(rows)}", "--epochs", args.epochs, "--batch-size", "4",
               "--warmup-ratio", "0.1", "--seed", "1", *extra]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        rows.append((name, r))
    print(f"model {args.model}, task examples/zorbl (50 train / 5 valid), {args.epochs} epochs, batch 4, seed 1")
    head = f"{'method':<22}{'trainable':>12}{'%':>7}{'task valid loss':>17}{'retention before':>18}{'after':>9}{'peak RSS MiB':>14}{'seconds':>9}"
    print(head)
    for name, r in rows:
        print(f"{name:<22}{r['trainable_params']:>12}{r['trainable_percent']:>7.2f}{r['valid_loss']:>17.4f}"
              f"{r['retention_loss_before']:>18.4f}{r['retention_loss_after']:>9.4f}"
              f"{r['peak_rss_bytes'] / 2**20:>14.1f}{r['seconds']:>9.1f}")


if __name__ == "__main__":
    sys.exit(main())
