# The pier extension's build (config.m4): cargo builds libpier.so, make installs it as pier.so.

# What cargo builds: the extension's package alone. ./dev.sh passes an empty value (the workspace's
# default members, what `./dev.sh build` builds) so the build it already has is reused: cargo
# unifies dependency features over what one invocation builds, so `-p pier` alone would rebuild.
PIER_CARGO_PACKAGES = -p pier

all: $(phplibdir)/pier.so
build-modules: $(phplibdir)/pier.so

# Phony: cargo knows whether the library is up to date, make does not.
.PHONY: pier-cargo-build
pier-cargo-build:
	$(PIER_CARGO_ENV) $(CARGO) build --release --manifest-path='$(PIER_WORKSPACE_MANIFEST)' $(PIER_CARGO_PACKAGES)

$(phplibdir)/pier.so: pier-cargo-build
	@mkdir -p $(phplibdir)
	cp '$(PIER_TARGET_DIR)/release/libpier.so' $@
