"""Every error MergeBench raises on purpose.

All derive from :class:`MergeBenchError` and also from the closest stdlib exception, so callers can catch
either. Messages say what failed, quote the values involved and end with the next action to take.
``huggingface_hub`` errors are never wrapped: they already carry the server's explanation.
"""

from __future__ import annotations

import errno


class MergeBenchError(Exception):
    """Root of every MergeBench error. ``hint`` is a next step the CLI prints as ``Hint: ...``."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # OSError subclasses would otherwise format errno/filename instead
        return self.message


class ConfigError(MergeBenchError, ValueError):
    """A recipe, parameter or command-line value is invalid."""


class RefError(MergeBenchError, ValueError):
    """A reference (``org/name@rev`` or a local path; a model, dataset or Space) cannot be resolved."""

    def __init__(self, message: str, *, ref: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.ref = ref


class IncompatibleModelsError(MergeBenchError, ValueError):
    """Models disagree on architecture, tensor names, shapes or dtypes. ``problems`` lists every one."""

    def __init__(self, problems: list[str]) -> None:
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"{len(problems)} incompatibilit{'y' if len(problems) == 1 else 'ies'} between the models:\n{lines}",
            hint="Experts must be fine-tunes of the base: same architecture, tensor names, shapes and dtypes.",
        )
        self.problems = problems


class CorruptFileError(MergeBenchError, OSError):
    """A safetensors file is truncated, has a bad header or holds non-finite values."""

    def __init__(self, message: str, *, model: str, filename: str, tensor: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.model = model
        self.filename = filename
        self.tensor = tensor


class NonFiniteError(CorruptFileError):
    """An input tensor holds NaN or Inf (checked by default; ``check_finite: false`` disables it)."""


class NetworkError(MergeBenchError, OSError):
    """The Hub could not be read: retries exhausted (drops, stalls, 5xx) or an answer no retry can fix (4xx).

    Unlike input errors, an interrupted merge's ``.NAME.partial`` folder is kept: ``--resume`` continues it."""

    def __init__(self, message: str, *, model: str, filename: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint or "Check the network and HF_ENDPOINT, then re-run with --resume to "
                                                "continue where the merge stopped.")
        self.model = model
        self.filename = filename


class PushError(MergeBenchError, OSError):
    """Uploading to the Hub failed after its retries, with nothing lost locally: the finished output stays where
    it is and the hint says how to push it again. ``repo_id`` names the repo being written."""

    def __init__(self, message: str, *, repo_id: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.repo_id = repo_id


class DiskFullError(MergeBenchError, OSError):
    """The disk (or the user's quota) filled up while MergeBench wrote: an environment problem, not a bug."""

    @classmethod
    def from_os_error(cls, error: OSError) -> DiskFullError | None:
        """The disk-full error ``error`` is (``ENOSPC``, ``EDQUOT``), or ``None`` for any other ``OSError``."""
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            return None
        where = f" while writing '{error.filename}'" if error.filename else ""
        return cls(f"No space left on the disk{where} ({error.strerror or 'ENOSPC'}).",
                   hint="Free disk space, or point the output (--out/--work-dir), TMPDIR and HF_HOME at a larger "
                        "disk, then run the same command again: finished stages, grid points and merged shards are "
                        "kept and reused.")


class StatisticsError(MergeBenchError, ValueError):
    """A data-dependent method lacks statistics, data or a domain for one of its models."""


class OutputExistsError(MergeBenchError, FileExistsError):
    """The output directory exists and is neither empty nor a resumable merge."""


class DataError(MergeBenchError, ValueError):
    """A training or evaluation source is unusable: missing columns, no rows, a bad revision, bad text.

    ``source`` names the source (its registry key and Hub id); ``row`` is the 0-based row index in the
    loaded split when one row is at fault, else ``None``.
    """

    def __init__(self, message: str, *, source: str, row: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.source = source
        self.row = row


class MissingPackageError(MergeBenchError, ImportError):
    """An optional package (a model or data file shipped on PyPI) is not installed; ``package`` names it."""

    def __init__(self, message: str, *, package: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.package = package


class ScoresError(MergeBenchError, RuntimeError):
    """Scores cannot be published to or read from a Hub repo: the results were not scored on a Hub evaluation
    dataset, the model repo moved past the revision that was scored, or an eval results file is malformed.
    ``repo_id`` names the repo at fault."""

    def __init__(self, message: str, *, repo_id: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.repo_id = repo_id


class EvaluationError(MergeBenchError, RuntimeError):
    """An evaluation cannot run or its results cannot be read: an unknown task or suite, a model that does
    not load, a results file of another schema version. ``task`` names the task at fault when there is one.
    """

    def __init__(self, message: str, *, task: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.task = task


class UnitError(MergeBenchError, RuntimeError):
    """Units (grid points, evaluations, experts' trainings) failed on their executor (Ray, Hugging Face Jobs)
    after every retry, or an expert's ``accelerate launch`` failed. ``units`` names each failed unit's label."""

    def __init__(self, message: str, *, units: list[str], hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.units = units
