# Two commands set everything up on a fresh machine with Python 3.10+ and make: `make demo`, `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.zir-installed
TEST_STAMP := $(VENV)/.zir-test-installed

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP) $@

demo: $(STAMP)
	$(BIN)/zir demo

# -rs: a skipped test says why (the browser test: how to install chromium)
test: $(TEST_STAMP)
	$(BIN)/python -m pytest -rs

lint: $(TEST_STAMP)
	$(BIN)/ruff check zir tests benchmarks

# The benchmarks behind the README's tables (long: about an hour and a half of CPU in all).
bench: $(TEST_STAMP)
	$(BIN)/pip install --quiet -r benchmarks/requirements.txt
	# the peers pull in plain opencv-python, whose cv2 hides the contrib build selective search needs
	$(BIN)/pip install --quiet --force-reinstall --no-deps opencv-contrib-python-headless
	$(BIN)/python benchmarks/convnet_synth.py
	$(BIN)/python benchmarks/augment_speed.py --threads 1
	$(BIN)/python benchmarks/classify_transfer.py
	$(BIN)/python benchmarks/detect.py --data raccoon --raccoon ../shared/data/raccoon --threads 1
	$(BIN)/python benchmarks/faster_rcnn_speed.py --threads 1
	$(BIN)/python benchmarks/segment.py

clean:
	rm -rf $(VENV) runs demo_data
