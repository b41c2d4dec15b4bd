# Farmgate: the one entry point (make help).

O ?= build
V ?= 0
SANITIZE ?= 0
PY := /usr/bin/python3

KCONFIG_CONFIG ?= $(O)/.config
AUTOCONF := $(O)/include/generated/autoconf.h
BUILDOPTS := $(O)/include/buildopts.h
export KCONFIG_CONFIG

ifeq ($(V),1)
Q :=
else
Q := @
endif

VERSION := $(shell git describe --always --dirty 2>/dev/null || echo unknown)
BOARD := $(shell sed -n 's/^CONFIG_BOARD="\(.*\)"/\1/p' $(KCONFIG_CONFIG) 2>/dev/null)
BOARD := $(if $(BOARD),$(BOARD),host)

CC := gcc
OPT := -O2 -g
ifeq ($(SANITIZE),1)
OPT := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
endif
PCRE_CFLAGS := $(shell pkg-config --cflags libpcre2-8 2>/dev/null)
PCRE_LIBS := $(shell pkg-config --libs libpcre2-8 2>/dev/null || echo -lpcre2-8)
CFLAGS := -std=gnu11 $(OPT) -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wno-missing-field-initializers
P11_CFLAGS := $(shell pkg-config --cflags p11-kit-1 2>/dev/null)
CPPFLAGS := -D_GNU_SOURCE -I$(O)/include -Ifirmware -Ihsm \
	$(PCRE_CFLAGS) $(P11_CFLAGS) -DOPENSSL_API_COMPAT=30000 -DOPENSSL_SUPPRESS_DEPRECATED
LDLIBS := $(PCRE_LIBS) -lssl -lcrypto -ldl -lpthread

