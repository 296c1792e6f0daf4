"""``askshift models``: model families, the paper's fine-tuning presets and the fine-tuning strategies."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("models", help="list model families, fine-tuning presets (openai_clip, augreg_in21k) and strategies",
                            description="List model families (names look like family:spec), the paper's fine-tuning "
                                        "presets and the fine-tuning strategies.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from askshift.lib.models.families import MODEL_FAMILIES
    from askshift.lib.models.strategies import PRESETS, STRATEGIES

    print("Model families (NAME = family:spec):")
    print(_indent(MODEL_FAMILIES.describe()))
    for entry in MODEL_FAMILIES.entries():
        family = entry.value
        extras = ", text tower (zero-shot heads)" if family.text_tower else ""
        print(f"  {family.name}: recipe {family.recipe}, strategies {','.join(family.strategies)}{extras}; "
              f"images: {family.images}; weights: {family.weights}")
    print()
    print("Fine-tuning presets (askshift run finetune --preset NAME):")
    width = max(len(n) for n in PRESETS.names())
    for p in PRESETS.entries():
        print(f"  {p.name:<{width}}  {p.value.model}  strategies {','.join(p.value.strategies)}")
        print(f"  {'':<{width}}  {p.description}")
    print()
    print("Fine-tuning strategies (--strategies a,b):")
    print(_indent(STRATEGIES.describe()))
    print()
    print("Pre-trained weights: --pretrained PATH (a local file), or `askshift pretrain --out PATH` for the local "
          "glyph stand-in; the hub only where it is reachable.")
    return 0


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())
