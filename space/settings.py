"""The Space's configuration: where results come from, where jobs live and go, and the limits.

Three layers, each overriding the one before: ``mergebench-space.json`` next to this file (written by
``mergebench space deploy``: the results shown, where submissions go), environment variables (a Space's
secrets and variables are environment variables; ``HF_TOKEN`` is the Space's own write token and is read by
``huggingface_hub`` itself, never here), and keyword overrides from ``mergebench space`` and the tests.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "MERGEBENCH_"
SETTINGS_FILE = Path(__file__).resolve().parent / "mergebench-space.json"


@dataclass(frozen=True)
class SpaceConfig:
    """What one running Space reads, writes and allows."""

    results: str = "mergebench/mergebench-results"
    """Results shown: a Hub results dataset id, a benchmark run's ``results/`` folder, or one results file."""
    work_dir: Path = Path("space-state")
    """Local disk for live state: ``jobs/*.json``, logs, merge outputs. Not a bucket mount (no locking there)."""
    results_repo: str | None = None
    """Results dataset that submissions push to (``None``: results stay local, for offline Tiny use)."""
    requests_repo: str | None = None
    """Dataset that mirrors every job's request and status as ``requests/{job_id}.json``."""
    models_org: str | None = None
    """Namespace merged models are pushed to (``None``: the results repo's namespace; else not pushed)."""
    backend: str = "transformers"
    """``vllm`` on the Space's GPU, ``transformers`` on CPU (MergeBench-Tiny)."""
    refusal_judge: str | None = None
    """The safety tasks' judge for submissions, local or as Jobs: a classifier's model id (``allenai/wildguard``,
    the paper's judge, on the GPU), pinned to its commit per submission; ``None``: the rule-based judge (CPU
    default; results label it so)."""
    eval_tasks: tuple[str, ...] = ()
    """Tasks to score submissions on (empty: the tasks the base's reference results were scored on)."""
    eval_max_samples: int | None = None
    """Items per task for submissions (``None``: as the base's reference results)."""
    validation_data: dict[str, str] = field(default_factory=dict)
    """Domain → validation dataset repo, for data-dependent methods (RegMean, Fisher, trained masks)."""
    max_active_per_user: int = 2
    """Pending + running jobs one user may have at once."""
    max_daily_per_user: int = 5
    """Jobs one user may submit per 24 hours."""
    max_attempts: int = 2
    """A job interrupted by restarts this many times is failed instead of resumed."""
    hub_url: str = "https://huggingface.co"
    """Where model links point."""
    dispatch: str = "local"
    """``local``: the in-process worker, one job at a time on the Space's own hardware (CPU, MergeBench-Tiny).
    ``hf-jobs``: each submission a Hugging Face Job on ``jobs_flavor`` (:mod:`dispatch`), so the Space can run
    on CPU hardware and up to ``jobs_max_concurrent`` submissions run at once."""
    jobs_flavor: str = "a10g-large"
    """The Jobs' hardware flavor (``list_jobs_hardware``: a10g-large, l40sx1, a100-large, ...)."""
    jobs_backend: str | None = None
    """The Jobs' evaluation backend; ``None``: ``vllm`` on GPU flavors, ``transformers`` on ``cpu-*`` flavors."""
    jobs_max_concurrent: int = 4
    """Submissions running as Jobs at once (the others wait in the queue)."""
    jobs_token: str = "space"
    """Who launches (and pays for) the Jobs: ``space``: the Space's ``HF_TOKEN`` secret (an organisation token;
    Jobs in ``jobs_namespace``), ``user``: the signed-in user's OAuth token (``jobs`` scope; Jobs in their
    namespace, billed to them)."""
    jobs_namespace: str | None = None
    """Namespace the Jobs run in with ``jobs_token = space`` (``None``: the token's owner)."""
    jobs_image: str | None = None
    """Image the Jobs run in, with ``mergebench`` installed (``None``: this Space's own, ``hf.co/spaces/$SPACE_ID``)."""
    jobs_timeout: str = "3h"
    """A Job running longer is stopped (and its submission failed)."""
    jobs_poll_seconds: float = 5.0
    """How often running Jobs are inspected and their logs fetched."""

    @property
    def evaluation_backend(self) -> str:
        """The backend a Job evaluates with (:attr:`jobs_backend`, else by the flavor's hardware)."""
        if self.jobs_backend:
            return self.jobs_backend
        return "transformers" if self.jobs_flavor.startswith("cpu-") else "vllm"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, *, file: Path | None = SETTINGS_FILE,
                 **overrides: Any) -> SpaceConfig:
        """``file``'s settings (if it exists), then ``MERGEBENCH_<FIELD>`` variables (``MERGEBENCH_EVAL_TASKS``
        comma-separated, ``MERGEBENCH_VALIDATION_DATA`` JSON), then ``overrides`` (``None`` values ignored)."""
        env = os.environ if env is None else env
        values = _read_file(file) if file is not None and file.is_file() else {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f.name, raw)
        config = cls(**values)
        return replace(config, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def model_namespace(self) -> str | None:
        if self.models_org:
            return self.models_org
        return self.results_repo.split("/")[0] if self.results_repo else None


def _read_file(path: Path) -> dict[str, Any]:
    """The deploy's settings: a JSON object of ``SpaceConfig`` fields."""
    from mergebench.errors import ConfigError

    data = json.loads(path.read_text(encoding="utf-8"))
    known = {f.name for f in fields(SpaceConfig)}
    unknown = sorted(set(data) - known) if isinstance(data, dict) else ["(not a JSON object)"]
    if unknown:
        raise ConfigError(f"{path} holds settings the Space does not know: {unknown}.",
                          hint=f"Use a JSON object of SpaceConfig fields: {', '.join(sorted(known))}.")
    return {k: _parse(k, v) if isinstance(v, str) else v for k, v in data.items()}


def _parse(name: str, raw: str) -> Any:
    if name == "work_dir":
        return Path(raw)
    if name == "eval_tasks":
        return tuple(t.strip() for t in raw.split(",") if t.strip())
    if name == "validation_data":
        return json.loads(raw)
    if name in ("eval_max_samples", "max_active_per_user", "max_daily_per_user", "max_attempts",
                "jobs_max_concurrent"):
        return int(raw)
    if name == "jobs_poll_seconds":
        return float(raw)
    return raw or None
