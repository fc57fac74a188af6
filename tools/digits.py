"""A small Hiera trained on real data, to measure what export precisions cost in accuracy.

Random weights say nothing about accuracy after quantization, so this trains transformers' own
`HieraForImageClassification` on scikit-learn's bundled handwritten digits (8 x 8, upscaled to 64 x 64
by the same preprocessing the runtime applies), saves it with `save_pretrained` next to its image
processor, and evaluates PyTorch and the exported artifacts on the held-out split.

    python -m tools.digits train                       # ~1 min on 2 cores; writes models/digits/
    python -m export --weights models/digits --out artifacts
    python -m tools.digits evaluate artifacts/hiera_digits_classify*.onnx
    python -m tools.digits images heldout/             # the held-out split as PNGs, one folder per class
    python -m tools.digits images train/ --split train # calibration images: --precision qdq --calibration train/
    python -m runtime predict heldout/ --model artifacts/hiera_digits_classify.onnx --json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

ROOT = Path(__file__).resolve().parents[1]

import hiera_model  # noqa: E402
from export.parity import run_artifact  # noqa: E402
from hiera_model import HieraModelError, lock  # noqa: E402
from runtime.errors import HieraRuntimeError  # noqa: E402
from runtime.artifact import MAX_BATCH  # noqa: E402
from runtime.preprocess import Preprocessing  # noqa: E402
from runtime.shell import Parser, Whole, run_command  # noqa: E402

CHECKPOINT = ROOT / "models" / "digits"
SIZE = 64
MAX_EPOCHS = 1000
PREPROCESSING = Preprocessing(resize_shortest_edge=SIZE, crop_size=(SIZE, SIZE), resample="bicubic",
                              mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
SEED = 0
LOCK_SOURCE = "hiera-deploy/digits"  # names models/digits/ in models.lock (see hiera_model.lock.Entry.names)


def split() -> dict[str, tuple[list[Image.Image], np.ndarray]]:
    """The digits as 8 x 8 grayscale images (0..16 scaled to 0..255), 75% train, 25% held out, stratified."""
    digits = load_digits()
    pixels = np.round(digits.images * 255 / 16).astype(np.uint8)
    train, test = train_test_split(np.arange(len(pixels)), test_size=0.25, stratify=digits.target, random_state=SEED)
    return {name: ([Image.fromarray(pixels[i], mode="L") for i in index], digits.target[index])
            for name, index in (("train", train), ("test", test))}


def preprocess(images) -> np.ndarray:
    return np.stack([PREPROCESSING(image) for image in images])


def train(args) -> None:
    # transformers (the test extra): the reference model, and the processor whose config the export reads
    from transformers import BitImageProcessor, HieraConfig, HieraForImageClassification

    torch.manual_seed(SEED)
    data = split()
    x, y = torch.from_numpy(preprocess(data["train"][0])), torch.from_numpy(data["train"][1])
    config = HieraConfig(embed_dim=16, image_size=[SIZE, SIZE], num_heads=[1, 2, 4, 8], depths=[1, 1, 2, 1],
                         num_labels=10, id2label={i: str(i) for i in range(10)},
                         label2id={str(i): i for i in range(10)})
    model = HieraForImageClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = args.epochs * -(-len(x) // args.batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    started = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x))
        total = 0.0
        for start in range(0, len(x), args.batch):
            index = order[start:start + args.batch]
            # Shift each image by up to 4 pixels: the digits are centered, held-out ones less exactly.
            shift = torch.randint(-4, 5, (2,)).tolist()
            batch = torch.roll(x[index], shifts=shift, dims=(2, 3))
            loss = torch.nn.functional.cross_entropy(model(batch).logits, y[index], label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
        print(f"epoch {epoch + 1:3d}/{args.epochs}  loss {total / len(x):.4f}  {time.time() - started:5.0f}s",
              flush=True)
    model.eval()
    with torch.no_grad():
        test_x = torch.from_numpy(preprocess(data["test"][0]))
        accuracy = (model(test_x).logits.argmax(1).numpy() == data["test"][1]).mean()
    print(f"held-out top-1: {accuracy:.2%}")
    model.save_pretrained(args.out)
    BitImageProcessor(do_resize=True, size={"shortest_edge": SIZE}, resample=Image.Resampling.BICUBIC,
                      do_center_crop=True, crop_size={"height": SIZE, "width": SIZE}, do_rescale=True,
                      do_normalize=True, image_mean=list(PREPROCESSING.mean), image_std=list(PREPROCESSING.std),
                      do_convert_rgb=True).save_pretrained(args.out)
    if args.out.resolve() == CHECKPOINT:  # the repository's copy: its provenance goes into models.lock
        record_in_lock(args.out / "model.safetensors")
        print(f"saved {args.out}, recorded in models.lock as {LOCK_SOURCE}")
    else:
        print(f"saved {args.out}")


def record_in_lock(weights: Path) -> None:
    """The checkpoint's provenance: models.lock's entry for it, with the new file's size and sha256."""
    entries = [e for e in lock.read() if e.source != LOCK_SOURCE]
    entries.append(lock.Entry(variant="digits", task="classify", format="transformers", source=LOCK_SOURCE,
                              revision=None, file=weights.name, size=weights.stat().st_size,
                              sha256=lock.sha256(weights)))
    lock.write(entries)


