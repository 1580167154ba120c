"""The MergeBench Space (Gradio 6): leaderboard, plots, submissions, about. Layout and wiring only: the
table comes from :mod:`mergebench.eval.leaderboard` via :mod:`board` and :mod:`processing`, the queue is
:mod:`jobs` + :mod:`worker`, checks are :mod:`submission`.

Run: ``python app.py`` (a Space), or ``mergebench space --results PATH``. Configuration: :mod:`settings`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `python app.py` and `mergebench space` alike

import gradio as gr
import plots
from about import ABOUT
from board import Board
from jobs import HubMirror, Job, JobStore, RateLimitError, queue_position
from processing import (
    ALWAYS,
    COMPARE_COLUMNS,
    DEFAULT_COLUMNS,
    HEADERS,
    LEGEND,
    SORTABLE,
    Filters,
    choices,
    column_widths,
    compare,
    compare_links,
    datatypes,
    display,
    filter_rows,
    log_tail,
    row_choices,
)
from settings import SpaceConfig
from submission import explain, scoring, validate_merge, validate_model
from worker import Worker, make_worker

if TYPE_CHECKING:
    from dispatch import JobsDispatcher

logger = logging.getLogger(__name__)

MODES = ("Merge experts", "Evaluate a merged model")
# one-line headers (column_widths fits them; this keeps a narrow column from wrapping its header letter by letter)
CSS = "#lb th .header, #cmp th .header { white-space: nowrap; }"


@dataclass
class Services:
    config: SpaceConfig
    store: JobStore
    board: Board
    worker: Worker | JobsDispatcher  # dispatch = local | hf-jobs


def make_services(config: SpaceConfig) -> Services:
    mirror = HubMirror(config.requests_repo) if config.requests_repo else None
    store = JobStore(config.work_dir, mirror)
    board = Board(config, store)
    return Services(config, store, board, make_worker(store, config, on_finish=board.add_job))


def _login_available() -> bool:
    """Outside a Space, Gradio mocks OAuth with the local token and fails at build time without one."""
    if os.environ.get("SYSTEM") == "spaces":
        return True
    from huggingface_hub import HfApi, get_token

    try:
        return bool(get_token()) and bool(HfApi().whoami().get("name"))
    except Exception:
        return False


def _method_choices() -> list[tuple[str, str]]:
    from mergebench import methods

    return [(f"{s.name} ({'data-dependent' if s.data_dependent else 'data-free'})", s.name) for s in methods.REGISTRY]


def _defaults(method: str | None) -> str:
    from mergebench import methods

    return json.dumps(methods.get(method).defaults(), indent=1) if method else "{}"


def _method_help(method: str | None) -> str:
    """The method's declared metadata (title, paper, formula, parameter ranges, grid), as Markdown."""
    from mergebench import methods

    if not method:
        return ""
    spec = methods.get(method)
    grid = ", ".join(f"`{k}` ∈ {list(v)}" for k, v in spec.grid.items()) or "none"
    ranges = ", ".join(f"`{p.name}` {p.range}" for p in spec.parameters if p.range) or "none"
    return (f"**{spec.title}** [paper]({spec.paper})\n\n```\n{spec.formula}\n```\n\n"
            f"Ranges: {ranges} (checked on submit). Benchmark search grid: {grid}.")


def _message(ok: bool, text: str, hint: str | None = None) -> str:
    if ok:
        return f"✅ {text}"
    return f"**Error:** {text}" + (f"\n\n*Hint:* {hint}" if hint else "")


JOBS_COLUMNS = ["job", "user", "what", "status", "stage", "elapsed", "Hugging Face Job", "cost", "message"]


