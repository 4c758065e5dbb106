# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-fast install bench bench-family clean

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

# The tests a change can be checked with in minutes (markers in pyproject.toml; README: Tests).
test-fast: $(STAMP)
	$(PY) -m pytest -q --timeout 900 -m "not slow and not browser and not multiprocess and not gpu"

bench: $(STAMP)
	$(PY) bench/ingest.py
	$(PY) bench/train.py
	$(PY) bench/generate.py
	$(PY) bench/moment.py --seeds 0,1,2

# The benchmark family (issue 20; bench/README.md "The benchmark family"): many hours on CPU.
bench-family: $(STAMP)
	$(PY) bench/moment.py --draws 8 --minutes-per-channel 10,15,20,40,80

clean:
	rm -rf demo_out store runs synth_out bench_out real_vods real_store vods
