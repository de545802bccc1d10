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
# RUNTIME=onnx runs the base in ONNX Runtime: 3-4x TensorFlow on CPUs, same features.
RUNTIME ?=
WORKERS ?=
DECODE_MODE ?=
# DECODER=nvjpeg decodes and resizes JPEGs on the GPU (torchvision; `make setup-nvjpeg` installs it).
DECODER ?=
DEVICES ?=
NUM_SHARDS ?=
SHARD_INDEX ?=
# ENGINE=ray spreads extraction over a Ray cluster (RAY_ADDRESS=auto or ray://host:port,
# RAY_WORKERS model workers, GPUS_PER_WORKER each).
ENGINE ?=
RAY_ADDRESS ?=
RAY_WORKERS ?=
GPUS_PER_WORKER ?=
CACHE ?= cache
CONFIG ?=
# train-head: FEATURES is a cache name/prefix or path (empty: the only set in
# CACHE); HEAD and PARAMS are space-separated lists, e.g. HEAD="logreg dense"
# PARAMS="C=0.5 dense.epochs=10" (no spaces inside one value). SWEEP=grid
# searches each head's default grid; SWEEP="C=0.01,0.1,1 knn.n_neighbors=1,5"
# these values; SELECT (accuracy, macro_f1, log_loss) and REFIT (train,
# train+validation) say how the winner is chosen and trained. TRANSFORM is the
# feature transform fitted with each head (standard, l2, sqrt-l2, pca-whiten-N;
# several, comma-separated, are swept).
FEATURES ?=
HEAD ?=
# curve: FRACTIONS="0.01,0.1,0.5,1" REPEATS=3 (HEAD, PARAMS, SWEEP, SELECT, SPLITS, SEED as for train-head)
FRACTIONS ?=
REPEATS ?=
PARAMS ?=
FRACTION ?=
SWEEP ?=
SELECT ?=
REFIT ?=
TRANSFORM ?=
SPLITS ?=
SEED ?=
# features: AUGMENT=K augmented views per training image, AUGMENT_OPS, AUGMENT_SEED;
# train-head: AUGMENTED=1 trains on them too.
AUGMENT ?=
AUGMENT_OPS ?=
AUGMENT_SEED ?=
AUGMENTED ?=
# predict / evaluate / export: RUN is a run folder (or a bundle folder),
# IMAGES space-separated files or folders, OUTPUT the predictions CSV, OUT
# the export target (OUT.keras, or a new folder for a bundle); evaluate
# reads the labelled folder DATA.
RUN ?=
IMAGES ?=
OUTPUT ?=
TOPK ?=
OUT ?=
FORMAT ?=
# report: RUNS is the runs folder, OUTPUT the HTML file (FEATURES narrows it to some feature sets).
RUNS ?= runs
# finetune: RUN is a dense head's run folder; UNFREEZE the top layers to train
# (a number or all), EPOCHS and LR (learning rate); ARGS="--resume" continues
# a killed fine-tune.
UNFREEZE ?=
EPOCHS ?=
LR ?=
# Extra flags passed through unchanged, e.g. ARGS="--json".
ARGS ?=

opt = $(if $(strip $(2)),$(1) $(2))
# Each command on one line, built here, so Make echoes no empty continuation lines.
FEATURES_FLAGS = $(strip --model $(MODEL) --weights $(WEIGHTS) --cache-dir $(CACHE) \
	$(call opt,--size,$(SIZE)) $(call opt,--pooling,$(POOLING)) $(call opt,--layer,$(LAYER)) \
	$(call opt,--batch-size,$(BATCH)) $(call opt,--precision,$(PRECISION)) $(call opt,--runtime,$(RUNTIME)) \
	$(call opt,--workers,$(WORKERS)) $(call opt,--decode-mode,$(DECODE_MODE)) $(call opt,--decoder,$(DECODER)) \
	$(call opt,--augment,$(AUGMENT)) $(call opt,--augment-ops,$(AUGMENT_OPS)) \
	$(call opt,--augment-seed,$(AUGMENT_SEED)) $(call opt,--devices,$(DEVICES)) $(call opt,--num-shards,$(NUM_SHARDS)) \
	$(call opt,--shard-index,$(SHARD_INDEX)) $(call opt,--engine,$(ENGINE)) $(call opt,--address,$(RAY_ADDRESS)) \
	$(call opt,--ray-workers,$(RAY_WORKERS)) $(call opt,--gpus-per-worker,$(GPUS_PER_WORKER)) \
	$(call opt,--config,$(CONFIG)) $(ARGS))
TRAIN_FLAGS = $(strip $(FEATURES) --cache-dir $(CACHE) \
	$(foreach h,$(HEAD),--head $(h)) $(foreach p,$(PARAMS),--param '$(p)') \
	$(call opt,--fraction,$(FRACTION)) $(call opt,--splits,$(SPLITS)) \
	$(foreach s,$(SWEEP),$(if $(findstring =,$(s)),--sweep '$(s)',--sweep)) \
	$(call opt,--select,$(SELECT)) $(call opt,--refit,$(REFIT)) $(call opt,--transform,$(TRANSFORM)) \
	$(call opt,--seed,$(SEED)) $(call opt,--config,$(CONFIG)) \
	$(if $(filter 1,$(AUGMENTED)),--augmented) $(ARGS))

