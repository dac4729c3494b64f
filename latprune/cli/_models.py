"""`latprune models`: list the model zoo."""

from __future__ import annotations

import argparse

from latprune.models import create_model, list_models, model_info


def _models(args: argparse.Namespace) -> int:
    print(f"{'model':<14} {'input':>6} {'classes':>7} {'params':>9}  description")
    for name in list_models():
        info = model_info(name)
        model = create_model(name, num_classes=info.default_num_classes)
        params = sum(p.numel() for p in model.parameters())
        size, classes = info.default_input_size, info.default_num_classes
        print(f"{name:<14} {size:>6} {classes:>7} {params / 1e6:>8.2f}M  {info.description}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="List the models in the zoo.", description="List the models in the zoo.")
    p.set_defaults(func=_models)
