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

.PHONY: setup demo data train evaluate test bench gpu cilp cilp-data bev bev-data clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# synthetic nuScenes dataroot (ray-cast HDL-32E streets) -> range-map shards (10% of scenes held out)
$(DEMO_ROOT)/SYNTHETIC.json: | $(VENV)/.installed
	$(PY) -m shards synthetic-nuscenes --out $(DEMO_ROOT) --scenes 32 --samples 10 --seed 0 --workers 2 --overwrite --no-cameras

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

# the full suite (what CI runs, ~15 min on 2 cores) and the edit loop without the multi-process, SLURM and
# fault-injection tests (marked slow / faults in tests/; pyproject.toml lists the markers)
test: setup
	$(PY) -m pytest -q --durations=25 tests

test-fast: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow and not faults" tests

bench: setup data
	$(PY) -m toolkit.bench all --config $(DEMO_CONFIG)

# GPU readiness (docs/gpu.md): the GPU suite (tests/gpu) and a short bench on one GPU in <= 8 min 20 s, JSON + Markdown
# in GPU_OUT; scripts/gpu-check finds a Python with CUDA PyTorch (or GPU_CHECK_SETUP=1: make setup TORCH_SPEC=...).
GPU_OUT ?= runs/gpu-check

gpu:
	scripts/gpu-check --out $(GPU_OUT)

# Seed 003 study on synthetic cubes and spheres (RGBA + LiDAR range images in the CILP folder layout):
# fusion variants, strided-conv ablation, LiDAR classifier, CILP, projector, RGB->LiDAR; then the table.
CILP_ROOT   := data/cilp-synthetic
CILP_SHARDS := data/shards/cilp
TRAIN       := $(PY) -m toolkit.train

$(CILP_ROOT)/cubes/azimuth.npy: | $(VENV)/.installed
	$(PY) -m shards synthetic-cilp --out $(CILP_ROOT) --per-class 5000 --seed 0 --workers 2 --overwrite

$(CILP_SHARDS)/info.json: $(CILP_ROOT)/cubes/azimuth.npy
	$(PY) -m shards cilp --root $(CILP_ROOT) --out $(CILP_SHARDS) --val-fraction 0.2 --seed 0

cilp-data: $(CILP_SHARDS)/info.json

cilp: setup cilp-data
	$(TRAIN) -c configs/cilp/lidar_classifier.yaml
	$(TRAIN) -c configs/cilp/cilp.yaml
	$(TRAIN) -c configs/cilp/cilp_projector.yaml
	$(TRAIN) -c configs/cilp/rgb2lidar.yaml
	$(TRAIN) -c configs/cilp/fusion.yaml
	$(TRAIN) -c configs/cilp/fusion.yaml task.mode=concat run.name=cilp_fusion_concat
	$(TRAIN) -c configs/cilp/fusion.yaml task.mode=add run.name=cilp_fusion_add
	$(TRAIN) -c configs/cilp/fusion.yaml task.mode=mul run.name=cilp_fusion_mul
	$(TRAIN) -c configs/cilp/fusion.yaml task.mode=add task.downsample=stride run.name=cilp_fusion_add_stride
	$(PY) -m toolkit.report runs/cilp_fusion_late runs/cilp_fusion_concat runs/cilp_fusion_add runs/cilp_fusion_mul \
		runs/cilp_fusion_add_stride runs/cilp_lidar_classifier runs/cilp runs/cilp_projector runs/cilp_rgb2lidar \
		--out runs/cilp_report.md

# BEV vehicle segmentation (seed 004) on six-camera synthetic nuScenes: 80 scenes x 10 keyframes, 10% of the
# scenes held out; the tiny preset camera-only, camera + LiDAR, LiDAR-only and camera-only with fixed loss
# weights (the ablation); IoU table with the trivial baseline; predictions on held-out and real samples.
BEV_ROOT   := data/bev-synthetic
BEV_SHARDS := data/shards/bev-synthetic

$(BEV_ROOT)/SYNTHETIC.json: | $(VENV)/.installed
	$(PY) -m shards synthetic-nuscenes --out $(BEV_ROOT) --scenes 80 --samples 10 --seed 1 --workers 2 \
		--image-size 224x126 --overwrite

$(BEV_SHARDS)/info.json: $(BEV_ROOT)/SYNTHETIC.json
	$(PY) -m shards nuscenes --dataroot $(BEV_ROOT) --version v1.0-mini --out $(BEV_SHARDS) --val-fraction 0.1 --seed 0

bev-data: $(BEV_SHARDS)/info.json

bev: setup bev-data
	$(TRAIN) -c configs/bev/tiny.yaml
	$(TRAIN) -c configs/bev/tiny.yaml task.inputs=cam+lidar run.name=bev_tiny_cam_lidar
	$(TRAIN) -c configs/bev/tiny.yaml task.inputs=lidar run.name=bev_tiny_lidar
	$(TRAIN) -c configs/bev/tiny.yaml task.loss_weighting=fixed run.name=bev_tiny_cam_fixed
	$(PY) -m toolkit.evaluate --task bev --run runs/bev_tiny_cam --shards '$(BEV_SHARDS)/val-*.tar' --baseline \
		--json runs/bev_tiny_cam/eval_val.json
	$(PY) -m toolkit.report runs/bev_tiny_cam runs/bev_tiny_cam_fixed runs/bev_tiny_cam_lidar runs/bev_tiny_lidar \
		--out runs/bev_report.md
	$(PY) -m toolkit.predict --task bev --run runs/bev_tiny_cam_lidar --shards '$(BEV_SHARDS)/val-*.tar' \
		--out outputs/bev_val --max-samples 4
	@if [ -d "$(REAL_DATAROOT)/v1.0-mini" ]; then \
		$(PY) -m toolkit.evaluate --task bev --run runs/bev_tiny_cam --dataroot $(REAL_DATAROOT) \
			--json runs/bev_tiny_cam/eval_nuscenes_real.json; \
	else echo "(real nuScenes sample not found at $(REAL_DATAROOT): skipped)"; fi

