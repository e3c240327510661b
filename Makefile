# swapbot: `make run` to try it, `make test` to test it.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/swapbot-target
CARGO ?= cargo
PLUGIN_DIR ?= target/plugins
WASM := $(CARGO_TARGET_DIR)/wasm32-wasip2/release
PLUGINS := assistants responses chat

.PHONY: build plugins test test-guests run sandbox bench wasm-target clean-data

wasm-target:
	@rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

## build: the host, the sandbox and the plugins, in target/release and target/plugins
build: wasm-target
	$(CARGO) build --release --locked -p swapbot -p swapbot-sandbox --bins
	$(MAKE) --no-print-directory plugins
	@mkdir -p target/release
	@for bin in swapbot swapbot-sandbox; do \
		cp "$(CARGO_TARGET_DIR)/release/$$bin" "target/release/.$$bin.tmp" && mv -f "target/release/.$$bin.tmp" "target/release/$$bin"; \
	done
	@echo "built target/release/swapbot, target/release/swapbot-sandbox, $(PLUGIN_DIR)/{assistants,responses,chat}.wasm"

## plugins: rebuild the plugins and install them into PLUGIN_DIR by atomic rename (a running bot picks them up)
plugins: wasm-target
	$(CARGO) build --release --locked --target wasm32-wasip2 -p swapbot-plugin-assistants -p swapbot-plugin-responses -p swapbot-plugin-chat
	@mkdir -p "$(PLUGIN_DIR)"
	@for p in $(PLUGINS); do \
		cp "$(WASM)/swapbot_plugin_$$p.wasm" "$(PLUGIN_DIR)/.$$p.wasm.swap-tmp" && \
		mv -f "$(PLUGIN_DIR)/.$$p.wasm.swap-tmp" "$(PLUGIN_DIR)/$$p.wasm"; \
	done

## test-guests: misbehaving plugins for the runtime's limit tests
test-guests: wasm-target
	$(CARGO) build --release --locked --target wasm32-wasip2 -p swapbot-guest-hostile -p swapbot-guest-future -p swapbot-guest-legacy
	@mkdir -p target/test-plugins
	@cp "$(WASM)/swapbot_guest_hostile.wasm" target/test-plugins/hostile.wasm
	@cp "$(WASM)/swapbot_guest_future.wasm" target/test-plugins/future.wasm
	@cp "$(WASM)/swapbot_guest_legacy.wasm" target/test-plugins/legacy-v0.1.wasm
	$(CARGO) build --release --locked --target wasm32-wasip2 -p swapbot-guest-echo --features names-another-backends-map
	@cp "$(WASM)/swapbot_guest_echo.wasm" target/test-plugins/thief.wasm
	$(CARGO) build --release --locked --target wasm32-wasip2 -p swapbot-guest-echo --features names-a-path-outside-data-dir
	@cp "$(WASM)/swapbot_guest_echo.wasm" target/test-plugins/escape.wasm
	$(CARGO) build --release --locked --target wasm32-wasip2 -p swapbot-guest-echo
	@cp "$(WASM)/swapbot_guest_echo.wasm" target/test-plugins/echo.wasm

## test: every test, then every plugin's harness cases
test: build test-guests
	$(CARGO) test --release --locked --workspace
	@for p in $(PLUGINS); do \
		target/release/swapbot plugin test "$(PLUGIN_DIR)/$$p.wasm" "plugins/$$p/cases" || exit 1; \
	done

## run: the bot; with no TELOXIDE_TOKEN a terminal chat, with no OPENAI_API_KEY the local sandbox
run: build
	@scripts/run.sh

## sandbox: the OpenAI emulator on 127.0.0.1:8787, printing the two lines to export
sandbox: build
	target/release/swapbot-sandbox --port $${SANDBOX_PORT:-8787}

bench: build test-guests
	@scripts/bench.sh

clean-data:
	rm -rf data logs
