# Set-up and entry points. `make demo` and `make test` work on a fresh machine: they create the virtual
# environment, install medpipe with pinned torch, and run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medpipe-installed

.PHONY: install demo test validate bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[wsi,serve,export,test]"
	touch $(STAMP)

install: $(STAMP)

# Train, evaluate and predict the EM membrane U-Net on the bundled ISBI-2012 images; tracked in ./mlflow.db
demo: $(STAMP)
	$(PY) -m medpipe.run pipelines/em_unet.yaml

test: $(STAMP)
	$(PY) -m pytest -q

validate: $(STAMP)
	for f in pipelines/*.yaml; do $(PY) -m medpipe.run $$f --validate-only || exit 1; done

bench: $(STAMP)
	$(PY) benchmarks/bench_em_epoch.py

clean:
	rm -rf $(VENV) *.egg-info