# Token fusion (seed 000): six-camera + LiDAR synthetic streets -> multi-sensor shards (half the scenes held
# out) -> configs/fusion_tokens/tiny.yaml -> held-out recall@k over 3 point draws. Smaller: e.g.
# `make fusion-tokens FUSION_SCENES=16 FUSION_ARGS="train.max_steps=100"` (other paths: FUSION_ROOT, ...).
FUSION_ROOT    ?= data/fusion-synthetic
FUSION_SHARDS  ?= data/shards/fusion-synthetic
FUSION_RUN     ?= runs/token_fusion_tiny
FUSION_SCENES  ?= 64
FUSION_SAMPLES ?= 10
FUSION_ARGS    ?=

$(FUSION_ROOT)/SYNTHETIC.json: | $(VENV)/.installed
	$(PY) -m shards synthetic-nuscenes --out $(FUSION_ROOT) --scenes $(FUSION_SCENES) --samples $(FUSION_SAMPLES) \
		--seed 0 --image-size 224x126 --workers 2 --overwrite

$(FUSION_SHARDS)/info.json: $(FUSION_ROOT)/SYNTHETIC.json
	$(PY) -m shards nuscenes --dataroot $(FUSION_ROOT) --version v1.0-mini --out $(FUSION_SHARDS) \
		--val-fraction 0.5 --seed 0

fusion-data: $(FUSION_SHARDS)/info.json

fusion-tokens: setup fusion-data
	OMP_NUM_THREADS=1 $(TRAIN) -c configs/fusion_tokens/tiny.yaml run.dir=$(FUSION_RUN) \
		'data.train=$(FUSION_SHARDS)/train-*.tar' 'data.val=$(FUSION_SHARDS)/val-*.tar' $(FUSION_ARGS)
	OMP_NUM_THREADS=1 $(PY) -m toolkit.evaluate --task token_fusion --run $(FUSION_RUN) \
		--shards '$(FUSION_SHARDS)/val-*.tar' --draws 3 --json $(FUSION_RUN)/eval_val.json

# Embedding search (seed 002) with the image encoder of `make fusion-tokens`: embed the held-out keyframes'
# six cameras -> exact Faiss index -> the 5 nearest images of the first CAM_FRONT (contact sheet) -> UMAP
# coloured by scene; then the same for the real nuScenes keyframe when it is there.
EMBED_OUT ?= outputs/embed-demo

embed-demo: setup
	@test -d $(FUSION_RUN)/checkpoints || { echo "no run at $(FUSION_RUN): run make fusion-tokens first"; exit 2; }
	$(PY) -m toolkit.embed --encoder $(FUSION_RUN) --shards '$(FUSION_SHARDS)/val-*.tar' --out $(EMBED_OUT)/embeddings \
		--no-progress
	$(PY) -m toolkit.index --embeddings $(EMBED_OUT)/embeddings --out $(EMBED_OUT)/index.faiss
	$(PY) -m toolkit.search --index $(EMBED_OUT)/index.faiss -k 5 --sheet $(EMBED_OUT)/search_cam_front.png \
		--json $(EMBED_OUT)/search.json --token "$$($(PY) -c "import glob, pyarrow.parquet as pq; \
		rows = [r for f in sorted(glob.glob('$(EMBED_OUT)/embeddings/meta-*.parquet')) for r in pq.read_table(f).to_pylist()]; \
		print(next(r['sample_token'] for r in rows if r['camera'] == 'CAM_FRONT'))")"
	$(PY) -m toolkit.umap --embeddings $(EMBED_OUT)/embeddings --color scene --out $(EMBED_OUT)/umap
	@if [ -d "$(REAL_DATAROOT)/v1.0-mini" ]; then \
		$(PY) -m toolkit.embed --encoder $(FUSION_RUN) --dataroot $(REAL_DATAROOT) --version v1.0-mini \
			--out $(EMBED_OUT)/embeddings-real --no-progress && \
		$(PY) -m toolkit.index --embeddings $(EMBED_OUT)/embeddings-real --out $(EMBED_OUT)/index-real.faiss && \
		$(PY) -m toolkit.search --index $(EMBED_OUT)/index-real.faiss --token ca9a282c9e77460f8360f564131a8af5 \
			--camera CAM_FRONT -k 5 --sheet $(EMBED_OUT)/search_real_cam_front.png; \
	else echo "(real nuScenes sample not found at $(REAL_DATAROOT): skipped)"; fi
	@echo "pictures: $(EMBED_OUT)/search_cam_front.png $(EMBED_OUT)/umap/umap.png"

clean:
	rm -rf runs outputs data
