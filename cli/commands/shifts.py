"""``askshift shifts``: list the shift presets and the shift transforms, one line each."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("shifts", help="list shift presets (--shift) and shift transforms",
                            description="List experiment presets usable as --shift (tint_p=P and label_p=P take "
                                        "any P in range; a .yaml/.json path loads a spec file) and the shift "
                                        "transforms a spec can apply.")
    parser.set_defaults(func=_list)


def _list(args: argparse.Namespace) -> int:
    from askshift.lib.data.shifts import SHIFTS
    from askshift.lib.data.specs import PRESETS

    print("presets (--shift NAME):")
    for line in PRESETS.describe().splitlines():
        print(f"  {line}")
    print("  tint_p=P        any 0 <= P <= 1;  label_p=P  any 0 < P <= 0.5;  FILE.yaml|FILE.json  a spec file")
    print("transforms (DistributionSpec.shift):")
    for line in SHIFTS.describe().splitlines():
        print(f"  {line}")
    print("  label_p         (not a transform) class sampling rates, applied by the loader")
    return 0
