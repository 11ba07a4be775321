"""The layers of common/, bottom first: each may use only the layers below it.

A layer's package lists what may depend on it with visible_above(layer): the
layers above it and the top-level packages (services, tools, tests).
"""

LAYERS = ["io", "formats", "kernels", "tokenizer", "model", "artifact", "serving", "quant"]

_TOP_LEVEL = [
    "//bench:__subpackages__",
    "//cli:__subpackages__",
    "//clients:__subpackages__",
    "//fuzz:__subpackages__",
    "//inference_service:__subpackages__",
    "//quantizer_service:__subpackages__",
    "//server:__subpackages__",
    "//tests:__subpackages__",
]

def visible_above(layer):
    above = LAYERS[LAYERS.index(layer) + 1:]
    return ["//common/%s:__pkg__" % name for name in above] + _TOP_LEVEL
