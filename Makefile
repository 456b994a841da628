# Each target creates .venv and installs what it needs from nothing.
# torch is installed first and pinned by constraints.txt: an unpinned torch pulls a multi-GB CUDA build.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := demo-out
EXAMPLE := example-out

.PHONY: demo test test-slow bench bench-real-scale samples example clean

# digit-recognizer-py is the worked example's network (examples/mnist), installed with --no-deps: the package
# declares torchvision, which the CPU-only hosts cannot install; the example loads only its model.py and weights,
# which need torch alone. The Makefile is a prerequisite so that a .venv made before a line was added here gets it.
$(STAMP): pyproject.toml constraints.txt Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -m pip install -q -c constraints.txt --no-deps digit-recognizer-py==0.1.0
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/auditor demo --out $(DEMO)

test: $(STAMP)
	$(VENV)/bin/pytest -q

test-slow: $(STAMP)
	$(VENV)/bin/pytest -q -m slow

# Captum (and tqdm, its one dependency not already here) for benchmarks/tcav_vs_captum.py; --no-deps: its other
# requirements are installed, and its optional torchvision is neither needed nor installable on CPU-only hosts.
# exchangeable_cost.py times the demo's checks: the demo is built first when it is not there. real_scale.py (a
# ResNet-50 at 224 px on 1,000 and then 4,000 images: 27 minutes on 2 quiet cores) runs on its own:
# `make bench-real-scale`.
bench: $(STAMP) $(DEMO)/policy.yaml
	$(PY) -m pip install -q -c constraints.txt --no-deps captum==0.9.0 tqdm
	@for b in benchmarks/*.py; do case $$b in */resnet_like.py|*/resnet50_like.py|*/stability.py|*/real_scale.py) continue;; esac; echo "== $$b"; $(PY) $$b || exit 1; done

bench-real-scale: $(STAMP)
	$(PY) benchmarks/real_scale.py --scale 4

$(DEMO)/policy.yaml: | $(STAMP)
	$(VENV)/bin/auditor demo --out $(DEMO)

# The committed sample report: re-rendered from sample_reports/results.json (refreshed from the demo's, when there
# is one), dated by the audit's own date so the PDF bytes repeat.
samples: $(STAMP)
	mkdir -p sample_reports
	if [ -f $(DEMO)/report/results.json ]; then cp $(DEMO)/report/results.json sample_reports/results.json; fi
	rm -rf sample_reports/assets
	SOURCE_DATE_EPOCH=$$($(PY) -c "import json,datetime;c=json.load(open('sample_reports/results.json'))['provenance']['created'];print(int(datetime.datetime.fromisoformat(c.replace('Z','+00:00')).timestamp()))") \
		$(VENV)/bin/auditor render sample_reports/results.json --out sample_reports
	rm -f sample_reports/junit.xml sample_reports/summary.md

# The worked example (README, "Worked example"): the pretrained MNIST CNN of digit-recognizer-py as ONNX
# (candidate) and TorchScript (reference), audited; its report is refreshed into sample_reports/mnist/, dated by
# the audit's own date (as `samples`) so the PDF bytes repeat. The audit exits 1 when a requirement fails: the
# report is what this target is for, so only 2 and 3 (bad input, internal error) stop it.
example: $(STAMP)
	$(PY) examples/mnist/build.py $(EXAMPLE)
	$(VENV)/bin/auditor run $(EXAMPLE)/policy.yaml --out $(EXAMPLE)/report --cache-dir $(EXAMPLE)/cache; \
		rc=$$?; [ $$rc -le 1 ] || exit $$rc
	mkdir -p sample_reports/mnist
	cp $(EXAMPLE)/report/results.json sample_reports/mnist/results.json
	rm -rf sample_reports/mnist/assets
	SOURCE_DATE_EPOCH=$$($(PY) -c "import json,datetime;c=json.load(open('sample_reports/mnist/results.json'))['provenance']['created'];print(int(datetime.datetime.fromisoformat(c.replace('Z','+00:00')).timestamp()))") \
		$(VENV)/bin/auditor render sample_reports/mnist/results.json --out sample_reports/mnist
	rm -f sample_reports/mnist/junit.xml sample_reports/mnist/summary.md

clean:
	rm -rf $(VENV) $(DEMO) $(EXAMPLE) .auditor-cache build *.egg-info
