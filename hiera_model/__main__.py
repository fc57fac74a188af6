"""`python -m hiera_model` (or `hiera-model`): the variant table, checkpoint inspection and the models.lock
commands. Exit status: 0 ok, 1 a check failed (a file that models.lock or the Hub disagrees with, or that
nothing verifies), 2 bad input. The lock commands need no torch; the others say which extra to install."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtime.artifact import MAX_SIDE
from runtime.shell import FAILED, OK, Parser, Whole, error_line, run_command, say

from . import lock, require_torch
from .errors import HieraModelError, VerificationError
from .hub import published_sha256
from .sam2_config import SAM2_TASKS, SAM2_VARIANTS, Sam2Config
from .variants import TASKS, VARIANTS, get_variant


def _info(args) -> int:
    sam2_names = [name for name in args.variants if name in SAM2_VARIANTS] if args.variants else list(SAM2_VARIANTS)
    names = [name for name in args.variants if name not in SAM2_VARIANTS] if args.variants else list(VARIANTS)
    for name in names:  # an unknown name is refused before torch is imported
        get_variant(name)
    require_torch()
    import torch

    from .model import Hiera

    if names:
        _hiera_table(names, torch, Hiera)
    if sam2_names:
        _sam2_table(sam2_names, torch, blank_line=bool(names))
    return OK


def _print_table(rows) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _sam2_table(names, torch, blank_line: bool) -> None:
    """SAM 2's image encoders: architecture, parameters of the encoder we export, licence, transformers id."""
    from .sam2 import Sam2ImageEncoder

    rows = [("SAM 2 variant", "embed", "heads", "depths", "windows", "global", "encoder params (M)", "license",
             "transformers id")]
    for name in names:
        v = SAM2_VARIANTS[name]
        with torch.device("meta"):
            params = sum(p.numel() for p in Sam2ImageEncoder(v.config).parameters()) / 1e6
        c = v.config
        rows.append((name, str(c.embed_dim), "-".join(map(str, c.num_heads)), "-".join(map(str, c.depths)),
                     "-".join(map(str, c.window_sizes)), ",".join(map(str, c.global_blocks)), f"{params:.2f}",
                     v.license, v.transformers_id))
    if blank_line:
        print()
    _print_table(rows)
    print("SAM 2 image encoders (task image-encoder): 1024 x 1024, HieraDet with windows and global-attention blocks,\n"
          "the FPN neck, conv_s0/conv_s1 and the no-memory embedding; task backbone: HieraDet's four stage maps "
          "(docs/sam2.md).")


def _hiera_table(names, torch, Hiera) -> None:
    rows = [("variant", "embed", "heads", "depths", "params (M)", "published", "GMACs", "top-1",
             "transformers id")]
    for name in names:
        v = get_variant(name)
        with torch.device("meta"):  # count parameters without allocating them
            params = sum(p.numel() for p in Hiera(v.config).parameters()) / 1e6
        c = v.config
        rows.append((name, str(c.embed_dim), "-".join(map(str, c.num_heads)), "-".join(map(str, c.depths)),
                     f"{params:.2f}", f"{v.params_m:g}", f"{v.gmacs:g}", f"{v.top1:.1f}", v.transformers_id or "-"))
    _print_table(rows)
    print("Images: 224 x 224, patch 7/4, query stride 2 x 2 for 3 stages, mask units 8 x 8, top-1 on ImageNet-1k.\n"
          "Video (16x224): 16 frames, patch 3x7x7/2x4x4, query stride 1x2x2, mask units 1x8x8, top-1 on Kinetics-400.")


