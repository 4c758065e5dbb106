# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vod2chat demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q --timeout 900

bench: $(STAMP)
	$(PY) bench/ingest.py
	$(PY) bench/train.py
	$(PY) bench/generate.py
	$(PY) bench/moment.py --seeds 0,1,2

clean:
	rm -rf demo_out store runs synth_out bench_out real_vods