def _elapsed(job: Job) -> str:
    """A Job's time as last inspected; an in-process job's time since it started (to its end)."""
    seconds = job.elapsed_seconds
    if seconds is None and job.started_at and job.status != "pending":
        end = datetime.fromisoformat(job.finished_at) if job.finished_at else datetime.now(UTC)
        seconds = (end - datetime.fromisoformat(job.started_at)).total_seconds()
    if seconds is None:
        return ""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _jobs_frame(jobs: list[Job]) -> list[list]:
    rows = []
    for j in reversed(jobs[-20:]):
        what = j.request.get("model") or f"{j.request.get('method')} on {j.request.get('base_model')}"
        position = queue_position(jobs, j.id)
        status = f"{j.status} (#{position} in queue)" if position else j.status
        hf_job = f"{j.hf_job} ({j.flavor})" if j.hf_job else ""
        cost = f"${j.cost_usd:.4f}" if j.cost_usd is not None else ""
        message = j.message or ""
        if j.status == "failed" and j.hint:
            message += f" Hint: {j.hint}"
        rows.append([j.id, j.user, what, status, j.stage or "", _elapsed(j), hf_job, cost, message])
    return rows


def _queue_text(cfg: SpaceConfig) -> str:
    if cfg.dispatch == "hf-jobs":
        return (f"Each job runs as a Hugging Face Job on `{cfg.jobs_flavor}` ({cfg.evaluation_backend}), up to "
                f"{cfg.jobs_max_concurrent} at once, " +
                ("billed to your account (sign-in with the `jobs` scope)." if cfg.jobs_token == "user"
                 else "billed to the Space's organisation.") + " Jobs survive restarts of this Space.")
    return "Jobs run one at a time on this Space and survive restarts."


