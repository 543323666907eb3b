# Every target is a one-liner over the CLI, pytest or pulumi; logic lives in trainer/ and scripts/.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= demo-data
RUN    ?=

.PHONY: setup demo ablation test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV) && $(VENV)/bin/pip install -q --upgrade pip && $(VENV)/bin/pip install -q -e '.[test,infra,ops,export]' && touch $(STAMP)

## Train the hybrid model on the built-in demo data (no AWS) and print where the results are.
demo: $(STAMP)
	$(PY) -m trainer demo-data --out $(DEMO) && $(PY) -m trainer train --data $(DEMO) --out runs/demo-$$(date +%Y%m%d-%H%M%S)

## The README's demo table: the hybrid with both modalities, each alone, and the lstm baseline.
ablation: $(STAMP)
	$(PY) -m trainer demo-data --out $(DEMO) && rm -rf runs/ablation-* && for m in both audio video; do $(PY) -m trainer train --data $(DEMO) --out runs/ablation-$$m --modality $$m | grep "test macro"; done && $(PY) -m trainer train --data $(DEMO) --out runs/ablation-lstm --model lstm | grep "test macro"

test: $(STAMP)
	$(PY) -m pytest

## Speed and memory of the hybrid against the lstm baseline (minutes; bench.json).
bench: $(STAMP)
	$(PY) -m trainer bench --out bench.json

clean:
	rm -rf runs results $(DEMO) bench.json .pytest_cache
