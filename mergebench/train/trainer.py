"""``train_expert``: one full fine-tuning run with TRL's ``SFTTrainer``, checked first, saved atomically.

Order of work, so that every input error surfaces before the model is loaded or a step is taken:

1. the domain, the output folder and the batch arithmetic (``effective_batch_size`` over the devices);
2. the base: parsed and pinned (``org/name[@rev]`` → commit sha) with its safetensors headers and config;
3. the data: every source pinned and its ``train`` split loaded (:mod:`mergebench.train.data`);
4. tokenising with :func:`mergebench.prompt.encode_chat` (labels only on responses), then the model;
5. training: TRL gets ``input_ids`` + ``labels`` and packs whole conversations (best-fit decreasing,
   padding-free: position ids restart at every conversation, so attention never crosses two of them and the
   first token of each is masked). TRL keeps a dataset's own ``labels`` as they are, so the loss mask is
   exactly the one ``encode_chat`` made (``tests/train/test_packing.py`` checks it on packed batches);
6. saving into a temporary folder beside ``out_dir`` (weights in ``save_dtype``, config, generation config,
   tokenizer, ``mergebench_train.yaml``, the card), renamed into place, then pushed in one commit.

Under ``accelerate launch`` every process runs this function; only the main process writes and pushes.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PrinterCallback, ProgressCallback, TrainerCallback

from mergebench.data.publish import check_output
from mergebench.errors import RefError
from mergebench.hub.models import ResolvedModel, resolve
from mergebench.hub.push import push_folder
from mergebench.hub.refs import Ref
from mergebench.merge.card import inherited_license
from mergebench.prompt import PROMPT_FORMAT_VERSION
from mergebench.train.card import MANIFEST_VERSION, validate_expert_card, write_manifest_and_card
from mergebench.train.config import TrainConfig
from mergebench.train.data import (
    DataSource,
    DomainStats,
    build_train_dataset,
    expected_domains,
    load_split,
    resolve_sources,
)
from mergebench.work import atomic_folder

logger = logging.getLogger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class TrainResult:
    """What a run produced. ``seconds`` is the whole call (checks, tokenising, training, saving, pushing);
    ``train_seconds`` the optimizer loop alone. ``losses`` are the logged ``(step, loss)`` pairs."""

    out_dir: Path
    domain: str
    seconds: float
    train_seconds: float
    steps: int
    train_tokens: int
    final_loss: float
    base_revision: str | None
    data_revisions: dict[str, str]
    pushed_url: str | None
    losses: tuple[tuple[int, float], ...] = ()
    data_stats: dict[str, DomainStats] = field(default_factory=dict)


class _RunLog(TrainerCallback):
    """Collects the logged losses and token counts, shows one progress bar on stderr, and forces a log at the last
    step (so ``final_loss`` is the loss of the last steps, whatever ``logging_steps`` is).

    It replaces the trainer's printer and progress callbacks, which print the log dictionaries to stdout, where
    the command's result goes."""

    def __init__(self, progress: bool) -> None:
        self.losses: list[tuple[int, float]] = []
        self.tokens = 0
        self.progress = progress
        self.bar: tqdm | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="Training", unit="step",
                        disable=not self.progress, file=sys.stderr)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
        if state.global_step >= state.max_steps:
            control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append((state.global_step, float(logs["loss"])))
            logger.info("step %d: loss %.4f", state.global_step, float(logs["loss"]))
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{float(logs['loss']):.4f}")
        if logs and "num_tokens" in logs:
            self.tokens = int(logs["num_tokens"])

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()


def _manifest(*, out_dir: Path, domain: str, base: str, base_model: ResolvedModel, base_repo_id: str | None,
              sources: Mapping[str, DataSource], stats: Mapping[str, DomainStats], config: TrainConfig, trainer: Any,
              callback: _RunLog, accumulation: int, train_seconds: float) -> dict[str, Any]:
    """The contents of ``mergebench_train.yaml``: pinned inputs, the exact config, what the run did."""
    return {
        "mergebench_train_version": MANIFEST_VERSION,
        "model_name": out_dir.name,
        "domain": domain,
        "base": {"source": base, "repo_id": base_repo_id or base_model.ref.repo_id, "revision": base_model.sha},
        "data": {d: {"source": s.text, "repo_id": s.repo_id, "revision": s.revision} for d, s in sources.items()},
        "stats": {"rows": sum(s.rows for s in stats.values()), "tokens": sum(s.tokens for s in stats.values()),
                  "response_tokens": sum(s.response_tokens for s in stats.values()),
                  "rows_dropped": sum(s.rows_dropped for s in stats.values()), "steps": trainer.state.global_step,
                  "train_tokens": callback.tokens,
                  "final_loss": callback.losses[-1][1] if callback.losses else float("nan"),
                  "train_seconds": round(train_seconds, 2),
                  "seconds": 0.0,  # checks, tokenising and training; set by the main process before saving
                  "devices": trainer.accelerator.num_processes, "gradient_accumulation": accumulation,
                  "per_domain": {d: vars(s) for d, s in stats.items()}},
        "losses": [list(pair) for pair in callback.losses],
        "prompt_format_version": PROMPT_FORMAT_VERSION,
        "config": config.model_dump(),
        "eval_results": [],
    }