def build_app(services: Services) -> gr.Blocks:
    cfg, store, board = services.config, services.store, services.board
    with_login = _login_available()

    def current_table(bases, base_types, methods_, data, references, search, columns, raw, sort_by):
        f = Filters(tuple(bases or ()), tuple(base_types or ()), tuple(methods_ or ()), tuple(data or ()),
                    bool(references), search or "")
        rows = filter_rows(board.df, f)
        shown = display(rows, list(columns or []), raw=bool(raw), sort_by=sort_by)
        figures = [fn(rows) for fn in plots.PLOTS.values()]
        return [gr.Dataframe(value=shown, datatype=datatypes(shown), column_widths=column_widths(shown)), *figures]

    def on_compare_tab(a, b):
        """Offer every row; keep the chosen pair if it still exists, else the first two rows."""
        options = row_choices(board.df)
        ids = [run for _, run in options]
        a = a if a in ids else (ids[0] if ids else None)
        b = b if b in ids else next((i for i in ids if i != a), None)
        return gr.Dropdown(choices=options, value=a), gr.Dropdown(choices=options, value=b)

    def compare_rows(a, b):
        if not a or not b or a not in board.runs or b not in board.runs:
            return "", gr.Dataframe(value=None, headers=COMPARE_COLUMNS)
        shown = compare(board.df, board.runs, a, b)
        return (compare_links(board.df, a, b),
                gr.Dataframe(value=shown, datatype=datatypes(shown), column_widths=column_widths(shown)))

    def submit(mode, base, method, experts, parameters, model, profile: gr.OAuthProfile | None,
               oauth_token: gr.OAuthToken | None):
        if profile is None:
            return _message(False, "Sign in with Hugging Face to submit.", "Use the Sign in button at the top.")
        if oauth_token is not None and hasattr(services.worker, "remember_token"):  # jobs_token = user: they pay
            services.worker.remember_token(profile.username, oauth_token.token)
        try:
            if mode == MODES[0]:
                request = validate_merge(board.catalogue, base=base, experts=list(experts or []), method=method,
                                         parameters=parameters, validation_data=cfg.validation_data)
                kind = "merge"
            else:
                request = validate_model(board.catalogue, model=model, base=base, method=method,
                                         parameters=parameters)
                kind = "model"
        except Exception as e:
            message, hint = explain(e)
            return _message(False, message, hint)
        request["eval"] = scoring(board.catalogue, base, tasks=cfg.eval_tasks, max_samples=cfg.eval_max_samples)
        try:
            job = store.add(Job.new(profile.username, kind, request), max_active=cfg.max_active_per_user,
                            max_daily=cfg.max_daily_per_user)
        except RateLimitError as e:
            return _message(False, str(e))
        services.worker.wake()
        return _message(True, f"Queued as job `{job.id}` (position {queue_position(store.all(), job.id)}).")

    def poll(version, bases, base_types, methods_, data, references, search, columns, raw, sort_by,
             profile: gr.OAuthProfile | None, oauth_token: gr.OAuthToken | None):
        filters = (bases, base_types, methods_, data, references, search, columns, raw, sort_by)
        if profile is not None and oauth_token is not None and hasattr(services.worker, "remember_token"):
            services.worker.remember_token(profile.username, oauth_token.token)  # re-attaches after a restart
        jobs = store.all()
        mine = [j for j in jobs if profile is not None and j.user == profile.username]
        log = ""
        if mine:
            path = store.log_path(mine[-1].id)
            log = f"# job {mine[-1].id}: {mine[-1].status}\n" + (
                log_tail(path.read_text(encoding="utf-8", errors="replace")) if path.exists() else "")
        fresh = current_table(*filters) if version != board.version else [gr.skip()] * (1 + len(plots.PLOTS))
        return [_jobs_frame(jobs), log, board.version, *fresh]

    def on_base(base):
        experts = board.catalogue.experts.get(base, {})
        return gr.CheckboxGroup(choices=[(f"{d}: {r}", r) for d, r in experts.items()], value=list(experts.values()))

    def on_method(method):
        return _defaults(method), _method_help(method)

    def on_mode(mode):
        merge = mode == MODES[0]
        return gr.CheckboxGroup(visible=merge), gr.Textbox(visible=not merge)

    df = board.df
    with gr.Blocks(title="MergeBench", fill_width=True) as demo:
        with gr.Row():
            gr.Markdown("# MergeBench\nMerging domain-expert LLMs: what is kept, what is lost, what it costs.")
            if with_login:
                gr.LoginButton(elem_id="login", scale=0)
        version = gr.State(board.version)
        timer = gr.Timer(2.0)  # outside the tabs: a Timer in a never-opened tab never ticks
        with gr.Tabs():
            with gr.Tab("Leaderboard", id="leaderboard"):
                with gr.Row():
                    search = gr.Textbox(label="Search", placeholder="model, method, parameter…", elem_id="search")
                    sort_by = gr.Dropdown(SORTABLE, value="Normalised", label="Sort by", elem_id="sort")
                with gr.Row():
                    bases = gr.CheckboxGroup(choices(df, "base_model"), label="Base model", elem_id="f-base")
                    base_types = gr.CheckboxGroup(["base", "instruct"], label="Base vs instruct", elem_id="f-type")
                    methods_ = gr.CheckboxGroup(choices(df, "method"), label="Method", elem_id="f-method")
                    data = gr.CheckboxGroup(["data-free", "data-dependent"], label="Data", elem_id="f-data")
                with gr.Row():
                    references = gr.Checkbox(True, label="Show experts, base and multi-task rows", elem_id="f-ref")
                    raw = gr.Checkbox(False, label="Raw task scores", elem_id="f-raw")
                with gr.Accordion("Columns", open=False):
                    columns = gr.CheckboxGroup([h for h in HEADERS.values() if h not in ALWAYS],
                                               value=[c for c in DEFAULT_COLUMNS if c not in ALWAYS], label="Columns",
                                               elem_id="f-columns")
                gr.Markdown(LEGEND, elem_id="legend")
                table = gr.Dataframe(interactive=False, elem_id="lb", pinned_columns=1, max_height=700,
                                     buttons=["copy", "fullscreen"], wrap=True)
            with gr.Tab("Compare", id="compare") as compare_tab:
                gr.Markdown("Two rows of the leaderboard side by side, task by task: ± one standard error, "
                            "≈ where the two are within noise (their 95 % intervals, ± 1.96 SE, overlap).")
                with gr.Row():
                    cmp_a = gr.Dropdown(label="A", elem_id="cmp-a")
                    cmp_b = gr.Dropdown(label="B", elem_id="cmp-b")
                cmp_links = gr.Markdown(elem_id="cmp-links")
                cmp_table = gr.Dataframe(headers=COMPARE_COLUMNS, interactive=False, elem_id="cmp", wrap=True)
            with gr.Tab("Plots", id="plots"):
                gr.Markdown("Merged models matching the leaderboard's filters.")
                figures = [gr.Plot(label=name, elem_id=f"plot-{i}") for i, name in enumerate(plots.PLOTS)]
            with gr.Tab("Submit", id="submit"):
                gr.Markdown("Propose a merge of the benchmark's experts, or an already merged model. " +
                            _queue_text(cfg) +
                            ("" if with_login else "\n\n**Sign-in is not available here**: submissions need "
                                                   "Hugging Face OAuth (a Space) or a local `HF_TOKEN`."))
                mode = gr.Radio(list(MODES), value=MODES[0], label="What", elem_id="s-mode")
                base_choices = board.catalogue.bases
                s_base = gr.Dropdown(base_choices, value=base_choices[0] if base_choices else None, label="Base model",
                                     elem_id="s-base")
                s_model = gr.Textbox(label="Merged model (Hub id)", placeholder="org/my-merge", visible=False,
                                     elem_id="s-model")
                # every base's experts, so that a request which never ran on_base (an API call) passes Gradio's
                # choices check; on_base narrows them to the chosen base, validate_merge checks the pairing
                s_experts = gr.CheckboxGroup([(f"{d}: {r}", r) for e in board.catalogue.experts.values()
                                              for d, r in e.items()], label="Experts", elem_id="s-experts")
                s_method = gr.Dropdown(_method_choices(), value="ties", label="Method", elem_id="s-method")
                s_help = gr.Markdown(_method_help("ties"))
                s_params = gr.Code(_defaults("ties"), language="json", label="Parameters (JSON)", interactive=True,
                                   elem_id="s-params")
                s_button = gr.Button("Submit", variant="primary", elem_id="submit")
                s_message = gr.Markdown(elem_id="s-message")
                gr.Markdown("### Queue")
                jobs = gr.Dataframe(headers=JOBS_COLUMNS, interactive=False, elem_id="jobs", wrap=True)
                log = gr.Code(label="Log of your latest job", interactive=False, elem_id="log", max_lines=30)
            with gr.Tab("About", id="about"):
                gr.Markdown(ABOUT)

        inputs = [bases, base_types, methods_, data, references, search, columns, raw, sort_by]
        outputs = [table, *figures]
        gr.on([demo.load, *(c.change for c in inputs if c is not search), search.submit],
              current_table, inputs, outputs, api_name="leaderboard", api_visibility="undocumented",
              trigger_mode="always_last")  # a change made while the table updates is applied after it, not lost
        timer.tick(poll, [version, *inputs], [jobs, log, version, *outputs], api_visibility="private")
        compare_tab.select(on_compare_tab, [cmp_a, cmp_b], [cmp_a, cmp_b], api_visibility="private")
        gr.on([cmp_a.change, cmp_b.change], compare_rows, [cmp_a, cmp_b], [cmp_links, cmp_table],
              api_visibility="private", trigger_mode="always_last")
        demo.load(on_base, s_base, s_experts, api_visibility="private")
        s_base.change(on_base, s_base, s_experts, api_visibility="private")
        s_method.change(on_method, s_method, [s_params, s_help], api_visibility="private")
        mode.change(on_mode, mode, [s_experts, s_model], api_visibility="private")
        # callable by API clients too (gradio_client; `private` only hides it from them, not from raw HTTP): the
        # handler's own checks (signed-in profile, validation, per-user limits) are what guard the queue
        s_button.click(submit, [mode, s_base, s_method, s_experts, s_params, s_model], s_message,
                       api_name="submit", api_visibility="undocumented", concurrency_limit=4)
    return demo


def launch(config: SpaceConfig, *, host: str | None = None, port: int | None = None,
           block: bool = True) -> tuple[gr.Blocks, Services]:
    """Build the app, start the worker (once, also under Gradio's reload mode) and serve."""
    services = make_services(config)
    demo = build_app(services)
    if gr.NO_RELOAD:
        services.worker.start()
    demo.queue(default_concurrency_limit=8)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=not block,
                footer_links=["gradio", "settings"], theme=gr.themes.Soft(), css=CSS)
    return demo, services


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    launch(SpaceConfig.from_env())
