"""Publishing a run to the local Hub server with the real huggingface_hub client: one commit, retries, no leaks."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, make_image_folder, run_script
from finished_run import make_finished_run
from hub_server import free_port

from hf_finetune.publish import hub as hub_module
from hf_finetune.publish.card import write_model_card
from hf_finetune.errors import UserError
from hf_finetune.publish.hub import PUSHED_FILES, push_to_hub, verify_pushed

SINGLE_LABEL_PUSHED = sorted(set(PUSHED_FILES) - {"per_label_ap.png"})  # a single-label run's: no per-label APs


@pytest.fixture
def token(monkeypatch) -> str:
    value = "hf_" + secrets.token_hex(12)
    monkeypatch.setenv("HF_TOKEN", value)
    return value


def digests(folder: Path) -> dict[str, str]:
    """The output's files but the card, which a push rewrites to name its repo."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and p.name != "README.md"}


def test_push_publishes_exactly_the_model_in_one_private_commit(hub, token, tmp_path):
    from huggingface_hub import HfApi

    run = make_finished_run(tmp_path / "run")
    url = push_to_hub(run, "tester/push-once")
    latest, created = hub.commits("tester/push-once")[:2]
    assert url.endswith(f"/tester/push-once/commit/{latest['sha']}")
    assert sorted(latest["files"]) == SINGLE_LABEL_PUSHED and created["files"] == {}
    assert hub.files("tester/push-once") == {name: (run / name).read_bytes() for name in SINGLE_LABEL_PUSHED}
    assert "hf-hub:tester/push-once" in (run / "README.md").read_text()  # the card names the real repo
    assert HfApi().model_info("tester/push-once").private is True
    # The push pulled that very commit back to compare logits.
    assert ("GET", f"/tester/push-once/resolve/{latest['sha']}/model.safetensors", 200) in hub.requests
    assert f"Bearer {token}" in hub.auth_headers


def test_repush_makes_a_new_commit_with_the_new_model_and_card(hub, token, tmp_path):
    run = make_finished_run(tmp_path / "run", seed=0)
    push_to_hub(run, "tester/push-twice")
    first_loss = json.loads((run / "metrics.json").read_text())["final"]["eval_loss"]
    make_finished_run(run, seed=1)  # a new training run into the same folder
    second_loss = json.loads((run / "metrics.json").read_text())["final"]["eval_loss"]
    assert f"{first_loss:.4f}" != f"{second_loss:.4f}"
    push_to_hub(run, "tester/push-twice")  # verifies the new weights, pulled afresh
    second, first = hub.commits("tester/push-twice")[:2]
    assert second["files"]["model.safetensors"] != first["files"]["model.safetensors"]
    pushed_card = hub.files("tester/push-twice")["README.md"].decode()
    assert f"| eval loss | {second_loss:.4f} |" in pushed_card
    # Pushing the same output again publishes nothing new: no empty commit.
    assert push_to_hub(run, "tester/push-twice").endswith(second["sha"])
    assert len(hub.commits("tester/push-twice")) == 3


def test_push_survives_transient_errors(hub, token, tmp_path):
    run = make_finished_run(tmp_path / "run")
    hub.inject_fault(503, 2)  # the next two requests, whatever they are (here: creating the repo)
    hub.inject_fault(429, 1, path_contains="/tester/push-flaky/commit/")
    before = len(hub.requests)
    push_to_hub(run, "tester/push-flaky")
    statuses = [(path, status) for _, path, status in hub.requests[before:]]
    assert statuses[:3] == [("/api/repos/create", 503), ("/api/repos/create", 503), ("/api/repos/create", 200)]
    assert ("/api/models/tester/push-flaky/commit/main", 429) in statuses
    assert ("/api/models/tester/push-flaky/commit/main", 200) in statuses
    assert sorted(hub.commits("tester/push-flaky")[0]["files"]) == SINGLE_LABEL_PUSHED


