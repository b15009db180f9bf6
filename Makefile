# The two commands of the README:
#   make train   installs into .venv (first time only) and runs the main job
#   make test    installs into .venv (first time only) and runs the test suite
# Override the interpreter with PYTHON=..., the torch build with TORCH_SPEC=...

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PLUGINS := plugins/kornia plugins/simclr plugins/metassl plugins/faiss plugins/moco plugins/clsa plugins/metaug plugins/classic plugins/tabular plugins/timm plugins/wandb plugins/mlflow
BIN := $(VENV)/bin
STAMP := $(VENV)/.metacontrast-installed
TRAIN_ARGS ?= experiment=digits_simclr

.PHONY: install train test lint clean-venv

# setuptools warns, for every editable install, that a folder named like the package in the
# working directory would shadow it; none does (packages live under core/ and plugins/)
$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(PLUGINS))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet -e ".[test]" \
		$(addprefix -e ,$(PLUGINS))
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(BIN)/metacontrast train $(TRAIN_ARGS)

test: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/python -m ruff check .

clean-venv:
	rm -rf $(VENV)
