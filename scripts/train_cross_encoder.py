"""Fine-tune all-MiniLM-L6-v2 as a question-pair classifier (the cross-encoder verifier).

Runs in the PyTorch environment (``.venv-vllm``: CPU torch + transformers), never in the
app's: the gateway only loads the exported, int8-quantised graph with ONNX Runtime.
The whole pipeline is ``scripts/build_cross_encoder.sh``; this is its training step::

    .venv-vllm/bin/python scripts/train_cross_encoder.py --examples EXAMPLES.jsonl \
        --model-dir MINILM_DIR --out OUT_DIR [--seed 17 --epochs 2 --freeze-layers 2 --lr 5e-5]

``EXAMPLES.jsonl`` comes from ``services.caching.semantic.cross_data`` (fine-tune pairs
plus synthetic hard negatives). A student (``--layers 0,2,4``: the base model's
transformer layers it keeps) learns from examples that carry a teacher's log-odds: its
target is the mean of the label and the teacher's probability, or the teacher's
probability alone for an unlabelled pair (``--teacher-weight``). Deterministic for a
seed and a thread count on one machine: the shuffle, the head's initialisation, the pair
order flips and dropout all draw from it.
Standalone on purpose (stdlib, torch, transformers, tokenizers): the app's packages
are not installed in the training environment.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import BertForSequenceClassification


def encode_batch(tokenizer: Tokenizer, pairs: list[tuple[str, str]]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[CLS] a [SEP] b [SEP] token ids, attention mask and segment ids, padded per batch."""
    encodings = tokenizer.encode_batch(pairs)
    length = max(len(e.ids) for e in encodings)
    ids = torch.zeros((len(pairs), length), dtype=torch.long)
    mask = torch.zeros_like(ids)
    types = torch.zeros_like(ids)
    for row, enc in enumerate(encodings):
        n = len(enc.ids)
        ids[row, :n] = torch.tensor(enc.ids)
        mask[row, :n] = 1
        types[row, :n] = torch.tensor(enc.type_ids)
    return ids, mask, types


def length_batches(rows: list[dict], batch_size: int, rng: random.Random,
                   window: int = 8) -> list[list[int]]:
    """One epoch of batches in random order, each of similar-length pairs: shuffled, then
    sorted by length within runs of ``window`` batches, so that a batch pads little (a
    batch is padded to its longest pair) and still mixes the data."""
    order = list(range(len(rows)))
    rng.shuffle(order)
    span = batch_size * window
    batches = []
    for start in range(0, len(order), span):
        run = sorted(order[start : start + span],
                     key=lambda i: len(rows[i]["a"]) + len(rows[i]["b"]))
        batches += [run[j : j + batch_size] for j in range(0, len(run), batch_size)]
    rng.shuffle(batches)
    return batches


def target(row: dict, teacher_weight: float) -> float:
    """The probability an example is trained towards: its label, its teacher's
    probability, or a mix of both."""
    teacher = row.get("teacher")
    if teacher is None:
        return float(row["label"])
    soft = 1.0 / (1.0 + math.exp(-float(teacher)))
    if row["label"] is None:
        return soft
    return (1.0 - teacher_weight) * float(row["label"]) + teacher_weight * soft