def test_persistent_server_error_fails_clearly_and_keeps_the_output(hub, token, tmp_path, monkeypatch):
    monkeypatch.setattr(hub_module, "RETRY_WAITS", (0.0, 0.0, 0.0))
    run = make_finished_run(tmp_path / "run")
    write_model_card(run)
    before = digests(run)
    hub.inject_fault(500, 1000, path_contains="/tester/push-down/commit/")
    with pytest.raises(UserError, match=r"could not upload .* after 4 attempts: .*500.*scripts/push.py"):
        push_to_hub(run, "tester/push-down")
    assert digests(run) == before
    assert "hf-hub:tester/push-down" in (run / "README.md").read_text()
    assert [c["files"] for c in hub.commits("tester/push-down")] == [{}]  # nothing half-published


def test_verification_catches_a_repo_that_differs_from_the_local_model(hub, token, tmp_path):
    pushed = make_finished_run(tmp_path / "pushed", seed=0)
    push_to_hub(pushed, "tester/push-verify")
    sha = hub.commits("tester/push-verify")[0]["sha"]
    other_weights = make_finished_run(tmp_path / "other", seed=1)
    with pytest.raises(UserError, match="other logits"):
        verify_pushed(other_weights, "tester/push-verify", sha)
    other_labels = make_finished_run(tmp_path / "labels", seed=0, labels=["a", "b", "c"])
    with pytest.raises(UserError, match="has labels"):
        verify_pushed(other_labels, "tester/push-verify", sha)


def test_a_bare_repo_name_lands_in_the_token_owner_namespace(hub, token, tmp_path):
    run = make_finished_run(tmp_path / "run")
    url = push_to_hub(run, "push-bare")
    assert "/tester/push-bare/commit/" in url
    assert sorted(hub.commits("tester/push-bare")[0]["files"]) == SINGLE_LABEL_PUSHED
    assert 'pipeline("image-classification", model="tester/push-bare")' in (run / "README.md").read_text()


