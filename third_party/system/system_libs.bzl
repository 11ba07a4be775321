"""A repository of cc_library targets over Debian's system libraries.

Each target carries the link flags pkg-config reports at fetch time; the
headers live in /usr/include, which the toolchain already searches.
"""

# target name -> pkg-config modules (or raw -l flags for libraries without a .pc)
_LIBS = {
    "absl": [
        "absl_flags",
        "absl_flags_parse",
        "absl_status",
        "absl_statusor",
        "absl_strings",
        "absl_str_format",
        "absl_synchronization",
        "absl_time",
        "absl_random_random",
        "absl_hash",
        "absl_raw_hash_set",
    ],
    "protobuf": ["protobuf"],
    "grpc": ["grpc++"],
    "grpc_reflection": ["-lgrpc++_reflection"],
    "tbb": ["tbb"],
    "crypto": ["libcrypto"],
    "gtest": ["gtest", "gmock"],
    "gtest_main": ["gtest_main"],
    "benchmark": ["benchmark"],
    "pcre2": ["libpcre2-8"],
    "icu": ["icu-uc"],
    # Debian builds it as a library with OpenSSL, zlib and brotli on; the
    # -D flags from its .pc must match or the classes' layouts differ.
    "httplib": ["cpp-httplib"],
    "json": ["nlohmann_json"],  # header-only: no flags, declared for the record
}

# Targets whose users get TSan annotations for Abseil's uninstrumented mutex
# under --config=tsan (third_party/absl_tsan).
_TSAN_ANNOTATED = ["absl", "grpc"]

_TSAN_ANNOTATIONS_DEPS = """select({
        "@//third_party/absl_tsan:enabled": ["@//third_party/absl_tsan:sync_annotations"],
        "//conditions:default": [],
    })"""

def _pkg_config_libs(ctx, modules):
    flags = [m for m in modules if m.startswith("-l")]
    pkgs = [m for m in modules if not m.startswith("-l")]
    if pkgs:
        result = ctx.execute(["pkg-config", "--libs"] + pkgs)
        if result.return_code != 0:
            fail("pkg-config failed for %s: %s (run scripts/setup)" % (pkgs, result.stderr))
        flags = result.stdout.strip().split(" ") + flags
    return [f for f in flags if f]

def _pkg_config_defines(ctx, modules):
    pkgs = [m for m in modules if not m.startswith("-l")]
    if not pkgs:
        return []
    result = ctx.execute(["pkg-config", "--cflags"] + pkgs)
    if result.return_code != 0:
        fail("pkg-config failed for %s: %s (run scripts/setup)" % (pkgs, result.stderr))
    return [f[2:] for f in result.stdout.strip().split(" ") if f.startswith("-D")]

def _system_libs_impl(ctx):
    lines = ['package(default_visibility = ["//visibility:public"])', ""]
    for name, modules in _LIBS.items():
        lines.append("cc_library(")
        lines.append('    name = "%s",' % name)
        lines.append("    linkopts = %s," % repr(_pkg_config_libs(ctx, modules)))
        lines.append("    defines = %s," % repr(_pkg_config_defines(ctx, modules)))
        if name in _TSAN_ANNOTATED:
            lines.append("    deps = %s," % _TSAN_ANNOTATIONS_DEPS)
        lines.append(")")
        lines.append("")
    ctx.file("WORKSPACE", 'workspace(name = "%s")\n' % ctx.name)
    ctx.file("BUILD", "\n".join(lines))

system_libs = repository_rule(
    implementation = _system_libs_impl,
    local = True,
    environ = ["PKG_CONFIG_PATH"],
)
