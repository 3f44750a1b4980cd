# Two commands do all setup on a fresh machine:
#   make run   - create .venv if missing, install requirements, serve the app on 127.0.0.1:8501
#   make test  - the same venv plus test tools, then lint (ruff) and the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8501
# extra host names the app answers to (comma-separated), beside localhost (DNS-rebinding guard)
ALLOWED_HOSTS ?=
comma := ,

.PHONY: run test lint format bench clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

run: $(VENV)/.installed
	$(PY) -m streamlit run serve.py --server.address $(HOST) --server.port $(PORT) \
	  $(foreach h,localhost 127.0.0.1 ::1 $(subst $(comma), ,$(ALLOWED_HOSTS)),--server.allowedHosts $(h))

lint: $(VENV)/.installed-test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(VENV)/.installed-test
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test: lint
	$(PY) -m pytest -q $(PYTEST_ARGS)
	# the gpu-marked tests' bodies once more on the CPU (skipped above without a card), so that
	# they cannot drift from the engine between the sessions that have a card (~40 s)
	SCWB_TEST_DEVICE=cpu $(PY) -m pytest -q -m gpu tests/test_gpu.py

bench: $(VENV)/.installed-test
	$(PY) -m bench.quality
	$(PY) -m bench.throughput
	$(PY) -m bench.app_latency
	$(PY) -m bench.scale
	$(PY) -m bench.results_scale
	$(PY) -m bench.report

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
