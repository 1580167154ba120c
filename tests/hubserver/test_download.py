"""Reading from the loopback Hub with the real ``huggingface_hub`` client, the ``hf`` CLI and raw HTTP."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from huggingface_hub import (
    HfApi,
    RepoFile,
    RepoFolder,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)

from mergebench.hubserver import LoopbackHub
from tests._hub_fixtures import hub_env
from tests.hubserver._repos import SHARDS, files_of, write_sharded_model

REPO = "org/tiny"


@pytest.fixture
def model_dir(hub: LoopbackHub) -> Path:
    folder = hub.repo_dir(REPO)
    write_sharded_model(folder)
    return folder


def test_model_info_lists_files_with_lfs_metadata_and_safetensors(hub, model_dir) -> None:
    api = HfApi()
    info = api.model_info(REPO, files_metadata=True)
    assert len(info.sha) == 40 and info.id == REPO and info.author == "org"
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == set(files_of(model_dir))
    shard = siblings[SHARDS[0]]
    data = (model_dir / SHARDS[0]).read_bytes()
    assert shard.size == len(data) and shard.lfs is not None
    assert shard.lfs.sha256 == hashlib.sha256(data).hexdigest()
    config = siblings["config.json"]
    raw = (model_dir / "config.json").read_bytes()
    assert config.lfs is None and config.blob_id == hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest()
    assert info.safetensors.parameters == {"F32": 16 * 8 + 8 * 8, "BF16": 8 * 8, "I64": 5}
    assert info.card_data.license == "apache-2.0" and "test" in info.tags
    assert api.model_info(REPO).siblings[0].size is None  # sizes only with files_metadata
    assert api.model_info(REPO, revision=info.sha).sha == info.sha
    assert api.repo_exists(REPO) and not api.repo_exists("org/absent")


def test_sha_is_stable_and_follows_content(hub, model_dir) -> None:
    api = HfApi()
    first = api.model_info(REPO).sha
    assert api.model_info(REPO).sha == first
    (model_dir / "extra.txt").write_text("x")
    second = api.model_info(REPO).sha
    assert second != first
    (model_dir / "extra.txt").unlink()
    assert api.model_info(REPO).sha == first


def test_tree_and_paths_info(hub, model_dir) -> None:
    api = HfApi()
    top = {e.path: e for e in api.list_repo_tree(REPO)}
    assert isinstance(top["sub"], RepoFolder) and "sub/notes.txt" not in top
    assert isinstance(top[SHARDS[1]], RepoFile) and top[SHARDS[1]].lfs.size == (model_dir / SHARDS[1]).stat().st_size
    everything = {e.path for e in api.list_repo_tree(REPO, recursive=True)}
    assert everything == set(files_of(model_dir)) | {"sub"}
    assert [e.path for e in api.list_repo_tree(REPO, path_in_repo="sub")] == ["sub/notes.txt"]
    expanded = list(api.list_repo_tree(REPO, path_in_repo="sub", expand=True))
    assert expanded[0].last_commit.oid == api.model_info(REPO).sha
    infos = api.get_paths_info(REPO, ["config.json", "sub", "missing.bin"])
    assert [(type(i).__name__, i.path) for i in infos] == [("RepoFile", "config.json"), ("RepoFolder", "sub")]
    assert sorted(api.list_repo_files(REPO)) == sorted(files_of(model_dir))
    refs = api.list_repo_refs(REPO)
    assert [b.name for b in refs.branches] == ["main"] and refs.branches[0].target_commit == api.model_info(REPO).sha
    assert api.list_repo_commits(REPO)[0].commit_id == refs.branches[0].target_commit


def test_hf_hub_download_and_cache(hub, model_dir) -> None:
    path = Path(hf_hub_download(REPO, SHARDS[0]))
    assert path.read_bytes() == (model_dir / SHARDS[0]).read_bytes()
    assert Path(hf_hub_download(REPO, "sub/notes.txt")).read_text() == "nested file\n"
    hub.stats.reset()
    again = Path(hf_hub_download(REPO, SHARDS[0]))  # cached: one HEAD, no body
    assert again == path
    assert hub.stats.count("GET") == 0 and hub.stats.count("HEAD") == 1
    sha = HfApi().model_info(REPO).sha
    hub.stats.reset()
    assert Path(hf_hub_download(REPO, SHARDS[0], revision=sha)) == path  # pinned sha + cache: no request at all
    assert hub.stats.requests == {}


def test_snapshot_download_is_byte_identical_and_fetches_each_byte_once(hub, model_dir, tmp_path) -> None:
    hub.stats.reset()
    local = Path(snapshot_download(REPO, local_dir=tmp_path / "snap"))
    assert files_of(local) == files_of(model_dir)
    total = sum(len(b) for b in files_of(model_dir).values())
    assert hub.stats.bytes_for("*") == total
    cached = Path(snapshot_download(REPO))
    assert files_of(cached) == files_of(model_dir)


def test_hf_cli_download(hub, model_dir, tmp_path) -> None:
    hf = Path(sys.executable).parent / "hf"
    target = tmp_path / "cli"
    env = {**hub_env(hub.url, tmp_path / "home"), "PATH": str(hf.parent)}
    done = subprocess.run([str(hf), "download", REPO, "--local-dir", str(target)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert files_of(target) == files_of(model_dir)
    assert done.stdout.strip().endswith(str(target))


def test_head_metadata_headers(hub, model_dir) -> None:
    sha = HfApi().model_info(REPO).sha
    data = (model_dir / SHARDS[0]).read_bytes()
    meta = get_hf_file_metadata(hf_hub_url(REPO, SHARDS[0]))
    assert meta.commit_hash == sha and meta.size == len(data) and meta.etag == hashlib.sha256(data).hexdigest()
    head = httpx.head(hf_hub_url(REPO, SHARDS[0], endpoint=hub.url))
    assert head.status_code == 200 and head.content == b""
    assert head.headers["X-Linked-Etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert head.headers["X-Linked-Size"] == head.headers["Content-Length"] == str(len(data))
    assert head.headers["Accept-Ranges"] == "bytes" and head.headers["X-Repo-Commit"] == sha
    small = httpx.head(hf_hub_url(REPO, "config.json", endpoint=hub.url))
    raw = (model_dir / "config.json").read_bytes()
    git_sha1 = hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest()
    assert small.headers["ETag"] == f'"{git_sha1}"'
    assert "X-Linked-Etag" not in small.headers


@pytest.mark.parametrize(("header", "status", "span"), [
    ("bytes=0-9", 206, (0, 9)),
    ("bytes=10-", 206, (10, None)),
    ("bytes=-7", 206, (-7, None)),
    ("bytes=5-100000000", 206, (5, None)),
    ("bytes=-100000000", 206, (0, None)),
    ("bytes=9-3", 200, (0, None)),  # invalid: ignored (RFC 9110)
    ("items=0-3", 200, (0, None)),
    ("bytes=0-1,4-5", 200, (0, None)),  # several ranges: not supported, ignored
])
def test_range_reads(hub, model_dir, header, status, span) -> None:
    data = (model_dir / SHARDS[1]).read_bytes()
    r = httpx.get(hf_hub_url(REPO, SHARDS[1], endpoint=hub.url), headers={"Range": header})
    start, end = span
    expected = data[start:] if end is None else data[start:end + 1]
    assert (r.status_code, r.content) == (status, expected)
    assert int(r.headers["Content-Length"]) == len(expected)
    if status == 206:
        first = start % len(data)
        assert r.headers["Content-Range"] == f"bytes {first}-{first + len(expected) - 1}/{len(data)}"


@pytest.mark.parametrize("header", ["bytes=999999-", "bytes=999999-1000000", "bytes=-0"])
def test_unsatisfiable_range_is_416(hub, model_dir, header) -> None:
    size = (model_dir / SHARDS[1]).stat().st_size
    r = httpx.get(hf_hub_url(REPO, SHARDS[1], endpoint=hub.url), headers={"Range": header})
    assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{size}"
    assert "not satisfiable" in r.json()["error"]


def test_get_safetensors_metadata_reads_headers_only(hub, model_dir) -> None:
    api = HfApi()
    hub.stats.reset()
    meta = api.get_safetensors_metadata(REPO)
    assert meta.sharded and set(meta.files_metadata) == set(SHARDS)
    tensor = meta.files_metadata[SHARDS[0]].tensors["layers.0.weight"]
    assert (tensor.dtype, tensor.shape) == ("BF16", [8, 8])
    assert meta.weight_map["head.bias"] == SHARDS[1] and meta.metadata["total_size"] > 0
    assert meta.files_metadata[SHARDS[1]].metadata == {"format": "pt"}
    assert all(r.startswith(("GET", "HEAD")) for r, _ in hub.stats.requests)
    one_shot = api.get_sharded_safetensors_metadata(REPO)
    assert one_shot.files_metadata[SHARDS[0]].tensors == meta.files_metadata[SHARDS[0]].tensors


def test_dataset_and_space_repos(hub) -> None:
    data = hub.repo_dir("org/rows", repo_type="dataset")
    (data / "data").mkdir(parents=True)
    (data / "data" / "train.jsonl").write_text('{"x": 1}\n{"x": 2}\n')
    space = hub.repo_dir("org/board", repo_type="space")
    space.mkdir(parents=True)
    (space / "README.md").write_text("---\nsdk: gradio\n---\n")
    api = HfApi()
    assert [s.rfilename for s in api.dataset_info("org/rows").siblings] == ["data/train.jsonl"]
    path = hf_hub_download("org/rows", "data/train.jsonl", repo_type="dataset")
    assert Path(path).read_text().count("\n") == 2
    assert api.space_info("org/board").sdk == "gradio"
    readme = hf_hub_download("org/board", "README.md", repo_type="space")
    assert Path(readme).read_text() == "---\nsdk: gradio\n---\n"
    assert not api.repo_exists("org/rows")  # a dataset is not a model
    listed = [d.id for d in api.list_datasets(author="org")]
    assert listed == ["org/rows"]


def test_load_dataset_from_the_hub(hub, tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    repo = hub.repo_dir("org/pairs", repo_type="dataset")
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "train.jsonl").write_text("".join(json.dumps({"q": f"q{i}", "a": i}) + "\n" for i in range(5)))
    (repo / "data" / "test.jsonl").write_text(json.dumps({"q": "t", "a": 9}) + "\n")
    from mergebench.hub.endpoint import use_endpoint

    with use_endpoint(hub.url, hf_home=tmp_path / "home"):  # `datasets` may have been imported just now
        ds = datasets.load_dataset("org/pairs", cache_dir=str(tmp_path / "ds-cache"))
    assert ds["train"]["a"] == [0, 1, 2, 3, 4] and ds["test"]["q"] == ["t"]


def test_transformers_loads_straight_from_the_hub(hub) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2)
    transformers.LlamaForCausalLM(config).save_pretrained(hub.repo_dir("org/llama"))
    model = transformers.AutoModelForCausalLM.from_pretrained("org/llama")
    assert model.config.hidden_size == 8
    assert hub.stats.count("GET", "model.safetensors") == 1
