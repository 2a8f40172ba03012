# Quickstart: `make demo` (set up, build synthetic data, train, evaluate) and `make test`.
# Both create and use .venv/ in the repository root.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The CPU build of PyTorch is taken from this machine's index in seconds; on GPU nodes install the
# CUDA build first or run e.g. `make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`.
TORCH_SPEC ?= torch==2.13.0

DEMO_CONFIG  := configs/lidar_tokenizer.yaml
DEMO_ROOT    := data/synthetic-nuscenes
DEMO_SHARDS  := data/shards/synthetic-nuscenes
DEMO_RUN     := runs/lidar_tokenizer
REAL_DATAROOT ?= ../shared/data/nuscenes-real-1sample

.PHONY: setup demo data train evaluate test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# synthetic nuScenes dataroot (ray-cast HDL-32E streets) -> range-map shards (10% of scenes held out)
$(DEMO_ROOT)/SYNTHETIC.json: | $(VENV)/.installed
	$(PY) -m shards synthetic-nuscenes --out $(DEMO_ROOT) --scenes 32 --samples 10 --seed 0 --workers 2 --overwrite

$(DEMO_SHARDS)/info.json: $(DEMO_ROOT)/SYNTHETIC.json
	$(PY) -m shards nuscenes-lidar --dataroot $(DEMO_ROOT) --version v1.0-mini --out $(DEMO_SHARDS) \
		--val-fraction 0.1 --seed 0 --maxcount 40

data: $(DEMO_SHARDS)/info.json

train: data
	$(PY) -m toolkit.train --config $(DEMO_CONFIG)

# metrics on the held-out synthetic scenes, then on the real nuScenes scan (evaluation only) with the baseline
evaluate:
	$(PY) -m toolkit.evaluate --task lidar_tokenizer --run $(DEMO_RUN) --shards '$(DEMO_SHARDS)/val-*.tar' \
		--baseline --json $(DEMO_RUN)/eval_synthetic_val.json
	@if [ -d "$(REAL_DATAROOT)/v1.0-mini" ]; then \
		$(PY) -m toolkit.evaluate --task lidar_tokenizer --run $(DEMO_RUN) --dataroot $(REAL_DATAROOT) \
			--version v1.0-mini --baseline --json $(DEMO_RUN)/eval_nuscenes_real.json; \
	else echo "(real nuScenes sample not found at $(REAL_DATAROOT): skipped)"; fi

demo: setup train evaluate

test: setup
	$(PY) -m pytest -q tests

bench: setup data
	$(PY) -m toolkit.bench all --config $(DEMO_CONFIG)

clean:
	rm -rf runs outputs data