def test_push_needs_a_valid_repo_id_a_finished_run_and_a_token(hub, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    run = make_finished_run(tmp_path / "run")
    with pytest.raises(UserError, match="invalid repo id 'me/two words'"):
        push_to_hub(run, "me/two words")
    with pytest.raises(UserError, match="no Hugging Face token: set HF_TOKEN"):
        push_to_hub(run, "tester/push-no-token")
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    (run / "metrics.json").unlink()
    with pytest.raises(UserError, match="no metrics.json"):
        push_to_hub(run, "tester/push-no-token")


def test_push_script_never_reveals_the_token(hub, hub_env, tmp_path):
    from huggingface_hub import HfApi

    token = "hf_" + secrets.token_hex(16)
    run = make_finished_run(tmp_path / "run")
    hub.inject_fault(503, 2, path_contains="/tester/push-script/commit/")  # retries get logged, too
    result = run_script("push.py", run, "tester/push-script", "--hub-public", env={**hub_env, "HF_TOKEN": token})
    assert "pushed and verified tester/push-script" in result.stdout
    assert "503" in result.stderr
    assert token not in result.stdout + result.stderr
    for file in run.rglob("*"):
        assert not file.is_file() or token.encode() not in file.read_bytes(), file
    assert f"Bearer {token}" in hub.auth_headers  # it was used, just never shown
    assert HfApi(token=token).model_info("tester/push-script").private is False


def test_push_script_failure_is_one_line_and_exit_2(hub, hub_env, tmp_path):
    run = make_finished_run(tmp_path / "run")
    before = digests(run)
    hub.inject_fault(403, 1, path_contains="/api/repos/create")
    result = run_script("push.py", run, "tester/push-refused", env=hub_env, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: could not create the Hub repo")
    assert "403" in result.stderr and "Traceback" not in result.stderr
    assert digests(run) == before


def test_an_unreachable_hub_is_retried_then_one_line_and_exit_2(hub_env, tmp_path):
    """Nothing listens at the endpoint: the Hub client's network error (its transport's own type) is retried and
    reported in one line; the local output is untouched."""
    from hub_server import free_port

    run = make_finished_run(tmp_path / "run")
    before = digests(run)
    result = run_script("push.py", run, "tester/push-offline", check=False,
                        env={**hub_env, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("retrying in") == 4
    assert result.stderr.strip().splitlines()[-1].startswith("error: could not create the Hub repo tester/push-offline "
                                                             "after 5 attempts")
    assert digests(run) == before


def _two_nodes_pushing(tmp_path: Path, hub, repo_id: str, logged_in_node: int) -> list[tuple[int, str, str]]:
    """Two machines (two torchrun agents, one process each), each with its own HF_HOME, as logins are per
    machine: only `logged_in_node` has a token (`hf auth login` writes HF_HOME/token). (returncode, out, err)."""
    photos = make_image_folder(tmp_path / "photos", per_class=(8, 4))
    port, agents = free_port(), []
    for node in (0, 1):
        home = tmp_path / f"node{node}" / "hf_home"
        home.mkdir(parents=True)
        if node == logged_in_node:
            (home / "token").write_text("hf_test_token")
        env = {key: value for key, value in os.environ.items() if key not in ("HF_TOKEN", "HF_TOKEN_PATH")}
        env.update(HF_HOME=str(home), HF_ENDPOINT=hub.url)
        agents.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--node-rank",
             str(node), "--master-addr", "127.0.0.1", "--master-port", str(port),
             str(REPO_ROOT / "scripts" / "finetune.py"), "--data-dir", str(photos), "--model", "test_resnet",
             "--no-pretrained", "--img-size", "32", "--batch-size", "8", "--num-workers", "0", "--epochs", "1",
             "--output-dir", str(tmp_path / f"node{node}" / "out"), "--push-to-hub", repo_id],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True))
    try:
        outputs = [agent.communicate(timeout=420) for agent in agents]
    except subprocess.TimeoutExpired:  # a machine waiting for one that left: stop both launches, and fail
        for agent in agents:
            os.killpg(agent.pid, signal.SIGKILL)
        raise
    return [(agent.returncode, out, err) for agent, (out, err) in zip(agents, outputs)]


def test_only_the_main_process_needs_a_token_in_a_two_node_launch(hub, tmp_path):
    """The main process alone pushes: the second machine needs no login."""
    (code0, out0, err0), (code1, out1, err1) = _two_nodes_pushing(tmp_path, hub, "tester/two-nodes", logged_in_node=0)
    assert code0 == code1 == 0, f"node 0:\n{err0[-3000:]}\nnode 1:\n{err1[-3000:]}"
    assert out0.count("pushed: ") == 1 and "pushed" not in out1
    assert "model.safetensors" in hub.files("tester/two-nodes")


def test_a_main_process_without_a_token_stops_every_machine_with_the_same_line(hub, tmp_path):
    """Checked before the data is loaded, on the main process; its verdict reaches the other machine, which
    exits with the same one line instead of hanging or dying in a collective."""
    (code0, _, err0), (code1, _, err1) = _two_nodes_pushing(tmp_path, hub, "tester/no-token", logged_in_node=1)
    for code, err in ((code0, err0), (code1, err1)):
        assert code != 0 and "exitcode  : 2" in err, err[-3000:]
        assert err.count("error: no Hugging Face token") == 1 and "Traceback" not in err.split("error: ")[0], err
    assert not (tmp_path / "node0" / "out" / "run_config.json").exists()


def test_one_process_without_a_token_stops_before_the_data_with_one_line(tmp_path):
    out = tmp_path / "out"
    result = run_script("finetune.py", "--data-dir", make_image_folder(tmp_path / "photos"), "--model", "test_resnet",
                        "--no-pretrained", "--output-dir", out, "--push-to-hub", "tester/none", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: no Hugging Face token: set HF_TOKEN")
    assert not out.exists()
