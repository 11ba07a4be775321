"""libFuzzer targets that are also corpus-replay tests in every build."""

def wq_fuzz_target(name, srcs, deps):
    """Defines `name` (a fuzzer under --config=fuzz, a replayer otherwise)
    and `name`_corpus_test, which replays fuzz/corpus/`name`/ in every build.

    Args:
      name: the target; its seeds live in corpus/<name>/.
      srcs: sources defining LLVMFuzzerTestOneInput.
      deps: libraries under test.
    """
    native.cc_binary(
        name = name,
        srcs = srcs,
        deps = deps + select({
            "//fuzz:libfuzzer": [],
            "//conditions:default": ["//fuzz:replay_main"],
        }),
        linkopts = select({
            "//fuzz:libfuzzer": ["-fsanitize=fuzzer"],
            "//conditions:default": [],
        }),
    )
    native.cc_test(
        name = name + "_corpus_test",
        srcs = srcs,
        deps = deps + ["//fuzz:replay_main"],
        data = native.glob(["corpus/" + name + "/**"]),
        args = ["fuzz/corpus/" + name],
    )