def resolve_base(base: str | Path) -> ResolvedModel:
    """Pin the base and check it is a model: safetensors weights and a ``config.json`` with a ``model_type``.

    Raises:
        RefError: not a folder or ``org/name[@rev]``, no safetensors, or no model config.
    """
    ref = Ref.parse(str(base))
    model = resolve(ref)
    if not model.config.get("model_type"):
        raise RefError(f"'{base}' has no config.json with a 'model_type'; it is not a transformers model.",
                            ref=str(base), hint="Pass a model folder or Hub repo saved with save_pretrained().")
    return model


def _load_source(model: ResolvedModel) -> tuple[str, dict[str, Any]]:
    """``(path_or_repo, from_pretrained kwargs)`` reading exactly the pinned commit."""
    if model.ref.local_path is not None:
        return str(model.ref.local_path), {}
    return str(model.ref.repo_id), {"revision": model.sha}


def train_expert(*, base: str | Path, domain: str, data: Mapping[str, str | Path], out_dir: Path,
                 config: TrainConfig, push_to: str | None = None, progress: bool = True,
                 base_repo_id: str | None = None, private: bool = False, overwrite: bool = False) -> TrainResult:
    """Fine-tune ``base`` on ``domain`` (or ``"all"``, the multi-task baseline) and write the expert folder.

    Args:
        base: a local model folder or ``org/name[@revision]``.
        domain: ``instruction``, ``math``, ``multilingual``, ``coding``, ``safety`` or ``all``.
        data: domain → dataset folder or ``org/name[@revision]``; exactly ``domain`` (all five for ``all``).
        out_dir: the expert folder (written atomically; must be empty or missing unless ``overwrite``).
        config: the recipe (:func:`mergebench.train.load_train_config`).
        push_to: Hub repo to upload the folder to, in one commit, after checking its card with the Hub.
        progress: show progress bars.
        base_repo_id: the Hub id to name as parent in the card when ``base`` is a local copy of a Hub model.
        private: create the pushed repo as private.
        overwrite: replace a non-empty ``out_dir``.

    Returns:
        A :class:`TrainResult`.

    Raises:
        ConfigError: unknown domain, data not matching the domain, batch sizes that do not divide.
        RefError: ``base`` is not a model. DataError: a data source or split is missing or unusable.
        OutputExistsError: ``out_dir`` holds something and ``overwrite`` is false.
    """
    start = time.monotonic()
    out_dir = Path(out_dir)
    expected_domains(domain)
    check_output(out_dir, overwrite=overwrite)
    accumulation = config.gradient_accumulation(int(os.environ.get("WORLD_SIZE", "1")))
    base_model = resolve_base(base)
    sources = resolve_sources(domain, data)
    splits = {d: load_split(s) for d, s in sources.items()}

    threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        trainer, callback, stats = _fit(base_model, sources, splits, config, accumulation, out_dir, progress)
    except BaseException:
        _drop_work_dir(out_dir, config, finished=False)
        raise
    finally:
        torch.set_num_threads(threads)
    train_seconds = trainer.state.log_history[-1].get("train_runtime", 0.0) if trainer.state.log_history else 0.0
    manifest = _manifest(out_dir=out_dir, domain=domain, base=str(base), base_model=base_model,
                         base_repo_id=base_repo_id, sources=sources, stats=stats, config=config, trainer=trainer,
                         callback=callback, accumulation=accumulation, train_seconds=train_seconds)
    final_loss = manifest["stats"]["final_loss"]
    pushed_url = None
    state = trainer.accelerator.get_state_dict(trainer.model)  # collective under DeepSpeed ZeRO-3 / FSDP
    if trainer.accelerator.is_main_process:
        manifest["license"], manifest["license_warning"] = inherited_license([base_model])
        manifest["stats"]["seconds"] = round(time.monotonic() - start, 2)
        try:
            with atomic_folder(out_dir) as tmp:
                _save_model(trainer.accelerator.unwrap_model(trainer.model), state, tmp, _DTYPES[config.save_dtype])
                trainer.processing_class.save_pretrained(tmp)
                card = write_manifest_and_card(tmp, manifest)
                if push_to:
                    validate_expert_card(card)  # an invalid card fails here: nothing written, nothing pushed
        except BaseException:
            _drop_work_dir(out_dir, config, finished=False)
            raise
        _drop_work_dir(out_dir, config, finished=True)
        if push_to:
            parent = manifest["base"]["repo_id"] or base
            pushed_url = push_folder(out_dir, push_to, private=private,
                                     commit_message=f"MergeBench {domain} expert of {parent}")
    trainer.accelerator.wait_for_everyone()
    return TrainResult(out_dir=out_dir, domain=domain, seconds=time.monotonic() - start, train_seconds=train_seconds,
                       steps=trainer.state.global_step, train_tokens=callback.tokens, final_loss=final_loss,
                       base_revision=base_model.sha, data_revisions={d: s.revision for d, s in sources.items()},
                       pushed_url=pushed_url, losses=tuple(callback.losses), data_stats=stats)


