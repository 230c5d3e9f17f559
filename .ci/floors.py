"""Print `name==floor` for the stack packages pyproject.toml declares as `name>=floor`: CI installs exactly them."""

import re
import tomllib
from pathlib import Path

STACK = ("timm", "transformers", "datasets", "accelerate", "huggingface_hub")

dependencies = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
floors = dict(re.fullmatch(r"([\w.-]+)>=([\w.]+)", spec).groups() for spec in dependencies if ">=" in spec)
print(" ".join(f"{name}=={floors[name]}" for name in STACK))
