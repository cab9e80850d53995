# proseflow: `make demo` runs the demo preset end to end; `make test` runs the test suite.
# Both create .venv and install the project first (a CPU build of torch where this machine has one).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
STAMP := $(VENV)/.installed
# 3Dmol.js for the report pages' 3D viewer: version and sha256 pinned in src/proseflow/report/3dmol.pin
include src/proseflow/report/3dmol.pin
JSLIB := $(VENV)/share/proseflow/3dmol-$(THREEDMOL_VERSION).tgz

.PHONY: demo test test-slow test-compile verify plan install test-slurm test-report bench clean lint

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch first where available (else pip would pull a multi-GB CUDA build).
	$(BIN)/pip install -q "torch==2.13.0" || echo "torch 2.13.0 CPU build not available here; using the default torch"
	$(BIN)/pip install -q -e ".[workflow,dev]"
	touch $(STAMP)

# The npm package of 3Dmol.js, fetched at install time into the venv and checked against the pinned sha256;
# proseflow.report.viewer embeds it into every page (offline). Without npm or the registry the pages still render
# and say why there is no 3D view; a checksum mismatch is an error (the file is removed).
$(JSLIB): src/proseflow/report/3dmol.pin
	@mkdir -p $(@D)
	@if ! command -v npm >/dev/null 2>&1; then \
		echo "NOTE: npm (Node.js) not found: the report pages will have no 3D viewer. Install Node.js (apt-get install npm) and rerun make."; \
	elif ! (cd $(@D) && npm pack --silent --ignore-scripts 3dmol@$(THREEDMOL_VERSION) >/dev/null); then \
		rm -f $@; echo "NOTE: npm pack 3dmol@$(THREEDMOL_VERSION) failed (no registry?): the report pages will have no 3D viewer."; \
	elif ! $(PYTHON) -c 'import hashlib, sys; sys.exit(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest() != sys.argv[2])' $@ $(THREEDMOL_SHA256); then \
		rm -f $@; echo "ERROR: $@ does not match the sha256 pinned in src/proseflow/report/3dmol.pin; removed it."; exit 1; \
	else \
		echo "3Dmol.js $(THREEDMOL_VERSION): $@ (sha256 verified)"; \
	fi

install: $(STAMP) $(JSLIB)

demo: $(STAMP) $(JSLIB)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES) --configfile configs/demo.yaml --rerun-incomplete --printshellcmds

# `make test` leaves out the tests marked slow (longer Snakemake runs, a SIGKILL resume, Chromium, large-sample
# known answers); `make test-slow` runs them, and .ci/run runs both.
test: $(STAMP) $(JSLIB)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q -m "not slow" --durations=25 tests

test-slow: $(STAMP) $(JSLIB)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q -m slow --durations=15 tests

# The compiled training path (torch.compile: minutes on 2 cores, so not in `make test`; .ci/run runs it).
test-compile: $(STAMP)
	PROSEFLOW_TEST_COMPILE=1 $(BIN)/pytest -q -k compile tests/test_flow_model.py tests/test_train.py tests/test_energy_torch.py

# Read and check every artefact under results/ (checksums, shapes, completeness); non-zero exit if any is bad.
verify: $(STAMP)
	$(BIN)/python -m proseflow verify results

# The bill of a config before it runs (nothing is run): `make plan CONFIG=configs/demo.yaml`; rates of this
# machine from benchmarks/throughputs/cpu_2core.json unless THROUGHPUTS names another (`proseflow plan --measure`).
THROUGHPUTS ?= benchmarks/throughputs/cpu_2core.json
plan: $(STAMP)
	$(BIN)/python -m proseflow plan $(if $(CONFIG),--configfile $(CONFIG)) --throughputs $(THROUGHPUTS)

# The report pages checked as a person would see them: rendered in headless Chromium (Debian's package).
# ... and their 3D viewers, which need 3Dmol.js: npm (Debian's package) is installed too if missing.
test-report: $(STAMP)
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
	command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq npm >/dev/null; }
	$(MAKE) --no-print-directory $(JSLIB)
	PROSEFLOW_REQUIRE_CHROMIUM=1 $(BIN)/pytest -q tests/test_report.py

test-slurm: $(STAMP)
	bash ci/slurm/test_slurm.sh

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks studies ci

bench: $(STAMP)
	for b in md_throughput energy_throughput loader_memory checksum_overhead train_sample_throughput train_throughput sampler_cost scale_figures; do \
		echo "== $$b"; $(BIN)/python benchmarks/$$b.py --quick || exit 1; done
	@echo "benchmarks/gpu_smoke.sh needs a CUDA GPU: run it there"

clean:
	rm -rf results logs .snakemake
