"""The two descriptions of the environment agree, and torch stays at the pinned CPU build."""

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def pyproject_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return set(project["dependencies"]).union(*extras.values())


def environment_pins():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return set(pip)


def test_environment_yml_matches_pyproject():
    ours, theirs = pyproject_pins(), environment_pins()
    assert ours == theirs, f"only in pyproject: {ours - theirs}; only in environment.yml: {theirs - ours}"


def test_every_dependency_is_pinned():
    assert all("==" in pin for pin in pyproject_pins())


def test_torch_is_the_pinned_cpu_build():
    import torch

    assert torch.__version__.startswith("2.13.0")
    assert torch.version.cuda is None, "a CUDA build of torch was installed: some package asked for a newer torch"


def test_cli_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "mint", "--help"], capture_output=True, text=True, check=True)
    for command in ("analyze", "experts", "allocate", "quantize", "inspect", "evaluate", "train-reference"):
        assert command in out.stdout
    bad = subprocess.run([sys.executable, "-m", "mint", "frobnicate"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command" in bad.stderr


def test_every_runtime_is_installed():
    # `make test` installs every runtime the exports are checked in; a missing one is a broken
    # set-up, so the suite fails here instead of letting the runtime tests pass by skipping.
    import importlib.util

    from mint import baseline

    missing = [m for m in ("mlx_lm", "llama_cpp") if importlib.util.find_spec(m) is None]
    try:
        from mint import gguf

        gguf.llama_cpp_dir()  # llama.cpp's converter and gguf-py, for GGUF exports (`make llama-cpp`)
    except gguf.GGUFError as e:
        missing.append(str(e))
    if not baseline.gptq_python().exists():
        missing.append(f"GPTQ environment ({baseline.gptq_python()})")
    assert not missing, f"runtimes missing (run `make test`, which installs them): {missing}"
