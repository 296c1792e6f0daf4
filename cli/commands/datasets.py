"""``askshift datasets``: list the dataset registry with a one-line description and expected layout each."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("datasets", help="list the datasets askshift can read",
                            description="List registered datasets. Every dataset but digits reads a local --root "
                                        "(nothing is downloaded); -v also prints the expected on-disk layout.")
    parser.add_argument("-v", "--verbose", action="store_true", help="also print splits and the expected layout")
    parser.set_defaults(func=_list)


def _list(args: argparse.Namespace) -> int:
    from askshift.lib.data.datasets import DATASETS, dataset_info

    width = max(len(n) for n in DATASETS.names())
    for entry in DATASETS.entries():
        print(f"{entry.name:<{width}}  {entry.description}")
        if args.verbose:
            info = dataset_info(entry.name)
            print(f"{'':<{width}}    splits: {', '.join(info.splits)}; layout: {info.layout}")
    return 0