CURVE_FLAGS = $(strip $(FEATURES) --cache-dir $(CACHE) \
	$(foreach h,$(HEAD),--head $(h)) $(foreach p,$(PARAMS),--param '$(p)') \
	$(call opt,--fractions,$(FRACTIONS)) $(call opt,--repeats,$(REPEATS)) $(call opt,--splits,$(SPLITS)) \
	$(foreach s,$(SWEEP),$(if $(findstring =,$(s)),--sweep '$(s)',--sweep)) \
	$(call opt,--select,$(SELECT)) $(call opt,--transform,$(TRANSFORM)) $(call opt,--seed,$(SEED)) \
	$(call opt,--config,$(CONFIG)) $(ARGS))
FINETUNE_FLAGS = $(strip $(call opt,--unfreeze,$(UNFREEZE)) $(call opt,--epochs,$(EPOCHS)) \
	$(call opt,--learning-rate,$(LR)) $(call opt,--batch-size,$(BATCH)) $(call opt,--workers,$(WORKERS)) \
	$(call opt,--augment-ops,$(AUGMENT_OPS)) $(call opt,--augment-seed,$(AUGMENT_SEED)) \
	$(call opt,--seed,$(SEED)) $(call opt,--config,$(CONFIG)) $(ARGS))

.PHONY: setup setup-nvjpeg features test test-fast lint sample-data list clean-cache train-head curve runs predict evaluate export report finetune

# KerasHub goes in with --no-deps: it requires tensorflow-text, which would add a second
# TensorFlow beside tensorflow-cpu; the `hub` extra holds its other dependencies (docs/backbones.md).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[tensorflow,jax,onnx,parquet,ray,dev,hub,bench]'
	$(PY) -m pip install --quiet --no-deps 'keras-hub==0.32.0'
	touch $@

setup: $(VENV)/.installed

# `--decoder nvjpeg`'s torch and torchvision: PyPI's torch brings CUDA's libraries (about 4 GB), so
# `make setup` leaves them out. Without a GPU the decoder runs on the CPU (how the tests check it).
$(VENV)/.nvjpeg: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[nvjpeg]'
	touch $@

setup-nvjpeg: $(VENV)/.nvjpeg

data/digits: | $(VENV)/.installed
	$(BOTTLENECK) sample-data data/digits

sample-data: data/digits

features: $(VENV)/.installed $(if $(filter data/digits,$(DATA)),data/digits)
	$(BOTTLENECK) features $(DATA) $(FEATURES_FLAGS)

list: $(VENV)/.installed
	$(BOTTLENECK) list

test: lint
	$(PY) -m pytest -q -n auto --dist loadfile --durations=30 $(ARGS)

# The quick subset while iterating: no slow end-to-end runs, no Ray cluster, no browser.
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -n auto --dist loadfile -m "not slow and not ray and not browser" $(ARGS)

# The import contracts of pyproject.toml ([tool.importlinter]): the layout's rules.
lint: $(VENV)/.installed
	$(VENV)/bin/lint-imports

# Kill-and-resume soak of the features stage (docs/reliability.md): 40 random
# kill points by default; ARGS="--points 100 --seed 7 --model resnet50".
.PHONY: soak
soak: $(VENV)/.installed
	$(PY) tests/soak.py $(ARGS)

# Benchmarks (docs/performance.md): prints a markdown report and writes
# bench/results/cpu-<date>.md. Quick run: BENCH_ARGS="--n 200 --speed-n 64 --reps 1".
BENCH_ARGS ?=
.PHONY: bench
bench: $(VENV)/.installed
	$(PY) -m bench.run $(BENCH_ARGS)

# The GPU table in one run (bench/gpu.py): no venv, so it runs on a GPU machine
# with no package registry (Keras carried in .whl/); .venv's Python when there is one.
# CPU smoke run: BENCH_GPU_ARGS=--quick.
BENCH_GPU_ARGS ?=
.PHONY: bench-gpu
bench-gpu:
	PYTHON=$(if $(wildcard $(PY)),$(PY),$(PYTHON)) bash bench/gpu_run.sh $(BENCH_GPU_ARGS)

train-head: $(VENV)/.installed
	$(BOTTLENECK) train-head $(TRAIN_FLAGS)

# The leaderboard: ARGS="--head logreg --sort test_accuracy --limit 10 --json".
runs: $(VENV)/.installed
	$(BOTTLENECK) runs ls $(ARGS)

curve: $(VENV)/.installed
	$(BOTTLENECK) curve $(CURVE_FLAGS)

clean-cache:
	rm -rf $(CACHE)/*/

predict: $(VENV)/.installed
	$(BOTTLENECK) predict $(RUN) $(IMAGES) $(call opt,--output,$(OUTPUT)) $(call opt,--top-k,$(TOPK)) $(ARGS)

evaluate: $(VENV)/.installed
	$(BOTTLENECK) evaluate $(RUN) $(DATA) $(call opt,--output,$(OUTPUT)) $(ARGS)

export: $(VENV)/.installed
	$(BOTTLENECK) export $(RUN) $(OUT) $(call opt,--format,$(FORMAT)) $(ARGS)

report: $(VENV)/.installed
	$(BOTTLENECK) report $(RUNS) $(call opt,--features,$(FEATURES)) $(call opt,--output,$(OUTPUT)) $(ARGS)

finetune: $(VENV)/.installed
	$(BOTTLENECK) finetune $(RUN) $(FINETUNE_FLAGS)
