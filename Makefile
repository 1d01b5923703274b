# Two entry points: `make tables` runs the pipeline on the embedded default, `make test` runs the tests.
# Both create .venv when it is absent. torch is installed first and pinned on every later pip call,
# because a package that asks for torch without a pin would otherwise pull a multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Snakemake's cores: this machine's (more would start CPU-bound jobs that only wait for each other).
CORES  ?= $(shell nproc 2>/dev/null || echo 2)
# llama-cpp-python compiles llama.cpp; only the library is needed (no tools, tests, server or llava).
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF

.PHONY: venv tables study test dry-run clean-results llama-cpp

$(BIN)/mint: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=2 \
		$(BIN)/pip install --quiet "torch==2.13.0" -e ".[mlx,gguf]"
	$(BIN)/python -c "import torch, mlx_lm, llama_cpp; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(BIN)/mint

venv: $(BIN)/mint

# llama.cpp's converter (convert_hf_to_gguf.py, conversion/) and its gguf-py, for `--format gguf`: taken
# from the source package of the pinned llama-cpp-python, so they are the llama.cpp the compiled library
# was built from (the registry's `gguf` wheel is another version). Not committed (the project copies no
# code): extracted into the ignored resources/ folder, where mint/gguf.py looks for them.
LLAMA_CPP_PYTHON := 0.3.36
LLAMA_CPP_DIR    := resources/llama.cpp
LLAMA_CPP_SDIST  := resources/sdist/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz

$(LLAMA_CPP_DIR)/convert_hf_to_gguf.py: | $(BIN)/mint
	mkdir -p resources/sdist $(LLAMA_CPP_DIR)
	test -f $(LLAMA_CPP_SDIST) || $(BIN)/pip download --quiet --no-deps --no-binary :all: \
		"llama-cpp-python==$(LLAMA_CPP_PYTHON)" -d resources/sdist
	tar -xzf $(LLAMA_CPP_SDIST) -C $(LLAMA_CPP_DIR) --strip-components=3 \
		llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp/convert_hf_to_gguf.py \
		llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp/conversion \
		llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp/gguf-py
	touch $@

llama-cpp: $(LLAMA_CPP_DIR)/convert_hf_to_gguf.py

tables: venv gptq-env llama-cpp
	$(BIN)/snakemake --cores $(CORES) results/tables

# The default tables plus the variant study (config/study.yaml), about 70 minutes more on 2 cores.
study: venv gptq-env llama-cpp
	$(BIN)/snakemake --cores $(CORES) --configfile config/study.yaml results/tables

dry-run: venv
	$(BIN)/snakemake -n results/tables

# The GPTQ environment is built too, so that the GPTQ-vs-RTN tests run rather than skip.
test: venv gptq-env llama-cpp
	$(BIN)/python -m pytest

clean-results:
	rm -rf results/*/ logs/ .snakemake/

# GPTQ baseline (`mint baseline gptq` runs mint/gptq.py here): llm-compressor 0.14 pins
# transformers<=5.17, which cannot share .venv (transformers 5.24), so it gets its own environment.
# torch is pinned on every pip call for the reason above. Python >= 3.11 (the worker runs `python -P`).
GPTQ_VENV := .venv-gptq

.PHONY: gptq-env

$(GPTQ_VENV)/.installed:
	test -x $(GPTQ_VENV)/bin/python || $(PYTHON) -m venv $(GPTQ_VENV)
	$(GPTQ_VENV)/bin/python -c "import sys; assert sys.version_info >= (3, 11), sys.version"
	$(GPTQ_VENV)/bin/pip install --quiet --upgrade pip
	$(GPTQ_VENV)/bin/pip install --quiet "torch==2.13.0"
	$(GPTQ_VENV)/bin/pip install --quiet "torch==2.13.0" "llmcompressor==0.14.0.1" "compressed-tensors==0.19.0" \
		"transformers==5.17.0" "safetensors==0.8.0" "numpy==2.4.6"
	$(GPTQ_VENV)/bin/python -c "import torch, llmcompressor; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

gptq-env: $(GPTQ_VENV)/.installed
