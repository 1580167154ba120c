"""Expert training: fine-tune a base on one domain (or all five: the multi-task baseline) with TRL's SFTTrainer.

>>> from mergebench.train import load_train_config, train_expert                        # doctest: +SKIP
>>> result = train_expert(base="org/base", domain="math", data={"math": "org/mergebench-math"},
...                       out_dir=Path("experts/base_math"), config=load_train_config("paper"))  # doctest: +SKIP

Modules: :mod:`.config` (the recipe), :mod:`.data` (pinned sources, one prompt format), :mod:`.trainer` (the run),
:mod:`.card` (the expert card, ``add_eval_results``). Submodules import ``torch`` and ``trl`` only when used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mergebench.train.card import add_eval_results
    from mergebench.train.config import TrainConfig, load_train_config
    from mergebench.train.data import MULTITASK
    from mergebench.train.trainer import TrainResult, train_expert

_LAZY = {"add_eval_results": "card", "TrainConfig": "config", "load_train_config": "config", "MULTITASK": "data",
         "TrainResult": "trainer", "train_expert": "trainer"}

__all__ = ["MULTITASK", "TrainConfig", "TrainResult", "add_eval_results", "load_train_config", "train_expert"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"mergebench.train.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mergebench.train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