class _Logits(torch.nn.Module):
    """The classifier with plain tensor inputs and one output: the logit of "same question"."""

    def __init__(self, model: BertForSequenceClassification) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).logits[:, 0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--warmup", type=float, default=0.1, help="fraction of steps")
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop early (and save) after this long; the learning-rate "
                             "schedule stays the planned one, so --stop-after-steps with the "
                             "recorded step count reproduces the same weights")
    parser.add_argument("--stop-after-steps", type=int, default=None,
                        help="stop after this many of the planned steps")
    parser.add_argument("--threads", type=int, default=1,
                        help="one: on a shared 2-core box two threads wait on each other")
    parser.add_argument("--layers", default=None,
                        help="comma-separated base-model layers to keep (a smaller student); "
                             "default all")
    parser.add_argument("--teacher-weight", type=float, default=0.5,
                        help="weight of the teacher's probability in a labelled example's "
                             "target (an unlabelled one has only the teacher's)")
    parser.add_argument("--freeze-layers", type=int, default=2,
                        help="keep the embeddings and this many lower layers as shipped: "
                             "less backward work per step, and the word table (11.7M of "
                             "the 22.7M weights) needs no optimizer state")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    examples = args.examples.read_bytes()
    rows = [json.loads(line) for line in examples.decode().splitlines() if line]
    tokenizer = Tokenizer.from_file(str(args.model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(args.max_length, strategy="longest_first")
    model = BertForSequenceClassification.from_pretrained(args.model_dir, num_labels=1)
    if args.layers:
        keep = [int(i) for i in args.layers.split(",")]
        model.bert.encoder.layer = torch.nn.ModuleList(model.bert.encoder.layer[i] for i in keep)
        model.config.num_hidden_layers = len(keep)
    frozen = [model.bert.embeddings, *model.bert.encoder.layer[: args.freeze_layers]]
    for module in frozen:
        for parameter in module.parameters():
            parameter.requires_grad_(False)
    model.train()

    per_epoch = (len(rows) + args.batch_size - 1) // args.batch_size
    total = int(per_epoch * args.epochs)
    warmup = max(1, int(total * args.warmup))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / (total - warmup))))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    print(f"{len(rows)} examples, {per_epoch} steps/epoch, {total} steps", flush=True)

    step, started, batches, history = 0, time.monotonic(), [], []
    stop_at = min(total, args.stop_after_steps or total)
    while step < stop_at:
        if args.max_seconds is not None and time.monotonic() - started > args.max_seconds:
            print(f"time budget reached after {step} steps", flush=True)
            break
        if not batches:
            batches = length_batches(rows, args.batch_size, rng)
        batch = [rows[i] for i in batches.pop()]
        # either text may be the stored one: show both orders
        pairs = [(r["a"], r["b"]) if rng.random() < 0.5 else (r["b"], r["a"]) for r in batch]
        labels = torch.tensor([target(r, args.teacher_weight) for r in batch])
        ids, mask, types = encode_batch(tokenizer, pairs)
        logits = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits[:, 0]
        loss = loss_fn(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        step += 1
        history.append(float(loss.detach()))
        if step % 10 == 0 or step == stop_at:
            recent = sum(history[-10:]) / len(history[-10:])
            elapsed = time.monotonic() - started
            print(f"step {step}/{total} loss {recent:.4f} {elapsed / step:.2f} s/step",
                  flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(args.out)  # model.safetensors + config.json
    # the app builds the ONNX graph from these weights (cross_encoder_graph.py); these
    # logits let it check that graph against PyTorch
    checks = [("How do I learn Python?", "How can I learn Python?"),
              ("What is 2 + 2?", "What is 2 + 3?"),
              ("Can I take ibuprofen with alcohol?", "Can I not take ibuprofen with alcohol?")]
    sample = encode_batch(tokenizer, checks)
    with torch.no_grad():
        reference = _Logits(model)(*sample).tolist()
    (args.out / "training.json").write_text(json.dumps({
        "seed": args.seed, "epochs": args.epochs, "planned_steps": total, "steps": step,
        "batch_size": args.batch_size, "lr": args.lr, "warmup": args.warmup,
        "max_length": args.max_length, "examples": len(rows),
        "examples_sha256": hashlib.sha256(examples).hexdigest(),
        "freeze_layers": args.freeze_layers, "threads": args.threads,
        "layers": args.layers, "teacher_weight": args.teacher_weight,
        "distilled_examples": sum(r.get("teacher") is not None for r in rows),
        "final_loss": sum(history[-50:]) / len(history[-50:]),
        "seconds": round(time.monotonic() - started, 1),
        "torch": torch.__version__,
        "checks": [[a, b, x] for (a, b), x in zip(checks, reference, strict=True)],
    }, indent=1) + "\n")
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