# firmware/ctlclient.c is farmgatectl's (the control socket's client), not farmgated's
FW_SRCS := $(sort $(filter-out firmware/ctlclient.c,$(wildcard firmware/*.c)))
FW_OBJS := $(FW_SRCS:%.c=$(O)/obj/%.o)
HSM_SRCS := $(sort $(filter-out hsm/farmgatectl.c,$(wildcard hsm/*.c)))
HSM_OBJS := $(HSM_SRCS:%.c=$(O)/obj/%.o)
LIB_OBJS := $(filter-out $(O)/obj/firmware/main.o,$(FW_OBJS)) $(HSM_OBJS)
# farmgate-mgmt: the management plane (its own process), with the web UI embedded
MGMT_SRCS := $(sort $(wildcard firmware/mgmt/*.c))
MGMT_OBJS := $(MGMT_SRCS:%.c=$(O)/obj/%.o) $(O)/obj/gen/ui_assets.o
UI_FILES := $(sort $(wildcard web-ui/*))
SHIM := $(O)/tests/libfgshim.so
UNIT_SRCS := $(sort $(wildcard tests/unit/test_*.c))
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(O)/tests/%)
TOOL_SRCS := $(sort $(wildcard tests/tools/*.c))
TOOL_BINS := $(TOOL_SRCS:tests/tools/%.c=$(O)/tests/tools/%)

# what make image and the QEMU runs need (the kernel .deb is downloaded, never installed)
IMAGE_PKGS := qemu-system-x86 ovmf busybox-static systemd-boot-efi dosfstools mtools fdisk \
	cpio kmod zstd xz-utils e2fsprogs
# Debian packages the build, the demo and the tests need.
DEB_PKGS := build-essential pkg-config libpcre2-dev libcmocka-dev python3-kconfiglib \
	nginx wrk curl clang-format cppcheck shellcheck procps iproute2 \
	libssl-dev openssl libp11-kit-dev softhsm2 opensc libengine-pkcs11-openssl strace \
	pcscd vsmartcard-vpcd libcacard-dev libnss3-tools testssl.sh chromium slowhttptest \
	$(IMAGE_PKGS)
# npm's playwright-core drives Debian's chromium in the browser tests
PLAYWRIGHT_VERSION := 1.65.1
NODE_DIR := $(O)/node
PLAYWRIGHT := $(NODE_DIR)/node_modules/playwright-core/package.json

.DEFAULT_GOAL := all
.SECONDARY:
.PHONY: all help deps run test unit test-unit test-integration bench lint format clean distclean \
	image qemu-image pc-image bench-image soak menuconfig olddefconfig savedefconfig defconfig config asan \
	fuzz fuzz-build

help:
	@echo 'Farmgate make targets'
	@echo '  make run              set up, build the image, boot it under QEMU with demo farms (Ctrl-C stops)'
	@echo '  make run BOARD=host   the same demo with farmgated running natively on this machine'
	@echo '  make test             set up, build, run every test (release + ASan/UBSan); ends "N passed, N failed"'
	@echo '  make deps             install missing Debian packages (apt-get, non-interactive)'
	@echo '  make / make all       build farmgated into $(O)/ (out of tree; O=dir to change)'
	@echo '  make image            the firmware image of the configured board into $(O)/images/'
	@echo '                        (make qemu_x86_64_defconfig && make image; see board/*/readme.txt)'
	@echo '                        pc_x86_64_defconfig: the generic kernel and PC drivers, for real machines'
	@echo '  make asan             build farmgated and unit tests with ASan+UBSan into $(O)/asan/'
	@echo '  make unit             build the cmocka unit tests'
	@echo '  make test-unit        run the unit tests only'
	@echo '  make test-integration run the integration tests only (TESTS=pattern to filter)'
	@echo '  make bench            farmgated vs nginx side by side; writes $(O)/bench/results.md'
	@echo '  make soak             $(SOAK_CONNS) TLS connections through farmgated for $(SOAK_SECONDS) s; writes $(O)/soak/result.md'
	@echo '  make bench-image      the image size and boot-to-serving times under QEMU (3 runs each)'
	@echo '  make fuzz             build the libFuzzer harnesses into $(O)/fuzz/, run each FUZZ_TIME s (60)'
	@echo '  make fuzz-build       only build them (tests/fuzz/README.md)'
	@echo '  make lint             clang-format check, cppcheck, shellcheck (board scripts)'
	@echo '  make format           reformat the C sources with clang-format'
	@echo '  make menuconfig       edit the build configuration ($(KCONFIG_CONFIG))'
	@echo '  make <board>_defconfig  start from board/<board>/defconfig (boards: $(notdir $(wildcard board/*)))'
	@echo '  make olddefconfig     update the configuration, new options at their defaults'
	@echo '  make savedefconfig    write the minimal defconfig back to board/<board>/defconfig'
	@echo '  make clean / distclean  remove build outputs / and the configuration'
	@echo 'Variables: O=builddir  V=1 (show commands)  SANITIZE=1'

# ---- set-up -------------------------------------------------------------
deps:
	$(Q)missing=$$(for p in $(DEB_PKGS); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "deps: installing $$missing"; \
		SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	else echo "deps: all Debian packages present"; fi
	$(Q)command -v npm >/dev/null || { SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends npm; }
	$(Q)$(MAKE) --no-print-directory $(PLAYWRIGHT)

$(PLAYWRIGHT):
	@mkdir -p $(NODE_DIR)
	@echo "  NPM     playwright-core@$(PLAYWRIGHT_VERSION)"
	$(Q)npm install --prefix $(NODE_DIR) --no-audit --no-fund --loglevel=error \
		playwright-core@$(PLAYWRIGHT_VERSION) >/dev/null

# ---- Kconfig ------------------------------------------------------------
$(KCONFIG_CONFIG):
	$(Q)mkdir -p $(dir $@)
	$(Q)$(PY) -m defconfig --kconfig Kconfig board/host/defconfig >/dev/null

$(AUTOCONF): $(KCONFIG_CONFIG) Kconfig
	$(Q)mkdir -p $(dir $@)
	$(Q)$(PY) -m olddefconfig Kconfig >/dev/null
	$(Q)$(PY) -m genconfig Kconfig --header-path $@

%_defconfig:
	$(Q)b=; for d in board/*/; do d=$${d%/}; \
		[ "$$(echo $${d#board/} | tr - _)" = "$*" ] && b=$$d; done; \
	[ -n "$$b" ] && [ -f $$b/defconfig ] || { echo "no board $*: see board/"; exit 1; }; \
	mkdir -p $(dir $(KCONFIG_CONFIG)); $(PY) -m defconfig --kconfig Kconfig $$b/defconfig

config: $(AUTOCONF)

# The build options as a C string, for farmgated -V.
$(BUILDOPTS): $(AUTOCONF)
	$(Q){ echo '/* generated from $(KCONFIG_CONFIG): the build options farmgated -V prints */'; \
	  echo '#define FG_BUILD_OPTIONS \'; \
	  sed -n 's/"/\\"/g; s/^\(CONFIG_[A-Za-z0-9_]*=.*\)$$/\t"\1\\n" \\/p' $(KCONFIG_CONFIG); \
	  echo '\t""'; } > $@

menuconfig: $(KCONFIG_CONFIG)
	$(Q)$(PY) -m menuconfig Kconfig

olddefconfig: $(KCONFIG_CONFIG)
	$(Q)$(PY) -m olddefconfig Kconfig

savedefconfig: $(KCONFIG_CONFIG)
	$(Q)$(PY) -m savedefconfig --kconfig Kconfig --out board/$(BOARD)/defconfig
	@echo "wrote board/$(BOARD)/defconfig"

# ---- build --------------------------------------------------------------
all: $(O)/farmgated $(O)/farmgatectl $(O)/farmgate-mgmt

$(O)/farmgated: $(FW_OBJS) $(HSM_OBJS)
	@echo "  LD      $@"
	$(Q)$(CC) $(OPT) -o $@ $^ $(LDLIBS)

$(O)/farmgatectl: $(O)/obj/hsm/farmgatectl.o $(HSM_OBJS) $(O)/obj/firmware/log.o \
		$(O)/obj/firmware/ctlclient.o $(O)/obj/firmware/json.o
	@echo "  LD      $@"
	$(Q)$(CC) $(OPT) -o $@ $^ $(LDLIBS)

$(O)/farmgate-mgmt: $(MGMT_OBJS) $(LIB_OBJS)
	@echo "  LD      $@"
	$(Q)$(CC) $(OPT) -o $@ $^ $(LDLIBS)

# the web UI as C arrays (tools/embed_assets.py), rebuilt when a file changes
$(O)/gen/ui_assets.c $(O)/gen/ui_assets.h: tools/embed_assets.py $(UI_FILES)
	@mkdir -p $(O)/gen
	@echo "  EMBED   web-ui"
	$(Q)$(PY) tools/embed_assets.py $(O)/gen/ui_assets.c $(UI_FILES)

$(O)/obj/gen/ui_assets.o: $(O)/gen/ui_assets.c | $(VERSION_H)
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -I$(O)/gen -c -o $@ $<

$(MGMT_SRCS:%.c=$(O)/obj/%.o): $(O)/gen/ui_assets.h
$(MGMT_SRCS:%.c=$(O)/obj/%.o): CPPFLAGS += -I$(O)/gen -Ifirmware/mgmt

# The test PKCS#11 module that wraps SoftHSM (delays, faults, PIN lockout).
$(SHIM): tests/pkcs11-shim/shim.c
	@mkdir -p $(dir $@)
	@echo "  CC      $@"
	$(Q)$(CC) -std=gnu11 -O2 -g -Wall -Wextra -Werror -fPIC -shared $(P11_CFLAGS) -o $@ $< -ldl -lpthread

# the version in one generated header, rewritten only when it changes, so
# exactly the objects that print it are rebuilt (-MMD) and always agree
VERSION_H := $(O)/include/fgversion.h
$(VERSION_H): FORCE
	@mkdir -p $(dir $@)
	$(Q)printf '#ifndef FG_VERSION\n#define FG_VERSION "%s"\n#endif\n' '$(VERSION)' > $@.tmp; \
	cmp -s $@.tmp $@ && rm -f $@.tmp || mv $@.tmp $@
FORCE:
.PHONY: FORCE

$(O)/obj/%.o: %.c $(AUTOCONF) $(BUILDOPTS) | $(VERSION_H)
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -include $(AUTOCONF) -c -o $@ $<

unit: $(UNIT_BINS) $(TOOL_BINS) $(SHIM)

$(O)/tests/test_%: $(O)/obj/tests/unit/test_%.o $(LIB_OBJS)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	$(Q)$(CC) $(OPT) -o $@ $^ $(LDLIBS) -lcmocka

# test tools: the CAC smart-card bridge needs libcacard
$(O)/obj/tests/tools/cac_vpcd.o: CPPFLAGS += $(shell pkg-config --cflags libcacard 2>/dev/null)
$(O)/tests/tools/cac_vpcd: TOOL_LIBS = $(shell pkg-config --libs libcacard 2>/dev/null)
$(O)/tests/tools/%: $(O)/obj/tests/tools/%.o
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(OPT) -o $@ $^ $(TOOL_LIBS)

asan: $(AUTOCONF)
	$(Q)$(MAKE) --no-print-directory O=$(O)/asan SANITIZE=1 KCONFIG_CONFIG=$(abspath $(KCONFIG_CONFIG)) all unit

-include $(FW_OBJS:.o=.d) $(HSM_OBJS:.o=.d) $(O)/obj/hsm/farmgatectl.d $(MGMT_SRCS:%.c=$(O)/obj/%.d) \
	$(O)/obj/firmware/ctlclient.d $(UNIT_BINS:$(O)/tests/%=$(O)/obj/tests/unit/%.d)

# ---- firmware image -----------------------------------------------------
image: all
	$(Q)[ "$(BOARD)" != host ] || { echo "make image: the host board has no image: make qemu_x86_64_defconfig first"; exit 1; }
	$(Q)$(PY) tools/mkimage.py --build $(O) --board board/$(BOARD) --version $(VERSION)

# make run and make test build a board's image in an output directory of its
# own, $(O)/<board> (its .config made once from the board's defconfig):
# qemu-x86_64 (QEMU's virtio machine, the cloud kernel) and pc-x86_64 (the
# same system with Debian's generic kernel and PC drivers: SATA, NVMe, USB
# sticks, Intel and Realtek NICs)
QEMU_O := $(O)/qemu-x86_64
PC_O := $(O)/pc-x86_64
board_image = $(Q)[ -f $(1)/.config ] || $(MAKE) --no-print-directory O=$(1) \
		KCONFIG_CONFIG=$(abspath $(1))/.config $(2)_defconfig >/dev/null; \
	$(MAKE) --no-print-directory O=$(1) KCONFIG_CONFIG=$(abspath $(1))/.config image
qemu-image:
	$(call board_image,$(QEMU_O),qemu_x86_64)
pc-image:
	$(call board_image,$(PC_O),pc_x86_64)

# ---- run and test -------------------------------------------------------
# make run boots the image under QEMU; make run BOARD=host runs farmgated natively
RUN_BOARD := $(if $(filter command line,$(origin BOARD)),$(BOARD),qemu-x86_64)
run: deps all
ifeq ($(RUN_BOARD),host)
	$(Q)$(PY) tests/demo.py --build $(O)
else
	$(Q)$(MAKE) --no-print-directory qemu-image
	$(Q)$(PY) tests/demo_qemu.py --build $(O) --images $(QEMU_O)/images
endif

test: deps
	$(Q)$(MAKE) --no-print-directory all unit
	$(Q)$(MAKE) --no-print-directory asan
	$(Q)$(MAKE) --no-print-directory qemu-image pc-image
	$(Q)$(MAKE) --no-print-directory fuzz-build
	$(Q)$(PY) tests/run.py --build $(O) --asan-build $(O)/asan --fuzz-build $(O)/fuzz

test-unit: all unit
	$(Q)$(PY) tests/run.py --build $(O) --only unit

test-integration: all unit
	$(Q)$(PY) tests/run.py --build $(O) --only integration $(if $(TESTS),--filter '$(TESTS)')

bench: deps all
	$(Q)$(PY) tests/bench.py --build $(O)

# long-running load: SOAK_CONNS TLS connections through farmgated for SOAK_SECONDS;
# writes $(O)/soak/result.md, fails on any error, RSS growth or descriptor leak
SOAK_SECONDS ?= 600
SOAK_CONNS ?= 2000
soak: deps all
	$(Q)$(PY) tests/soak.py --build $(O) --seconds $(SOAK_SECONDS) --conns $(SOAK_CONNS)

# the image's size and boot-to-serving times under QEMU (TCG)
bench-image: deps all
	$(Q)$(MAKE) --no-print-directory qemu-image pc-image
	$(Q)$(PY) tests/qemu_boottime.py --images $(QEMU_O)/images
	$(Q)$(PY) tests/qemu_boottime.py --images $(PC_O)/images --board pc-x86_64

# ---- fuzzing --------------------------------------------------------------
# libFuzzer harnesses (tests/fuzz/): each fuzz_<name>.c with the project
# sources it needs, all built with clang's fuzzer+ASan+UBSan into $(O)/fuzz/.
FUZZ_CC := clang
FUZZ_TIME ?= 60
FUZZ_CFLAGS := -std=gnu11 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
	-fno-omit-frame-pointer -Wall -Wextra -Wno-missing-field-initializers
FUZZ_NAMES := $(sort $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c)))
FUZZ_BINS := $(FUZZ_NAMES:%=$(O)/fuzz/fuzz_%)
FUZZ_LIB_OBJS := $(LIB_OBJS:$(O)/obj/%=$(O)/fuzz/obj/%)
FUZZ_HTTP1_OBJS := $(O)/fuzz/obj/firmware/http1.o
# a harness's libFuzzer option from its fuzz_<name>.options (OSS-Fuzz's
# format; tests/run.py reads the same files): $(call FUZZ_OPT,name,dict)
FUZZ_OPT = $(shell sed -n 's/^$(2) *= *//p' tests/fuzz/fuzz_$(1).options)

