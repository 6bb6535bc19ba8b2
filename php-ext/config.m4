dnl The standard PHP build of the `pier` extension (phpize && ./configure && make && make install),
dnl the route PIE and distribution packagers take. The extension is Rust: this drives cargo, which
dnl builds it against the PHP whose php-config this configure uses (ext-php-rs reads its headers
dnl through PHP_CONFIG and the PHP binary through PHP), and `make install` copies the result, as
dnl modules/pier.so, into that PHP's extension dir (under INSTALL_ROOT when set).

PHP_ARG_ENABLE([pier],
  [whether to enable the pier extension],
  [AS_HELP_STRING([--enable-pier], [Build the pier extension (Rust, built by cargo)])],
  [yes])

if test "$PHP_PIER" != "no"; then
  AC_PATH_PROG([CARGO], [cargo], [no])
  if test "$CARGO" = "no"; then
    AC_MSG_ERROR([cargo not found: the pier extension is Rust; install it from https://rustup.rs])
  fi

  dnl Physical paths: PIE and Composer path repositories may reach this directory through a symlink.
  PIER_SRCDIR=`cd -P "$abs_srcdir" && pwd -P`
  AC_MSG_CHECKING([for the cargo workspace of the pier extension])
  PIER_WORKSPACE_MANIFEST=`"$CARGO" locate-project --workspace --message-format plain --manifest-path "$PIER_SRCDIR/Cargo.toml" 2>&1` ||
    AC_MSG_ERROR([cargo cannot read $PIER_SRCDIR/Cargo.toml: $PIER_WORKSPACE_MANIFEST])
  AC_MSG_RESULT([$PIER_WORKSPACE_MANIFEST])

  dnl Where cargo puts the library: honours CARGO_TARGET_DIR and .cargo/config.toml's target-dir.
  AC_MSG_CHECKING([for cargo's target directory])
  PIER_TARGET_DIR=`"$CARGO" metadata --format-version 1 --no-deps --manifest-path "$PIER_WORKSPACE_MANIFEST" | $SED -n 's/.*"target_directory":"\([[^"]]*\)".*/\1/p'`
  test -n "$PIER_TARGET_DIR" || AC_MSG_ERROR([cargo metadata named no target directory])
  AC_MSG_RESULT([$PIER_TARGET_DIR])

  dnl Build for this configure's PHP. When it is the php-config and php on the PATH anyway, leave
  dnl PHP_CONFIG and PHP unset: ext-php-rs rebuilds when they change, and a plain `cargo build`
  dnl (unset) would then rebuild too.
  AC_MSG_CHECKING([which PHP cargo builds for])
  pier_config_abs=`command -v "$PHP_CONFIG"`
  pier_config_abs=`readlink -f "$pier_config_abs"`
  pier_php_abs=`readlink -f "$PHP_EXECUTABLE"`
  pier_path_config=`command -v php-config 2>/dev/null` && pier_path_config=`readlink -f "$pier_path_config"`
  pier_path_php=`command -v php 2>/dev/null` && pier_path_php=`readlink -f "$pier_path_php"`
  if test "$pier_config_abs" = "$pier_path_config" && test "$pier_php_abs" = "$pier_path_php"; then
    PIER_CARGO_ENV=
    AC_MSG_RESULT([$PHP_EXECUTABLE (the php and php-config on PATH)])
  else
    PIER_CARGO_ENV="PHP_CONFIG='$pier_config_abs' PHP='$pier_php_abs'"
    AC_MSG_RESULT([$PHP_EXECUTABLE ($pier_config_abs)])
  fi

  PHP_SUBST([CARGO])
  PHP_SUBST([PIER_WORKSPACE_MANIFEST])
  PHP_SUBST([PIER_TARGET_DIR])
  PHP_SUBST([PIER_CARGO_ENV])
  dnl Something for phpize to create, without which its build-dir step complains of nothing to do.
  PHP_ADD_BUILD_DIR([modules])
  PHP_ADD_MAKEFILE_FRAGMENT([$abs_srcdir/Makefile.frag], [$abs_srcdir], [$abs_builddir])
fi
