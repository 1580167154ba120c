"""The demo ``make demo`` runs: a real streaming merge through the loopback Hub, end to end.

It builds the tiny Llama fixture family (a base and five domain experts, sharded safetensors),
publishes it to a loopback Hub server on 127.0.0.1, merges the experts with TIES **streaming from that
server** (Range requests, no local copy), pushes the merged model with its generated card back to the
server, downloads it with ``snapshot_download`` and loads it with transformers. Everything runs
offline on a CPU in seconds; MergeBench-Tiny (training real experts and scoring them) will replace it.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from mergebench.fixtures import build_family, write_family_to_hub_root
from mergebench.hub.endpoint import use_endpoint
from mergebench.hubserver import LoopbackHub
from mergebench.merge.engine import merge
from mergebench.merge.options import MergeOptions, MergeResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoResult:
    merge: MergeResult
    hub_url: str
    pushed_repo: str
    downloaded_to: Path
    logits_shape: tuple[int, ...]


def run_demo(work_dir: Path, *, method: str = "ties", progress: bool = True) -> DemoResult:
    """Run the demo in ``work_dir`` (wiped first) and return where everything is."""
    import torch
    from huggingface_hub import constants, snapshot_download
    from transformers import AutoModelForCausalLM

    if work_dir.exists():
        shutil.rmtree(work_dir)
    family = build_family(work_dir / "fixtures", "llama")
    hub_root = work_dir / "hub"
    repos = write_family_to_hub_root(family, hub_root)
    with LoopbackHub(hub_root) as hub, use_endpoint(hub.url, hf_home=work_dir / "hf-home"):
        recipe = {
            "method": method,
            "base_model": repos["base"],
            "models": [{"model": repo, "domain": domain} for domain, repo in repos.items() if domain != "base"],
            "parameters": {"top_k": 0.2, "scaling": 1.0} if method == "ties" else {},
        }
        pushed = f"{repos['base'].split('/')[0]}/{repos['base'].split('/')[1]}-merged-{method}"
        result = merge(recipe, work_dir / "merged", options=MergeOptions(progress=progress), push_to=pushed)
        downloaded = Path(snapshot_download(pushed, local_dir=work_dir / "downloaded",
                                            cache_dir=constants.HF_HUB_CACHE))
        model = AutoModelForCausalLM.from_pretrained(downloaded)
        with torch.no_grad():
            logits = model(torch.tensor([[1, 2, 3, 4]])).logits
        return DemoResult(result, hub.url, pushed, downloaded, tuple(logits.shape))
