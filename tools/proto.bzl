"""Protobuf and gRPC C++ code generation with Debian's protoc and plugin.

rules_proto and cc_grpc_library cannot be had offline, so a genrule runs the
system tools and a cc_library compiles what they write.
"""

def cc_proto_library_system(name, srcs, deps = [], grpc = False, visibility = None):
    # The package folder is the import root: proto/wq/v1/x.proto is imported
    # as "wq/v1/x.proto" and its code included as "wq/v1/x.pb.h".
    root = native.package_name()
    outs = []
    for src in srcs:
        base = src[:-len(".proto")]
        outs += [base + ".pb.h", base + ".pb.cc"]
        if grpc:
            outs += [base + ".grpc.pb.h", base + ".grpc.pb.cc"]
    grpc_flags = ""
    if grpc:
        grpc_flags = "--plugin=protoc-gen-grpc=/usr/bin/grpc_cpp_plugin --grpc_out=$(GENDIR)/%s" % root
    native.genrule(
        name = name + "_codegen",
        srcs = srcs + [d + "_srcs" for d in deps],
        outs = outs,
        cmd = "/usr/bin/protoc --proto_path=%s --cpp_out=$(GENDIR)/%s %s $(locations %s)" % (
            root,
            root,
            grpc_flags,
            " ".join(srcs),
        ),
    )
    native.filegroup(
        name = name + "_srcs",
        srcs = srcs + [d + "_srcs" for d in deps],
        visibility = visibility,
    )
    native.cc_library(
        name = name,
        srcs = [o for o in outs if o.endswith(".cc")],
        hdrs = [o for o in outs if o.endswith(".h")],
        includes = ["."],
        deps = deps + ["@system//:protobuf"] + (["@system//:grpc"] if grpc else []),
        visibility = visibility,
    )
