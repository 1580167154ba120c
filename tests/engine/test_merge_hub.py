"""The streaming engine against the loopback Hub: same bytes as local, no cache, push, faults, bad refs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from huggingface_hub import HfApi, ModelCard, constants
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

from mergebench.domains import DOMAINS
from mergebench.errors import CorruptFileError
from mergebench.fixtures import write_family_to_hub_root
from mergebench.merge.engine import merge
from mergebench.merge.inputs import prepare
from mergebench.merge.options import MergeOptions

QUIET = MergeOptions(progress=False)


@pytest.fixture
def hub_family(hub, hub_root: Path, tiny_llama) -> dict[str, str]:
    return write_family_to_hub_root(tiny_llama, hub_root)


def recipe_for(base: str, experts: list[str], method: str = "task_arithmetic", **extra: object) -> dict:
    return {"method": method, "base_model": base, "models": [{"model": e} for e in experts], **extra}


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.safetensors"))}


def test_hub_merge_is_byte_identical_to_local_and_leaves_no_copy(hub, hub_family, tiny_llama, tmp_path) -> None:
    domains = ["math", "coding", "safety"]
    local = merge(recipe_for(str(tiny_llama.base), [str(tiny_llama.experts[d]) for d in domains],
                             parameters={"scaling": 0.5}), tmp_path / "local", options=QUIET)
    hub.stats.reset()
    prepare(recipe_for(hub_family["base"], [hub_family[d] for d in domains]))
    header_reads = hub.stats.bytes_for("*.safetensors")
    hub.stats.reset()
    remote = merge(recipe_for(hub_family["base"], [hub_family[d] for d in domains], parameters={"scaling": 0.5}),
                   tmp_path / "remote", options=QUIET)
    assert shard_bytes(local.out_dir) == shard_bytes(remote.out_dir)
    cache = Path(constants.HF_HUB_CACHE)
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))
    # Every needed byte is fetched about once: base fully, experts minus embeddings/lm_head.
    streamed = hub.stats.bytes_for("*.safetensors") - header_reads
    needed = sum(remote.plan.bytes_per_model.values())
    assert needed <= streamed <= needed * 1.05
    pinned = yaml.safe_load((remote.out_dir / "mergebench_config.yaml").read_text())
    assert pinned["base_model"].startswith(hub_family["base"] + "@") and len(pinned["base_model"].split("@")[1]) == 40


@pytest.mark.parametrize(("method", "parameters"), [("ties", {"top_k": 0.3}), ("localize_stitch", {"sparsity": 0.1}),
                                                  ("localize_stitch", {"sparsity": 0.1, "topk_scope": "tensor"})])
def test_global_topk_from_the_hub_equals_the_local_merge(method, parameters, hub, hub_family, tiny_llama,
                                                         tmp_path) -> None:
    """From the Hub, an elementwise global top-k merge (TIES, dataless Localize-and-Stitch) reads a sample, then
    merges while counting: every tensor fetched once, where a local merge counts first. Per-tensor top-k reads once
    both ways. All give the bytes of the local merge."""
    domains = ["math", "coding", "safety"]
    local = merge(recipe_for(str(tiny_llama.base), [str(tiny_llama.experts[d]) for d in domains], method=method,
                             parameters=parameters), tmp_path / "local", options=QUIET)
    hub.stats.reset()
    prepare(recipe_for(hub_family["base"], [hub_family[d] for d in domains], method=method, parameters=parameters))
    header_reads = hub.stats.bytes_for("*.safetensors")
    hub.stats.reset()
    remote = merge(recipe_for(hub_family["base"], [hub_family[d] for d in domains], method=method,
                              parameters=parameters), tmp_path / "remote", options=QUIET)
    assert shard_bytes(local.out_dir) == shard_bytes(remote.out_dir)
    needed = sum(remote.plan.bytes_per_model.values())
    if parameters.get("topk_scope") == "tensor":  # each tensor counted, then merged, from the bytes read once
        assert local.bytes_read == remote.bytes_read == needed
    else:  # locally counted, then merged; from the Hub a sample (runs of a quarter at most of a tiny model, read
        assert local.bytes_read > 1.5 * needed  # with gaps as long at most), then merged
        assert needed < remote.bytes_read <= 1.5 * needed
    assert remote.bytes_read <= hub.stats.bytes_for("*.safetensors") - header_reads <= remote.bytes_read * 1.05


def test_push_then_hf_download_loads_with_transformers(hub, hub_family, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    repo = "mergebench-fixtures/tiny-llama-merged"
    result = merge(recipe_for(hub_family["base"], [hub_family["math"], hub_family["coding"]], method="model_soup"),
                   tmp_path / "merged", options=MergeOptions(progress=False, shard_size=200_000), push_to=repo)
    assert result.commit_url and repo in result.commit_url
    target = tmp_path / "downloaded"
    subprocess.run([str(Path(sys.executable).parent / "hf"), "download", repo, "--local-dir", str(target)],
                   check=True, capture_output=True)
    for name in ("config.json", "tokenizer.json", "mergebench_config.yaml", "README.md",
                 "model.safetensors.index.json"):
        assert (target / name).exists(), name
    assert shard_bytes(target) == shard_bytes(result.out_dir)
    model = AutoModelForCausalLM.from_pretrained(target)
    assert model.config.model_type == "llama"
    card = ModelCard.load(target / "README.md")
    card.validate()  # POSTs the front matter to the loopback Hub's /api/validate-yaml
    assert card.data.base_model == [hub_family["base"], hub_family["math"], hub_family["coding"]]
    assert card.data.base_model_relation == "merge"
    assert {"mergebench", "merge", "model_soup"} <= set(card.data.tags)
    assert "θ = Σᵢ wᵢ θᵢ" in card.text and hub_family["math"] in card.text


def test_dropped_connections_are_retried_and_resumed(hub, hub_family, tmp_path) -> None:
    clean = merge(recipe_for(hub_family["base"], [hub_family["math"]]), tmp_path / "clean", options=QUIET)
    hub.faults.drop_after_bytes(3000, times=3, path_glob="*.safetensors")
    hub.faults.http_error(503, times=2, path_glob="*.safetensors")
    flaky = merge(recipe_for(hub_family["base"], [hub_family["math"]]), tmp_path / "flaky", options=QUIET)
    assert shard_bytes(clean.out_dir) == shard_bytes(flaky.out_dir)


def test_nonexistent_repo_and_revision(hub, hub_family, tmp_path) -> None:
    with pytest.raises(RepositoryNotFoundError):
        merge(recipe_for("nobody/nothing", [hub_family["math"]]), tmp_path / "a", options=QUIET)
    with pytest.raises(RevisionNotFoundError):
        merge(recipe_for(hub_family["base"], [hub_family["math"] + "@v9.9"]), tmp_path / "b", options=QUIET)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_truncated_shard_on_the_hub_fails_before_writing(hub, hub_family, hub_root, tmp_path) -> None:
    shard = sorted(hub.repo_dir(hub_family["coding"]).glob("model-*.safetensors"))[0]
    data = shard.read_bytes()
    shard.unlink()  # the family may be hard-linked: never truncate the shared inode in place
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="truncated") as info:
        merge(recipe_for(hub_family["base"], [hub_family["coding"]]), tmp_path / "out", options=QUIET)
    assert hub_family["coding"] in info.value.model
    assert not (tmp_path / "out").exists()


def test_pushes_are_retried_and_a_failed_push_is_finished_by_resume(hub, hub_family, tmp_path) -> None:
    """Before, one 503 from the Hub on a push ended the command with a traceback-free but final error, and
    ``--resume`` refused the finished output ("already exists"): the merge had to be redone to be pushed.
    Now transient answers are retried, and a push that still fails leaves a finished merge that ``--resume``
    pushes without merging again."""
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mergebench.cli", "merge", str(recipe), *args],
                              capture_output=True, text=True, timeout=300)

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(recipe_for(hub_family["base"], [hub_family[d] for d in DOMAINS])))
    out, repo = tmp_path / "merged", "pushed/retried"
    hub.faults.http_error(503, times=2, path_glob="/api/repos/create")
    hub.faults.http_error(502, times=1, path_glob="/api/models/pushed/retried/commit/*")
    first = cli("--out", str(out), "--push-to", repo)
    assert first.returncode == 0, first.stderr
    assert "model.safetensors" in HfApi().list_repo_files(repo)

    out2, repo2 = tmp_path / "merged2", "pushed/refused"
    refusal = hub.faults.http_error(503, times=None, path_glob="/api/models/pushed/refused/commit/*")
    failed = cli("--out", str(out2), "--push-to", repo2)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "is complete, but pushing it to 'pushed/refused' failed" in failed.stderr
    assert "Hint: Run the same command again with --resume" in failed.stderr
    assert (out2 / "model.safetensors").is_file()
    merged_at = (out2 / "model.safetensors").stat().st_mtime_ns
    assert refusal.fired >= 2  # retried before giving up
    hub.faults.clear()
    resumed = cli("--out", str(out2), "--push-to", repo2, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert (out2 / "model.safetensors").stat().st_mtime_ns == merged_at  # pushed, not merged again
    assert shard_bytes(out2) == shard_bytes(out)
    assert "model.safetensors" in HfApi().list_repo_files(repo2)


def test_resume_of_a_finished_merge_of_another_recipe_is_still_refused(hub, hub_family, tmp_path) -> None:
    from mergebench.errors import OutputExistsError

    experts = [hub_family[d] for d in DOMAINS]
    out = tmp_path / "merged"
    merge(recipe_for(hub_family["base"], experts), out, options=MergeOptions(progress=False))
    again = merge(recipe_for(hub_family["base"], experts), out, options=MergeOptions(progress=False, resume=True))
    assert again.out_dir == out and again.seconds > 0  # the record of the finished merge, not a new one
    other = recipe_for(hub_family["base"], experts, parameters={"scaling": 0.5})
    with pytest.raises(OutputExistsError, match="already exists"):
        merge(other, out, options=MergeOptions(progress=False, resume=True))
