# Every target that runs code first makes sure .venv matches requirements.txt/constraints.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export SPARK_LOCAL_IP ?= 127.0.0.1
export NUMBA_CACHE_DIR ?= $(CURDIR)/.cache/numba
export PYTHONHASHSEED := 0

.PHONY: setup test run bench emr-run lock clean

setup: $(STAMP)

$(STAMP): requirements.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==24.3.1
	$(PY) -m pip install --quiet --prefer-binary -r requirements.txt -c constraints.txt
	$(PY) -m pip check
	touch $(STAMP)

test: setup
	$(PY) -m pytest

run: setup
	$(PY) -m jobs.run_demo $(if $(OUT),--output $(OUT),)

bench: setup
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \
		$(PY) -m tests.benchmarks.run_all

emr-run: setup
	$(PY) -m emr.launch $(if $(DRY_RUN),--dry-run,) $(EMR_ARGS)

# Re-resolve the full environment after editing requirements.txt.
lock:
	rm -rf $(VENV) && $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==24.3.1
	$(PY) -m pip install --quiet --prefer-binary -r requirements.txt
	( echo '# Full resolved environment (pip freeze of .venv built from requirements.txt); regenerate with `make lock`.'; \
	  $(PY) -m pip freeze ) > constraints.txt
	touch $(STAMP)

clean:
	rm -rf out .cache .pytest_cache
