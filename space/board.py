"""The results the page shows: the reference source (Hub dataset, run folder or file) plus the results
of jobs finished here, as one leaderboard table (with standard errors) and a version number the page polls
for changes."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pandas as pd
from jobs import Job, JobStore
from settings import SpaceConfig
from submission import Catalogue
from uncertainty import with_errors

from mergebench.eval.leaderboard import latest, read_results, table
from mergebench.eval.results import Results, load_results

logger = logging.getLogger(__name__)


class Board:
    """Thread-safe holder of the results, the table built from them and the submission catalogue."""

    def __init__(self, config: SpaceConfig, store: JobStore) -> None:
        self.config, self.store = config, store
        self._lock = threading.Lock()
        self.version = 0
        self.results: list[Results] = []
        self.runs: dict[str, Results] = {}
        self.df = pd.DataFrame()
        self.catalogue = Catalogue({}, {})
        self.reload()

    def reload(self) -> None:
        """Read the source again, and every finished job's results file still on local disk."""
        source = read_results(self.config.results)
        local = [load_results(j.results_file) for j in self.store.all()
                 if j.status == "done" and j.results_file and Path(j.results_file).exists()]
        self._set(source + local)

    def add_job(self, job: Job) -> None:
        """Show a finished job's results (called by the worker)."""
        if job.status == "done" and job.results_file:
            self._set([*self.results, load_results(job.results_file)])

    def _set(self, results: list[Results]) -> None:
        runs = {r.run["id"]: r for r in latest(results)}
        df = with_errors(table(results, hub_url=self.config.hub_url), runs.values())
        with self._lock:
            self.results, self.runs, self.df = results, runs, df
            self.catalogue = Catalogue.from_results(results)
            self.version += 1
        logger.info("leaderboard: %d results, %d rows (version %d)", len(results), len(df), self.version)