def _trainer_dir(out_dir: Path) -> Path:
    """Where the trainer keeps its checkpoints: beside ``out_dir``, the same path on every process."""
    return out_dir.parent / f".{out_dir.name}.trainer"


def build_trainer(base: ResolvedModel, sources: Mapping[str, DataSource], splits: Mapping[str, Any],
                  config: TrainConfig, *, accumulation: int, work_dir: Path, progress: bool = True,
                  callbacks: Sequence[Any] = ()) -> tuple[Any, dict[str, DomainStats]]:
    """Tokenise the splits, load the base in float32 and build the ``SFTTrainer`` (not trained yet).

    ``work_dir`` is the trainer's own folder (checkpoints); it must be the same path on every process.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    path, kwargs = _load_source(base)
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    dataset, stats = build_train_dataset(sources, tokenizer, max_length=config.max_length,
                                         chat_template=config.chat_template, max_rows=config.max_rows_per_domain,
                                         seed=config.seed, num_proc=config.dataset_num_proc, splits=splits)
    args = SFTConfig(
        output_dir=str(work_dir), max_length=config.max_length, packing=config.packing, packing_strategy="bfd",
        per_device_train_batch_size=config.per_device_batch_size, gradient_accumulation_steps=accumulation,
        num_train_epochs=config.epochs, max_steps=config.max_steps or -1, learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler, warmup_steps=config.warmup_ratio, optim=config.optimizer,
        adam_beta1=config.adam_beta1, adam_beta2=config.adam_beta2, adam_epsilon=config.adam_epsilon,
        weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm, bf16=config.precision == "bf16",
        activation_checkpointing=config.gradient_checkpointing, logging_steps=config.logging_steps,
        save_strategy="steps" if config.save_steps else "no", save_steps=config.save_steps or 500,
        seed=config.seed, data_seed=config.seed, report_to=[], disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(), dataset_num_proc=config.dataset_num_proc,
    )
    # After the arguments: under `accelerate launch` with DeepSpeed ZeRO-3 they register the config that makes
    # from_pretrained partition the weights while loading, instead of every process loading a full copy.
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=list(callbacks))
    for printer in (PrinterCallback, ProgressCallback):  # they print log dicts to stdout
        trainer.remove_callback(printer)
    return trainer, stats


def _drop_work_dir(out_dir: Path, config: TrainConfig, *, finished: bool) -> None:
    """Remove the trainer's folder once the expert is saved, or after a failure when it holds no checkpoint."""
    if finished or not config.save_steps:
        shutil.rmtree(_trainer_dir(out_dir), ignore_errors=True)


def _fit(base: ResolvedModel, sources: Mapping[str, DataSource], splits: Mapping[str, Any], config: TrainConfig,
         accumulation: int, out_dir: Path, progress: bool) -> tuple[Any, _RunLog, dict[str, DomainStats]]:
    """Build the trainer and train, resuming from the last checkpoint when ``save_steps`` left one."""
    from transformers.trainer_utils import get_last_checkpoint

    callback = _RunLog(progress)
    work_dir = _trainer_dir(out_dir)
    trainer, stats = build_trainer(base, sources, splits, config, accumulation=accumulation, work_dir=work_dir,
                                   progress=progress, callbacks=[callback])
    checkpoint = get_last_checkpoint(str(work_dir)) if config.save_steps and work_dir.is_dir() else None
    if checkpoint:
        logger.info("Resuming from %s", checkpoint)
    with torch.enable_grad():  # grad mode is global: lighteval, for one, switches it off at import
        trainer.train(resume_from_checkpoint=checkpoint)
    return trainer, callback, stats


def _save_model(model: Any, state: dict[str, torch.Tensor], folder: Path, dtype: torch.dtype) -> None:
    """Save weights (cast to ``dtype``), config and generation config; the config records ``dtype``.

    Tensors that share storage (tied embeddings and output head) are cast once and stay shared, so
    ``save_pretrained`` drops the tied copy as it does for the base: an expert must hold exactly the base's
    tensor names, or it cannot be merged with it.
    """
    model.config.use_cache = True  # gradient checkpointing switched it off for training
    model.config.dtype = dtype
    cast: dict[tuple[int, tuple[int, ...], tuple[int, ...]], torch.Tensor] = {}
    state = {k: cast.setdefault((v.data_ptr(), tuple(v.shape), v.stride()), v.to(dtype)) for k, v in state.items()}
    model.save_pretrained(folder, state_dict=state)
