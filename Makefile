# Two entry points: `make tables` runs the pipeline on the embedded default, `make test` runs the tests.
# Both create .venv when it is absent. torch is installed first and pinned on every later pip call,
# because a package that asks for torch without a pin would otherwise pull a multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CORES  ?= 8

.PHONY: venv tables test dry-run clean-results

$(BIN)/mint: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet "torch==2.13.0" -e ".[mlx]"
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(BIN)/mint

venv: $(BIN)/mint

tables: venv
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES) results/tables

dry-run: venv
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake -n results/tables

test: venv
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

clean-results:
	rm -rf results/*/ logs/ .snakemake/
