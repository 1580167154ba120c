"""Writing to the loopback Hub with the real client: create_repo, upload_file/folder, create_commit."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationCopy,
    CommitOperationDelete,
    HfApi,
    hf_hub_download,
)
from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError, RevisionNotFoundError

from mergebench.hubserver import LoopbackHub
from mergebench.hubserver.store import GITATTRIBUTES
from tests.hubserver._repos import files_of

REPO = "alice/pushed"


def test_create_repo_conflicts_and_exist_ok(hub: LoopbackHub) -> None:
    api = HfApi()
    url = api.create_repo(REPO)
    assert url == f"{hub.url}/{REPO}" and url.repo_id == REPO and url.repo_type == "model"
    assert (hub.repo_dir(REPO) / ".gitattributes").read_text() == GITATTRIBUTES
    with pytest.raises(HfHubHTTPError) as info:
        api.create_repo(REPO)
    assert info.value.response.status_code == 409
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO
    assert api.create_repo("mine", repo_type="dataset").repo_id == "alice/mine"  # namespace = whoami
    assert hub.repo_dir("alice/mine", repo_type="dataset").is_dir()
    space = api.create_repo("org/app", repo_type="space", space_sdk="gradio")
    assert space.repo_type == "space" and api.space_info("org/app").sdk == "gradio"
    bad = httpx.post(f"{hub.url}/api/repos/create", json={"name": "bad--name", "organization": "org"})
    assert bad.status_code == 400 and "Invalid repo id 'org/bad--name'" in bad.json()["error"]
    api.delete_repo("alice/mine", repo_type="dataset")
    assert not hub.repo_dir("alice/mine", repo_type="dataset").exists()


def test_upload_file_changes_the_sha_and_old_sha_is_gone(hub, tmp_path) -> None:
    api = HfApi()
    api.create_repo(REPO)
    before = api.model_info(REPO).sha
    info = api.upload_file(path_or_fileobj=b'{"a": 1}', path_in_repo="conf/config.json", repo_id=REPO)
    assert info.oid == api.model_info(REPO).sha != before
    assert info.commit_url == f"{hub.url}/{REPO}/commit/{info.oid}"
    assert (hub.repo_dir(REPO) / "conf" / "config.json").read_bytes() == b'{"a": 1}'
    assert api.list_repo_commits(REPO)[0].title == "Upload conf/config.json with huggingface_hub"
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision=before)
    assert Path(hf_hub_download(REPO, "conf/config.json", revision=info.oid)).read_bytes() == b'{"a": 1}'


def test_upload_folder_with_lfs_files_roundtrips(hub, tmp_path) -> None:
    api = HfApi()
    api.create_repo(REPO)
    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    (src / "README.md").write_text("---\nlicense: mit\n---\n# pushed\n")
    (src / "weights.safetensors").write_bytes(os.urandom(3_000_000))  # LFS by suffix
    (src / "nested" / "big.txt").write_bytes(b"0123456789" * 1_100_000)  # LFS by size (11 MB)
    (src / "nested" / "empty.txt").write_bytes(b"")
    info = api.upload_folder(repo_id=REPO, folder_path=src)
    stored = files_of(hub.repo_dir(REPO))
    assert {k: v for k, v in stored.items() if k != ".gitattributes"} == files_of(src)
    assert hub.stats.count("PUT", "/api/lfs-upload/*") == 2  # both LFS files streamed, not base64'd
    assert not list((hub.root / ".hubserver" / "lfs").iterdir())  # staged objects consumed by the commit
    siblings = {s.rfilename: s for s in api.model_info(REPO, files_metadata=True).siblings}
    assert siblings["nested/big.txt"].lfs is not None and siblings["README.md"].lfs is None
    # Pushing the same folder again is a no-op for the client: nothing uploaded, same commit.
    hub.stats.reset()
    again = api.upload_folder(repo_id=REPO, folder_path=src)
    assert again.oid == info.oid and hub.stats.count("POST", "*/commit/*") == 0
    assert hub.stats.count("PUT") == 0


def test_create_commit_with_deletions_copies_and_parent(hub) -> None:
    api = HfApi()
    api.create_repo(REPO)
    first = api.create_commit(REPO, commit_message="three files", operations=[
        CommitOperationAdd("a.txt", b"a"), CommitOperationAdd("dir/b.txt", b"b"),
        CommitOperationAdd("dir/c.bin", b"c" * 1000),
    ])
    second = api.create_commit(REPO, commit_message="reshuffle", parent_commit=first.oid, operations=[
        CommitOperationDelete("a.txt"), CommitOperationCopy("dir/c.bin", "copy.bin"),
        CommitOperationDelete("dir/"), CommitOperationAdd("new.txt", b"new"),
    ])
    assert sorted(api.list_repo_files(REPO)) == [".gitattributes", "copy.bin", "new.txt"]
    assert (hub.repo_dir(REPO) / "copy.bin").read_bytes() == b"c" * 1000
    assert not (hub.repo_dir(REPO) / "dir").exists()  # no empty folders left behind
    assert api.list_repo_commits(REPO)[0].commit_id == second.oid
    with pytest.raises(HfHubHTTPError) as stale:  # parent is no longer the head
        api.create_commit(REPO, commit_message="late", parent_commit=first.oid,
                          operations=[CommitOperationAdd("x.txt", b"x")])
    assert stale.value.response.status_code == 412
    with pytest.raises(RemoteEntryNotFoundError, match="doesn't exist"):
        api.delete_file("nope.txt", REPO)
    with pytest.raises(HfHubHTTPError) as clash:  # a file cannot become a folder
        api.upload_file(path_or_fileobj=b"x", path_in_repo="new.txt/inner.txt", repo_id=REPO)
    assert clash.value.response.status_code == 400
    assert sorted(api.list_repo_files(REPO)) == [".gitattributes", "copy.bin", "new.txt"]  # failed commits: no trace


def test_dataset_repo_upload_and_download(hub, tmp_path) -> None:
    api = HfApi()
    api.create_repo("org/data", repo_type="dataset")
    api.upload_file(path_or_fileobj=b"x,y\n1,2\n", path_in_repo="data/train.csv", repo_id="org/data",
                    repo_type="dataset")
    path = hf_hub_download("org/data", "data/train.csv", repo_type="dataset", local_dir=tmp_path / "d")
    assert Path(path).read_bytes() == b"x,y\n1,2\n"
    assert (hub.repo_dir("org/data", repo_type="dataset") / "data" / "train.csv").is_file()


def test_upload_to_missing_repo_or_branch(hub) -> None:
    from huggingface_hub.errors import RepositoryNotFoundError

    api = HfApi()
    with pytest.raises(RepositoryNotFoundError):
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/absent")
    api.create_repo(REPO)
    with pytest.raises(RevisionNotFoundError):
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO, revision="dev")
