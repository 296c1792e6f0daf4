"""``askshift pretrain --out PATH``: build a local stand-in for a pre-trained model (generated letter glyphs)."""
from __future__ import annotations

import argparse

from askshift.cli.main import CliError, fail

DESCRIPTION = (
    "Pre-train a network on a generated corpus of letter glyphs (many fonts, random glyph and background "
    "colours, textures, scales, rotations, blur; no digits) and save it as a checkpoint that "
    "`--pretrained PATH` loads like downloaded weights (cnn: and timm: models). "
    "This is a STAND-IN for CLIP / AugReg pre-training, made so the whole method runs on a laptop with no "
    "model hub: tiny, one domain, minutes of CPU. Its one job is to give features that do not depend on "
    "colour, as real pre-training does. Deterministic for a given --seed; an existing file made with the "
    "same settings is reused."
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("pretrain", help="build a local 'pre-trained' checkpoint (stand-in for CLIP/AugReg)",
                            description=DESCRIPTION)
    parser.add_argument("--out", required=True, metavar="PATH", help="checkpoint file to write (e.g. pretrained.pt)")
    parser.add_argument("--model", default="cnn:small", help="architecture to pre-train (default cnn:small)")
    parser.add_argument("--steps", type=int, default=None, help="optimisation steps, one fresh batch each (default 800)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default 128)")
    parser.add_argument("--lr", type=float, default=None, help="peak AdamW learning rate (default 3e-3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 is faster on a machine busy with other work)")
    parser.add_argument("--force", action="store_true", help="rebuild even if PATH holds a checkpoint of the same settings")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from askshift.lib.models.pretrain import PretrainConfig, pretrain
    from askshift.lib.registry import UnknownNameError

    values = {"model": args.model, "seed": args.seed}
    for field in ("steps", "batch_size", "lr"):
        if getattr(args, field) is not None:
            values[field] = getattr(args, field)
    try:
        config = PretrainConfig(**values)
    except ValidationError as exc:
        raise fail(exc, "pretrain") from None
    from askshift.cli.main import check_device, check_seeds

    check_seeds(args.seed)
    check_device(args.device)
    _check_out(args.out)
    if args.threads is not None:
        if args.threads < 1:
            raise CliError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    try:
        from askshift.lib.models.families import ModelName

        ModelName.parse(config.model)
        result = pretrain(config, args.out, device=args.device, force=args.force)
    except (UnknownNameError, ValueError) as exc:
        raise fail(exc) from None
    print(result.path)
    return 0


def _check_out(out: str) -> None:
    """The checkpoint's folder must exist (or be creatable) and be writable before minutes of pre-training."""
    from pathlib import Path

    folder = Path(out).expanduser().absolute().parent
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise CliError(f"--out {out}: {existing} is a file, not a folder")
    import tempfile

    try:  # os.access says yes to root even on /proc; a real probe file does not lie
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".askshift-probe-"):
            pass
    except OSError:
        raise CliError(f"--out {out}: cannot write in {existing} (pick a writable folder)") from None
    if Path(out).is_dir():
        raise CliError(f"--out {out} is a folder; give a file name such as {Path(out) / 'pretrained.pt'}")
