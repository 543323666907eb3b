# Every target is a one-liner over the CLI, pytest or pulumi; logic lives in trainer/ and scripts/.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= demo-data
RUN    ?=

.PHONY: setup demo ablation cv extract test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV) && $(VENV)/bin/pip install -q --upgrade pip && $(VENV)/bin/pip install -q -e '.[test,infra,ops,export,extract,tracking]' && $(VENV)/bin/pip install -q --no-deps 'mediapipe==0.10.21' && touch $(STAMP)

## Train the hybrid model on the built-in demo data (no AWS) and print where the results are.
demo: $(STAMP)
	$(PY) -m trainer demo-data --out $(DEMO) && $(PY) -m trainer train --data $(DEMO) --out runs/demo-$$(date +%Y%m%d-%H%M%S)

## The demo ablation table (docs/training.md): hybrid, --fusion late, audio only, video only, lstm; seeds 0-2 (about
## an hour, most of it the lstm; continues where it stopped). SEEDS=0,1,2 VARIANTS=hybrid,late
SEEDS    ?= 0,1,2
VARIANTS ?= hybrid,late,audio,video,lstm
ablation: $(STAMP)
	$(PY) -m trainer demo-data --out $(DEMO) && $(PY) -m trainer.bench.ablation --data $(DEMO) --out runs/ablation --seeds $(SEEDS) --variants $(VARIANTS)

## Speaker k-fold cross-validation on this machine (docs/cross-validation.md). DATA=folder (default:
## the demo data, made first) OUT=runs/cv FOLDS=5|loso (default: 5 on the demo data, else the
## manifest's folds) SEEDS=0,1,2 (only when given here: cv's own default is 0) ARGS='cv and train flags, e.g. --parallel 2 --epochs 20 --resume'
OUT ?= runs/cv
cv: $(STAMP)
	$(if $(DATA),,$(PY) -m trainer demo-data --out $(DEMO) && )$(PY) -m trainer cv --data '$(or $(DATA),$(DEMO))' --out '$(OUT)' $(if $(FOLDS),--folds $(FOLDS),$(if $(DATA),,--folds 5)) $(if $(filter-out file,$(origin SEEDS)),--seeds $(SEEDS)) $(ARGS)

## Raw media to clip files (docs/data.md: Extract features). MEDIA=folder or s3:// prefix OUT=folder or
## s3:// prefix (both required; cv's OUT default is not used) ARGS='extract flags, e.g. --video opencv --workers 2'
MEDIA ?=
extract: $(STAMP)
	$(PY) -m trainer extract $(if $(MEDIA),--media '$(MEDIA)') $(if $(filter-out file,$(origin OUT)),--out '$(OUT)') $(ARGS)

test: $(STAMP)
	$(PY) -m pytest

## Speed and memory of the hybrid against the lstm baseline (minutes; bench.json).
bench: $(STAMP)
	$(PY) -m trainer bench --out bench.json

clean:
	rm -rf runs results $(DEMO) bench.json bench-quick.json .ave .pytest_cache

## Operator side (DESIGN.md section 5; defaults in deploy.yaml). BACKEND=local: the same on the
## local Docker engine with a moto S3. DATA=folder MEDIA=raw media folder (deploy: extracted on
## the instance, then trained; docs/aws.md: make deploy) EXTRACT='extract flags for MEDIA, e.g.
## --audio wavlm --audio-model DIR' (a local model is uploaded once) ARGS='train flags' REPLACE=1 RUN=id FOLLOW=1
## KEEP=1 (destroy: download every run first) YES=1 (destroy: no question).
## FOLDS=5 (deploy: 5-fold cross-validation as one AWS Batch array job) SEEDS=0,1,2 (with FOLDS:
## seeds per fold; only when given here, else deploy.yaml's seeds, "0": ablation's default above
## is not deploy's) FOLD=3 (logs: that fold of an array run).
BACKEND ?=
DATA    ?=
EXTRACT ?=
ARGS    ?=
REPLACE ?=
FOLLOW  ?=
KEEP    ?=
YES     ?=
FOLDS   ?=
FOLD    ?=
on       = $(filter 1 y yes true,$(1))
OPS      = $(if $(BACKEND),--backend $(BACKEND))
ONE_RUN  = $(OPS) $(if $(RUN),--run $(RUN))

.PHONY: deploy status logs monitor results destroy

deploy: $(STAMP)
	$(PY) -m trainer deploy $(OPS) $(if $(DATA),--data '$(DATA)') $(if $(MEDIA),--media '$(MEDIA)') $(if $(EXTRACT),--extract='$(EXTRACT)') $(if $(ARGS),--args='$(ARGS)') $(if $(call on,$(REPLACE)),--replace) $(if $(FOLDS),--folds $(FOLDS) $(if $(filter-out file,$(origin SEEDS)),--seeds $(SEEDS)))

status: $(STAMP)
	$(PY) -m trainer status $(ONE_RUN)

logs: $(STAMP)
	$(PY) -m trainer logs $(ONE_RUN) $(if $(call on,$(FOLLOW)),--follow) $(if $(FOLD),--fold $(FOLD))

monitor: $(STAMP)
	$(PY) -m trainer monitor $(ONE_RUN)

results: $(STAMP)
	$(PY) -m trainer results $(ONE_RUN)

destroy: $(STAMP)
	$(PY) -m trainer destroy $(OPS) $(if $(call on,$(KEEP)),--keep-runs) $(if $(call on,$(YES)),--yes)

## TensorBoard over runs on localhost (docs/tracking.md): RUNS='runs/cv runs/ablation' (default:
## results/, what `make results` downloads). Prints the address; Ctrl-C stops it.
RUNS ?=
.PHONY: tensorboard
tensorboard: $(STAMP)
	$(PY) -m trainer tensorboard $(RUNS)

## The robustness suite (DESIGN.md section 9; docs/training.md): every variant on every data
## profile, over seeds, 12 held-out speakers per run; resumable; runs/robustness/robustness.md.
## PROFILES=a,b (default: all) SEEDS=0,1,2 VARIANTS=hybrid,late,linear (only when given here: the
## suite's default is every variant; ablation's VARIANTS default above lacks linear) ARGS='--parallel 2'
PROFILES ?=
.PHONY: robustness
robustness: $(STAMP)
	$(PY) -m trainer.bench.robustness --out runs/robustness $(if $(PROFILES),--profiles $(PROFILES)) --seeds $(SEEDS) $(if $(filter-out file,$(origin VARIANTS)),--variants $(VARIANTS)) $(ARGS)