$(O)/fuzz/obj/%.o: %.c $(AUTOCONF) $(BUILDOPTS) | $(VERSION_H)
	@mkdir -p $(dir $@)
	@echo "  FUZZCC  $<"
	$(Q)$(FUZZ_CC) $(CPPFLAGS) $(FUZZ_CFLAGS) -MMD -MP -include $(AUTOCONF) -c -o $@ $<

$(O)/fuzz/fuzz_request $(O)/fuzz/fuzz_response $(O)/fuzz/fuzz_chunked: $(FUZZ_HTTP1_OBJS)
$(O)/fuzz/fuzz_rules $(O)/fuzz/fuzz_cfg: $(FUZZ_LIB_OBJS)
$(O)/fuzz/fuzz_%: $(O)/fuzz/obj/tests/fuzz/fuzz_%.o
	@echo "  LD      $@"
	$(Q)$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $^ $(LDLIBS)

fuzz-build: $(FUZZ_BINS)

# One harness's run (a shell fragment for the fuzz recipe): from its work
# corpus, the seeds copied in (it grows run after run), and its regressions.
define FUZZ_RUN
mkdir -p $(O)/fuzz/corpus/$(1) $(O)/fuzz/crashes/$(1) && \
cp -p tests/fuzz/corpus/$(1)/* $(O)/fuzz/corpus/$(1)/ && \
echo "  FUZZ    $(1) ($(FUZZ_TIME) s)" && \
{ $(O)/fuzz/fuzz_$(1) -dict=tests/fuzz/$(call FUZZ_OPT,$(1),dict) \
	-max_len=$(call FUZZ_OPT,$(1),max_len) \
	-rss_limit_mb=2048 -max_total_time=$(FUZZ_TIME) -print_final_stats=1 \
	-artifact_prefix=$(O)/fuzz/crashes/$(1)/ $(O)/fuzz/corpus/$(1) \
	$(wildcard tests/fuzz/regress/$(1)) >$(O)/fuzz/$(1).log 2>&1 || \
	{ fail="$$fail $(1)"; tail -n 40 $(O)/fuzz/$(1).log; }; } && \
grep -E '^(stat::(number_of_executed_units|average_exec_per_sec|new_units_added)|Done)' \
	$(O)/fuzz/$(1).log | sed 's/^/          /'; \
grep -E '^#[0-9]+' $(O)/fuzz/$(1).log | tail -n 1 | sed 's/^/          /';
endef

fuzz: fuzz-build
	$(Q)fail=; $(foreach n,$(FUZZ_NAMES),$(call FUZZ_RUN,$(n))) \
	[ -z "$$fail" ] || { echo "fuzz: crashes in:$$fail (see $(O)/fuzz/crashes/)"; exit 1; }

-include $(FUZZ_LIB_OBJS:.o=.d) $(FUZZ_NAMES:%=$(O)/fuzz/obj/tests/fuzz/fuzz_%.d)

# ---- hygiene ------------------------------------------------------------
LINT_SRCS = $(wildcard firmware/*.c firmware/*.h firmware/mgmt/*.c firmware/mgmt/*.h hsm/*.c hsm/*.h tests/unit/*.c tests/unit/*.h tests/tools/*.c \
	tests/pkcs11-shim/*.c tests/fuzz/*.c tests/fuzz/*.h)

lint: $(AUTOCONF)
	$(Q)clang-format --dry-run --Werror $(LINT_SRCS)
	$(Q)cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability \
		--inline-suppr --std=c11 -D__CPPCHECK__ -D_GNU_SOURCE -DFG_VERSION='"lint"' -Ifirmware \
		--include=$(AUTOCONF) --suppress=missingIncludeSystem -Ihsm firmware hsm tests/unit
	$(Q)shellcheck -s sh -S warning -e SC1091,SC2034,SC2154,SC3040 -x \
		$$(grep -rl '^#!/bin/sh' board) $(sort $(realpath $(wildcard board/*/rootfs-overlay/usr/lib/farmgate/lib.sh)))
	@echo "lint: clean"

format:
	$(Q)clang-format -i $(LINT_SRCS)

clean:
	$(Q)rm -rf $(O)/obj $(O)/asan $(O)/tests $(O)/farmgated $(O)/bench $(O)/image $(O)/images $(O)/fuzz \
		$(foreach b,$(QEMU_O) $(PC_O),$(filter-out $(b)/dl,$(wildcard $(b)/*)))

distclean:
	$(Q)rm -rf $(O)
