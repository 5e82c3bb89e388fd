# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Everything goes into .venv; torch is installed first at a pinned CPU-capable version so that
# resolving the rest never pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[train,test,demo,serve]"
	touch $@

# Upstream LLaVA's own code (llava-torch 1.2.2.post1) in its pinned stack, for the `upstream` tests; the tests build
# it too when it is missing. Never the same venv as ours: upstream's package is also named `llava`.
upstream-env: setup
	$(PY) tests/upstream_env.py

# The web UI's browser test drives Debian's chromium with Playwright (the test extra; Playwright's own browser
# download is not used), the page's emoji drawn with Noto. apt-get needs root (or sudo); it runs only when one is missing.
CHROMIUM ?= /usr/bin/chromium
EMOJI_FONT ?= /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
APT_GET := $(shell [ "$$(id -u)" = 0 ] || echo sudo) apt-get

browser: setup
	@if [ ! -x "$(CHROMIUM)" ] || [ ! -e "$(EMOJI_FONT)" ]; then \
		$(APT_GET) update -qq && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -q chromium fonts-noto-color-emoji; \
	fi

.PHONY: setup test test-fast lint demo bench upstream-env browser
setup: $(VENV)/.installed

test: setup browser
	$(PY) -m pytest -ra --durations=15

# The inner loop: everything but process launches and benchmarks (under 2 minutes on 2 cores).
test-fast: setup
	$(PY) -m pytest -q -m "not dist and not bench and not upstream" -p no:cacheprovider

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: setup
	$(PY) -m llava.demo

bench: setup
	$(PY) benchmarks/run.py --quick
