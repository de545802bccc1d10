# Every target installs into .venv on first use. Variables map to CLI flags;
# an empty variable means "use the default" (see README "Make targets").
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BOTTLENECK := $(PY) -m pipeline

DATA ?= data/digits
MODEL ?= mobilenet_v2
WEIGHTS ?= imagenet
SIZE ?=
POOLING ?=
LAYER ?=
BATCH ?=
PRECISION ?=
WORKERS ?=
CACHE ?= cache
CONFIG ?=
# Extra flags passed through unchanged, e.g. ARGS="--json".
ARGS ?=

opt = $(if $(strip $(2)),$(1) $(2))

.PHONY: setup features test sample-data list clean-cache

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[tensorflow,jax,dev]'
	touch $@

setup: $(VENV)/.installed

data/digits: | $(VENV)/.installed
	$(BOTTLENECK) sample-data data/digits

sample-data: data/digits

features: $(VENV)/.installed $(if $(filter data/digits,$(DATA)),data/digits)
	$(BOTTLENECK) features $(DATA) --model $(MODEL) --weights $(WEIGHTS) --cache-dir $(CACHE) \
		$(call opt,--size,$(SIZE)) $(call opt,--pooling,$(POOLING)) $(call opt,--layer,$(LAYER)) \
		$(call opt,--batch-size,$(BATCH)) $(call opt,--precision,$(PRECISION)) \
		$(call opt,--workers,$(WORKERS)) $(call opt,--config,$(CONFIG)) $(ARGS)

list: $(VENV)/.installed
	$(BOTTLENECK) list

test: $(VENV)/.installed
	$(PY) -m pytest -q $(ARGS)

clean-cache:
	rm -rf $(CACHE)/*/
