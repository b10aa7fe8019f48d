# avflow — see README.md. Every target that needs the system packages runs
# `setup` first; `setup` is idempotent and quick once done.
SHELL := /bin/bash
GO    ?= go
BIN   := bin
export CGO_ENABLED := 1
# Model files: ../shared/models is the offline mirror beside the checkout
# (UltraFace); the PP-OCR and Silero models come from their npm packages.
export AVFLOW_MODEL_MIRROR ?= $(abspath ../shared/models)

.PHONY: all setup build demo test test-short bench fuzz lint clean

# make test runs every package again under the race detector: in full where
# the tests take seconds, and their quick (-short) tests where the full
# ones run real models or the CLI end to end for minutes.
RACE_PKGS := ./pipeline/... ./accelerators/... ./codecs/... ./examples/... \
	./stages/decode ./stages/draw ./stages/encode ./stages/filter ./stages/redact \
	./stages/sink ./stages/source ./stages/track ./stages/infer/detections \
	./stages/infer/model ./stages/infer/onnx
RACE_SHORT_PKGS := ./cmd/... ./stages/infer ./stages/personalise ./stages/render

all: build

# Debian 12 packages: pkg-config and the FFmpeg 5.1 -dev libraries that
# go-astiav v0.16.0 builds against, plus the ffmpeg/ffprobe CLIs for tests
# and benchmarks, and Mesa's software Vulkan device (lavapipe) on which the
# tests run FFmpeg's device-memory paths without a GPU. Only missing
# packages are installed.
APT_PACKAGES := pkg-config ffmpeg fonts-dejavu-core espeak-ng libavcodec-dev libavformat-dev libavfilter-dev \
	libavdevice-dev libavutil-dev libswscale-dev libswresample-dev libpostproc-dev \
	mesa-vulkan-drivers

# natscli ($(BIN)/nats: nats micro ls/info/stats, nats sub), for the tests
# and for users; installed again only when it is not that version.
NATSCLI_VERSION := v0.5.0
setup: $(BIN)/nats-server
	@test "$$($(BIN)/nats --version 2>/dev/null)" = $(NATSCLI_VERSION) || { echo "installing natscli $(NATSCLI_VERSION) in $(BIN)/nats"; \
		GOBIN=$(abspath $(BIN)) $(GO) install github.com/nats-io/natscli/nats@$(NATSCLI_VERSION); }
	@scripts/setup.sh $(APT_PACKAGES)
	@scripts/fetch-onnxruntime.sh

$(BIN)/nats-server: go.mod go.sum
	@mkdir -p $(BIN)
	@$(GO) build -o $@ github.com/nats-io/nats-server/v2

build: setup
	@$(GO) build -o $(BIN)/avflow ./cmd/avflow
	@echo "built $(BIN)/avflow"

# The main job: transcode the sample street clip to 720p H.264 + AAC.
demo: build
	$(BIN)/avflow run examples/transcode/pipeline.yaml
	ffprobe -v error -show_entries stream=codec_name,width,height,nb_frames -of compact examples/transcode/out/transcode.mp4

test: build
	scripts/check-repo.sh
	$(GO) vet ./...
	CGO_ENABLED=0 $(GO) build ./pipeline/... ./accelerators/...
	AVFLOW_BIN=$(CURDIR)/$(BIN)/avflow NATS_SERVER_BIN=$(CURDIR)/$(BIN)/nats-server \
		$(GO) test -count=1 -timeout 20m ./...
	$(GO) test -count=1 -race $(RACE_PKGS)
	$(GO) test -count=1 -race -short $(RACE_SHORT_PKGS)

test-short: build
	$(GO) test -short -count=1 ./...

# Run each fuzz target for a short while (corpus in testdata/fuzz).
FUZZTIME ?= 20s
fuzz: setup
	$(GO) test ./pipeline/envelope -run '^$$' -fuzz FuzzUnmarshal -fuzztime $(FUZZTIME)
	$(GO) test ./pipeline/envelope -run '^$$' -fuzz FuzzChunks -fuzztime $(FUZZTIME)
	$(GO) test ./pipeline -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME)

# Benchmarks against their peers in the same run; writes BENCHMARKS.md.
bench: build
	$(GO) run ./cmd/avflow-bench -avflow $(BIN)/avflow -out BENCHMARKS.md

clean:
	rm -rf $(BIN) examples/*/out bench-out
