"""`scripts/demo.py me/model --push-space me/demo`: the demo page as a Hugging Face Space (gradio SDK).

The Space holds exactly what it runs: `app.py` (serve/space_app.py with the model's Hub name filled in),
`requirements.txt` (what the gradio Space image lacks: torch and timm) and `README.md` (the Space's metadata:
sdk, its gradio version, app file, the model it links to). The Space loads the model by its Hub name at start.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from hf_finetune.errors import UserError
from hf_finetune.files import write_text

SPACE_FILES = ("app.py", "requirements.txt", "README.md")
MODEL_ID_LINE = "MODEL_ID = None"
# The gradio Space image brings gradio (at sdk_version) and huggingface_hub; the model needs these on top.
REQUIREMENTS = ["torch", "timm>=1.0.20"]


def write_space_folder(model_id: str, folder: Path) -> Path:
    """SPACE_FILES for a Space serving the Hub model `model_id`, written into FOLDER."""
    import gradio
    from huggingface_hub import SpaceCard, SpaceCardData

    from hf_finetune.serve import space_app

    source = inspect.getsource(space_app)
    if source.count(MODEL_ID_LINE) != 1:
        raise AssertionError(f"serve/space_app.py must hold the line {MODEL_ID_LINE!r} exactly once")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "app.py", source.replace(MODEL_ID_LINE, f"MODEL_ID = {model_id!r}"))
    write_text(folder / "requirements.txt", "".join(line + "\n" for line in REQUIREMENTS))
    data = SpaceCardData(title=model_id.split("/")[-1], sdk="gradio", sdk_version=gradio.__version__,
                         app_file="app.py", models=[model_id], tags=["image-classification", "hf_finetune"])
    card = SpaceCard(f"---\n{data.to_yaml()}\n---\n\n# {model_id}\n\nTry the image classifier "
                     f"[{model_id}](https://huggingface.co/{model_id}): upload or drop an image to see its labels "
                     "with their probabilities. Made with hf_finetune's `scripts/demo.py --push-space`.\n")
    write_text(folder / "README.md", str(card))
    return folder


def push_space(model_id: str, space_id: str, private: bool = False) -> str:
    """Create (or update) the Space `space_id` serving the Hub model `model_id` in one commit; the commit URL."""
    import tempfile

    from huggingface_hub import CommitOperationAdd, HfApi

    from hf_finetune.publish.hub import with_retries, check_push_possible

    check_push_possible(space_id)
    api = HfApi()
    retry_command = f"python scripts/demo.py {model_id} --push-space {space_id}"
    if not with_retries(f"find the model repo {model_id}", retry_command, lambda: api.repo_exists(model_id)):
        raise UserError(f"no model repo {model_id} on the Hub (or no access to it): push the model first "
                        "(scripts/push.py RUN me/model), then its Space")
    with tempfile.TemporaryDirectory(prefix="hf_finetune_space_") as scratch:
        folder = write_space_folder(model_id, Path(scratch))
        with_retries(f"create the Space {space_id}", retry_command, lambda: api.create_repo(
            space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True))
        commit = with_retries(f"upload the Space {space_id}", retry_command, lambda: api.create_commit(
            space_id, [CommitOperationAdd(path_in_repo=name, path_or_fileobj=folder / name) for name in SPACE_FILES],
            repo_type="space", commit_message=f"Demo page for {model_id}"))
    return commit.commit_url
