"""``askshift data write NAME --split SPLIT --out DIR``: write one dataset split to an FFCV .beton."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="write dataset splits to FFCV .beton files",
                            description="Prepare datasets as FFCV .beton files (cached by a hash of their inputs).")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    write = actions.add_parser("write", help="write (or reuse) one split; prints the file path and record count",
                               description="Write one split of a registered dataset (see `askshift datasets`) to "
                                           "DIR/<dataset>/<split>-<hash>.beton with its metadata table and manifest. "
                                           "A valid existing file is reused; a corrupted or half-written one is rewritten.")
    write.add_argument("name", metavar="NAME", help="dataset name, e.g. digits, cifar10, imagefolder, wilds:waterbirds")
    write.add_argument("--split", required=True, help="dataset split, e.g. train, val")
    write.add_argument("--root", default=None, help="dataset folder (all datasets but digits)")
    write.add_argument("--out", required=True, metavar="DIR", help="cache folder for .beton files")
    write.add_argument("--write-mode", choices=["raw", "jpg", "smart"], default=None,
                       help="image storage (default: raw for small array datasets, jpg for image folders)")
    write.add_argument("--max-resolution", type=int, default=None, help="longest stored side (default: dataset's)")
    write.add_argument("--jpeg-quality", type=int, default=90)
    write.add_argument("--num-workers", type=int, default=0, help="writer processes (default: all cores)")
    write.set_defaults(func=_write)


def _write(args: argparse.Namespace) -> int:
    from askshift.cli.main import fail
    from askshift.lib.data.beton import BetonOptions, ensure_beton
    from askshift.lib.data.datasets import DatasetLayoutError, dataset_info
    from askshift.lib.registry import UnknownNameError

    try:
        dataset_info(args.name)
        options = BetonOptions(write_mode=args.write_mode, max_resolution=args.max_resolution,
                               jpeg_quality=args.jpeg_quality, num_workers=args.num_workers)
        from askshift.lib.data.datasets import load_dataset
        from askshift.lib.data.image_check import check_images_readable

        dataset = load_dataset(args.name, args.split, args.root)  # layout and files, before --out is touched
        if dataset.files:
            check_images_readable(dataset.files, f"dataset {args.name!r} split {args.split!r}")
        beton = ensure_beton(args.name, args.split, args.out, args.root, options)
    except (UnknownNameError, DatasetLayoutError, ValueError, OSError) as exc:
        raise fail(exc) from None
    print(f"{beton.path}")
    print(f"records: {beton.num_records}")
    return 0
