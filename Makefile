# `make demo` and `make test` work on a fresh machine with only Python and make:
# each creates .venv, installs fedsock into it, and runs.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python

.PHONY: demo test venv lint clean fuzz

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[test,demo]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m fedsock demo

test: venv
	$(PY) -m pytest -q

lint: venv
	$(PY) -m ruff check fedsock tests
	$(PY) -m mypy --strict --follow-imports=silent fedsock/protocol fedsock/aggregation fedsock/secagg

clean:
	rm -rf $(VENV) fedsock-demo fedsock-chief .pytest_cache .hypothesis

FUZZ_SECONDS ?= 60
fuzz: venv
	mkdir -p fuzz/work && cp -n fuzz/corpus/* fuzz/work/
	cd fuzz && ../$(PY) fuzz_protocol.py work -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1