def evaluate(args) -> None:
    """Top-1 on the held-out split: PyTorch fp32 (this package's model) and each artifact."""
    images, labels = split()["test"]
    inputs = preprocess(images)
    with torch.no_grad():
        logits = hiera_model.load(args.checkpoint)(torch.from_numpy(inputs)).numpy()
    results = {"PyTorch fp32": float((logits.argmax(1) == labels).mean())}
    for file in args.artifacts:
        logits = run_artifact(file, {"pixel_values": inputs})["logits"]
        results[file.name] = float((logits.argmax(1) == labels).mean())
    width = max(map(len, results))
    print(f"{'model':{width}s}  held-out top-1 ({len(labels)} images)")
    for name, accuracy in results.items():
        print(f"{name:{width}s}  {accuracy:.2%}")
    if args.json:
        Path(args.json).write_text(json.dumps({"images": len(labels), "top1": results}, indent=2) + "\n")


def write_images(args) -> None:
    """A split as 8 x 8 grayscale PNGs under `<out>/<class>/`: the held-out one to run through the runtime's
    CLI, the training one to calibrate the qdq artifact's int8 scales."""
    images, labels = split()[args.split]
    for i, (image, label) in enumerate(zip(images, labels)):
        (args.out / str(label)).mkdir(parents=True, exist_ok=True)
        image.save(args.out / str(label) / f"{i:03d}.png")
    print(f"wrote {len(images)} images to {args.out}")


def run(argv) -> int:
    parser = Parser(prog="tools/digits.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = commands.add_parser("train", help="train and save models/digits/")
    p.add_argument("--epochs", type=Whole(1, MAX_EPOCHS), default=30, help=f"default 30, at most {MAX_EPOCHS}")
    p.add_argument("--batch", type=Whole(1, MAX_BATCH), default=64, help=f"default 64, at most {MAX_BATCH}")
    p.add_argument("--out", type=Path, default=CHECKPOINT)
    p.set_defaults(run=train)
    p = commands.add_parser("evaluate", help="held-out top-1 of the checkpoint and of exported artifacts")
    p.add_argument("artifacts", nargs="*", type=Path)
    p.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    p.add_argument("--json", type=Path, help="also write the accuracies here")
    p.set_defaults(run=evaluate)
    p = commands.add_parser("images", help="write a split as PNG files, a folder per class")
    p.add_argument("out", type=Path)
    p.add_argument("--split", choices=["test", "train"], default="test", help="default: test, the held-out images")
    p.set_defaults(run=write_images)
    args = parser.parse_args(argv)
    args.run(args)
    return 0


def main(argv=None) -> int:
    # a file named wrong: one line and status 2, as the CLIs say it
    return run_command(run, argv, errors=(HieraModelError, HieraRuntimeError, OSError))


if __name__ == "__main__":
    sys.exit(main())
