# `make demo` and `make test` work on a fresh machine with only Python and make:
# each creates .venv, installs fedsock into it, and runs.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python

.PHONY: demo test venv lint clean fuzz

# Two markers: `make demo` installs only what the demo needs; `make test` adds the test tools.
$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	touch $@

$(VENV)/.demo-installed: pyproject.toml $(VENV)/.created
	$(PY) -m pip install --quiet -e '.[demo]'
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.created
	$(PY) -m pip install --quiet -e '.[test,demo]'
	touch $@ $(VENV)/.demo-installed

venv: $(VENV)/.installed

demo: $(VENV)/.demo-installed
	$(PY) -m fedsock demo

# Two test processes: most integration tests wait on real processes and deadlines, so the suite
# takes about two thirds of the time on two cores. `TESTFLAGS=` runs it in one process.
TESTFLAGS ?= -n 2 --dist worksteal

test: venv
	$(PY) -m pytest -q $(TESTFLAGS)

lint: venv
	$(PY) -m ruff check fedsock tests
	$(PY) -m mypy --strict --follow-imports=silent fedsock/protocol fedsock/aggregation fedsock/secagg

clean:
	rm -rf $(VENV) fedsock-demo fedsock-chief .pytest_cache .hypothesis

# make fuzz FUZZ_TARGET=secagg FUZZ_SECONDS=600 (targets: protocol, secagg, status, checkpoint; fuzz/targets.py)
FUZZ_SECONDS ?= 60
FUZZ_TARGET ?= protocol
FUZZ_CORPUS = $(if $(filter protocol,$(FUZZ_TARGET)),fuzz/corpus,fuzz/corpus-$(FUZZ_TARGET))
fuzz: venv
	mkdir -p fuzz/work/$(FUZZ_TARGET) && cp -n $(FUZZ_CORPUS)/* fuzz/work/$(FUZZ_TARGET)/
	cd fuzz/work && ../../$(PY) ../fuzz.py $(FUZZ_TARGET) $(FUZZ_TARGET) -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1
