"""A cut-down MergeBench-Tiny through the real command line, for tests: ``python -m tests.tiny._cutdown BASE
RECIPES -- [mergebench arguments]``.

It runs ``mergebench`` (its console entry, ``mergebench.cli.main``) with four substitutions, so the whole
loop — data, base, five experts, the runner, the leaderboard — takes about a minute instead of fifteen:

- the base is the tiny Llama fixture at ``BASE`` instead of SmolLM2-135M;
- the shipped training recipes are read from ``RECIPES`` (the tests write a ``tiny.yaml`` with 2 steps);
- the benchmark runs two methods (Model Soup, and RegMean for a statistics stage) instead of eight;
- every task is evaluated on 4 items.

Everything else (the stages, their caching, logging, progress output) is the code ``make demo`` runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

METHODS = ({"method": "model_soup"}, {"method": "regmean", "parameters": {"alpha": 0.5, "num_samples": 4}})
MAX_SAMPLES = 4


def run_cutdown(base: Path, recipes: Path, work: Path, *flags: str) -> subprocess.CompletedProcess:
    """``mergebench [flags] tiny --work-dir WORK`` cut down, in a child process with its own MergeBench cache
    (``WORK/../cache``: statistics are never shared between two work folders); fails the test on a non-zero exit."""
    env = {**os.environ, "MERGEBENCH_CACHE": str(work.parent / "cache"), "PYTHONUNBUFFERED": "1"}
    for name in ("HF_DATASETS_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY", "DATASETS_VERBOSITY",
                 "HF_HUB_DISABLE_PROGRESS_BARS", "PYTHONWARNINGS"):
        env.pop(name, None)
    command = [sys.executable, "-m", "tests.tiny._cutdown", str(base), str(recipes), "--", *flags, "tiny",
               "--work-dir", str(work)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def main(argv: list[str]) -> None:
    base, recipes, rest = Path(argv[0]), Path(argv[1]), argv[argv.index("--") + 1:]
    import mergebench.fixtures.smollm2 as smollm2
    import mergebench.tiny.bench as bench
    import mergebench.train.config as train_config

    smollm2.smollm2_model_dir = lambda *args, **kwargs: base
    train_config.RECIPES = recipes
    bench.METHODS = METHODS
    full = bench.tiny_bench

    def cut(**kwargs):
        config = full(**kwargs)
        for section in ("validation", "evaluation"):
            config[section] = {**config[section], "max_samples": MAX_SAMPLES}
        return config

    bench.tiny_bench = cut
    from mergebench.cli import main as cli_main

    sys.argv = ["mergebench", *rest]
    cli_main()


if __name__ == "__main__":
    main(sys.argv[1:])