def _inspect(args) -> int:
    if args.variant is not None and args.variant not in SAM2_VARIANTS:  # refused before torch is imported
        get_variant(args.variant)
    require_torch()
    from .checkpoints import load

    size = None if args.image_size is None else (args.image_size * 2)[:2]  # one number: a square
    model = load(args.path, variant=args.variant, task=args.task, allow_unverified=args.allow_unverified,
                 input_size=size)
    c, provenance = model.config, model.provenance
    if lock.BY_HUB in provenance["source"]:
        how = "record its sha256 in models.lock with: python -m hiera_model lock fill FILE"
    elif provenance["verified"]:
        how = f"verified by {lock.BY_LOCK}"
    else:
        how = "not verified: models.lock does not name it" if provenance["source"].startswith("local:") else \
            "not verified"
    if isinstance(c, Sam2Config):  # its image encoder, or its HieraDet alone (task backbone)
        what = "SAM 2 image encoder" if model.task in SAM2_TASKS else f"SAM 2's HieraDet (task {model.task})"
        say(f"{args.path}: {what}, embed_dim {c.embed_dim}, depths {c.depths}, heads {c.num_heads}, "
            f"windows {c.window_sizes}, global blocks {c.global_blocks}, input {c.input_size}, "
            f"weights {provenance['source']} ({how})")
        return OK
    classes = c.num_classes if model.head is not None else "-"
    say(f"{args.path}: Hiera embed_dim {c.embed_dim}, depths {c.depths}, heads {c.num_heads}, "
        f"input {c.input_size}, task {model.task}, classes {classes}, "
        f"labels {'yes' if model.labels else 'no'}, weights {provenance['source']} ({how})")
    return OK


def _lock_verify(args) -> int:
    entries = lock.read()
    status = OK
    for path in args.files:
        try:
            matched, digest, verified_by = lock.check(path, entries)
            if not matched:
                raise VerificationError(f"{path}: no models.lock entry names this file (sha256 {digest})")
            if not verified_by:
                raise VerificationError(lock.unrecorded(path, matched, digest))
        except VerificationError as error:
            say(error_line(error), sys.stderr)
            status = FAILED
            continue
        say(f"{path}: ok, {matched[0].label} sha256 {digest} (verified by {verified_by})")
    return status


def _lock_fill(args) -> int:
    for path in args.files:
        entry = lock.fill(path)
        hub = " (the Hub's sha256 agrees)" if published_sha256(path) else ""
        say(f"{path}: recorded {entry.label} size {entry.size} sha256 {entry.sha256}{hub} in {lock.default_path()}")
    return OK


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = Parser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    info = commands.add_parser("info", help="the table of published variants")
    info.add_argument("variants", nargs="*", help="only these (default: all)")
    info.set_defaults(run=_info)
    inspect = commands.add_parser("inspect", help="load a local checkpoint and describe it")
    inspect.add_argument("path")
    inspect.add_argument("--variant", help="architecture to use instead of the one the file implies: "
                         + ", ".join(VARIANTS))
    inspect.add_argument("--task", choices=[*TASKS, *SAM2_TASKS], default="classify")
    inspect.add_argument("--image-size", type=Whole(1, MAX_SIDE), nargs="+", metavar=("H", "W"),
                         help=f"build for this input size, each side 1 to {MAX_SIDE} (one number: a square); position "
                              "embeddings are resized")
    inspect.add_argument("--allow-unverified", action="store_true",
                         help="accept a published file that nothing records a sha256 for yet (with a warning)")
    inspect.set_defaults(run=_inspect)
    lock_parser = commands.add_parser("lock", help="check or record checkpoint files in models.lock")
    lock_commands = lock_parser.add_subparsers(dest="lock_command", required=True, parser_class=Parser)
    verify = lock_commands.add_parser("verify", help="check files against their models.lock entries (exit 1 if any "
                                                     "fails)")
    verify.add_argument("files", nargs="+")
    verify.set_defaults(run=_lock_verify)
    fill = lock_commands.add_parser("fill", help="record the sha256 and size of downloaded files")
    fill.add_argument("files", nargs="+")
    fill.set_defaults(run=_lock_fill)
    return parser


def run(argv) -> int:
    prog = "python -m hiera_model" if Path(sys.argv[0]).name == "__main__.py" else "hiera-model"
    command_line = parser(prog)
    args = command_line.parse_args(argv)
    if getattr(args, "image_size", None) is not None and len(args.image_size) > 2:
        command_line.error(f"argument --image-size: takes H [W], not {len(args.image_size)} numbers")
    return args.run(args)


def main(argv=None) -> int:
    return run_command(run, argv, errors=(HieraModelError,), failed=(VerificationError,))


if __name__ == "__main__":
    sys.exit(main())
