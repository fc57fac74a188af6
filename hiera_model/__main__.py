"""`python -m hiera_model`: the variant table, checkpoint inspection and the models.lock commands."""

from __future__ import annotations

import argparse
import sys

import torch

from . import lock
from .checkpoints import load
from .errors import HieraModelError
from .model import Hiera
from .variants import TASKS, VARIANTS, get_variant


def _info(args) -> None:
    names = args.variants or list(VARIANTS)
    rows = [("variant", "embed", "heads", "depths", "params (M)", "published", "GMACs", "top-1",
             "transformers id")]
    for name in names:
        v = get_variant(name)
        with torch.device("meta"):  # count parameters without allocating them
            params = sum(p.numel() for p in Hiera(v.config).parameters()) / 1e6
        c = v.config
        rows.append((name, str(c.embed_dim), "-".join(map(str, c.num_heads)), "-".join(map(str, c.depths)),
                     f"{params:.2f}", f"{v.params_m:g}", f"{v.gmacs:g}", f"{v.top1:.1f}", v.transformers_id or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    print("Images: 224 x 224, patch 7/4, query stride 2 x 2 for 3 stages, mask units 8 x 8, top-1 on ImageNet-1k.\n"
          "Video (16x224): 16 frames, patch 3x7x7/2x4x4, query stride 1x2x2, mask units 1x8x8, top-1 on Kinetics-400.")


def _inspect(args) -> None:
    model = load(args.path, variant=args.variant, task=args.task, allow_unverified=args.allow_unverified)
    c = model.config
    print(f"{args.path}: Hiera embed_dim {c.embed_dim}, depths {c.depths}, heads {c.num_heads}, "
          f"input {c.input_size}, task {model.task}, classes {c.num_classes if model.head is not None else '-'}, "
          f"labels {'yes' if model.labels else 'no'}, weights {model.provenance['source']} "
          f"({'verified' if model.provenance['verified'] else 'not verified'} against models.lock)")


def _lock_verify(args) -> None:
    entries = lock.read()
    for path in args.files:
        matched, digest = lock.match(path, entries)
        if not matched:
            raise HieraModelError(f"{path}: no models.lock entry names this file (sha256 {digest})")
        if matched[0].sha256 != digest:
            raise HieraModelError(lock.unrecorded(path, matched, digest))
        print(f"{path}: ok, {matched[0].label} sha256 {digest}")


def _lock_fill(args) -> None:
    for path in args.files:
        entry = lock.fill(path)
        print(f"{path}: recorded {entry.label} size {entry.size} sha256 {entry.sha256} in {lock.default_path()}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hiera_model", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="the table of published variants")
    info.add_argument("variants", nargs="*", help="only these (default: all)")
    info.set_defaults(run=_info)
    inspect = commands.add_parser("inspect", help="load a local checkpoint and describe it")
    inspect.add_argument("path")
    inspect.add_argument("--variant", help="architecture to use instead of the one the file implies")
    inspect.add_argument("--task", choices=TASKS, default="classify")
    inspect.add_argument("--allow-unverified", action="store_true",
                         help="accept a published file whose sha256 models.lock does not record yet (with a warning)")
    inspect.set_defaults(run=_inspect)
    lock_parser = commands.add_parser("lock", help="check or record checkpoint files in models.lock")
    lock_commands = lock_parser.add_subparsers(dest="lock_command", required=True)
    verify = lock_commands.add_parser("verify", help="check files against their models.lock entries")
    verify.add_argument("files", nargs="+")
    verify.set_defaults(run=_lock_verify)
    fill = lock_commands.add_parser("fill", help="record the sha256 and size of downloaded files")
    fill.add_argument("files", nargs="+")
    fill.set_defaults(run=_lock_fill)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except HieraModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
