# Two commands do everything on a fresh machine:
#   make demo   gateway + a vLLM worker + the demo workload, on embedded defaults
#   make test   the whole test suite against real vLLM, PostgreSQL and SQLite
PYTHON ?= python3.11

.PHONY: demo demo-fast test lint venv vllm-venv clean deploy dashboard

venv: .venv/.optengine-installed

.venv/.optengine-installed: pyproject.toml requirements.lock
	PYTHON=$(PYTHON) scripts/bootstrap.sh

vllm-venv:
	PYTHON=$(PYTHON) scripts/setup_vllm_venv.sh .venv-vllm

demo: venv vllm-venv
	.venv/bin/optengine demo $(ARGS)

demo-fast: venv vllm-venv
	.venv/bin/optengine demo --fast $(ARGS)

deploy: venv
	.venv/bin/optengine flows deploy $(ARGS)

dashboard: venv
	.venv/bin/optengine dashboard $(ARGS)

test: venv vllm-venv
	scripts/test.sh $(ARGS)

lint: venv
	.venv/bin/ruff check .

clean:
	rm -rf .venv .venv-vllm data
