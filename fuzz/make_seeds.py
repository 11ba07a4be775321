#!/usr/bin/env python3
"""Writes run-time seeds for the fuzz targets into OUT/<target>/ from
testdata/ and ../shared (small derivatives of them, so that inputs stay short
and executions fast; nothing of ../shared is committed).

Usage: make_seeds.py REPO_ROOT SHARED_DIR OUT"""
import glob
import json
import os
import struct
import sys

repo, shared, out = sys.argv[1:4]


def put(target, name, data):
    os.makedirs(os.path.join(out, target), exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(os.path.join(out, target, name), mode) as f:
        f.write(data)


def models():
    return sorted(set(glob.glob(os.path.join(repo, "testdata/models/*/"))) |
                  set(glob.glob(os.path.join(shared, "models/*/"))))


def tag(path):
    path = os.path.abspath(path)
    if path.startswith(os.path.abspath(shared)):
        path = "shared/" + os.path.relpath(path, shared)
    else:
        path = os.path.relpath(path, repo)
    return path.replace("/", "_")


# safetensors: each model's first tensors with their real headers' dtypes and
# metadata, data cut to 256 bytes each so a seed stays a few KiB.
for m in models():
    path = os.path.join(m, "model.safetensors")
    if not os.path.exists(path):
        continue
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
        kept, data = {}, b""
        for name, info in header.items():
            if name == "__metadata__":
                kept[name] = info
                continue
            if len(kept) > 4:
                break
            begin, end = info["data_offsets"]
            f.seek(base + begin)
            payload = f.read(min(end - begin, 256))
            itemsize = {"F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1}.get(info["dtype"], 4)
            payload = payload[: len(payload) // itemsize * itemsize]
            kept[name] = {"dtype": info["dtype"], "shape": [len(payload) // itemsize],
                          "data_offsets": [len(data), len(data) + len(payload)]}
            data += payload
    h = json.dumps(kept).encode()
    put("safetensors_fuzz", tag(m), struct.pack("<Q", len(h)) + h + data)

# config.json of every model (also read as its own generation config).
for m in models():
    path = os.path.join(m, "config.json")
    if os.path.exists(path):
        put("hf_config_fuzz", tag(m), open(path, "rb").read())

# chat templates from every tokenizer_config.json.
configs = glob.glob(os.path.join(shared, "tokenizers/*/*tokenizer_config.json")) + \
    glob.glob(os.path.join(shared, "models/*/tokenizer_config.json")) + \
    glob.glob(os.path.join(repo, "testdata/models/*/tokenizer_config.json"))
for path in configs:
    template = json.load(open(path)).get("chat_template")
    templates = template if isinstance(template, list) else [{"template": template}]
    for i, t in enumerate(templates):
        if isinstance(t, dict) and isinstance(t.get("template"), str):
            put("chat_template_fuzz", f"{tag(os.path.dirname(path))}_{os.path.basename(path)}_{i}",
                t["template"])


# tokenizer.json: byte-level BPE vocabularies cut to their first merges,
# written compactly (UTF-8, no spaces) so that a seed stays under 4 KiB.
def small_tokenizer_json(vocab, merges, added):
    merges = [m for m in merges[:60] if len(m.split(" ")) == 2]
    keep = {}
    for token, i in vocab.items():
        if i < 256:
            keep[token] = i
    for m in merges:
        a, b = m.split(" ")
        for t in (a, b, a + b):
            if t in vocab:
                keep[t] = vocab[t]
    merges = [m for m in merges if all(t in keep for t in m.split(" ") + [m.replace(" ", "")])]
    return json.dumps({
        "version": "1.0", "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": False,
                  "byte_fallback": False, "vocab": keep, "merges": merges}},
        ensure_ascii=False, separators=(",", ":"))


for name in ("gpt2", "qwen2"):
    d = os.path.join(shared, "tokenizers", name)
    if not os.path.exists(os.path.join(d, "vocab.json")):
        continue
    vocab = json.load(open(os.path.join(d, "vocab.json")))
    merges = [l.rstrip("\n") for l in open(os.path.join(d, "merges.txt"), encoding="utf-8")
              if l.strip() and not l.startswith("#version")]
    added = [{"id": len(vocab), "content": "<|endoftext|>", "special": True,
              "normalized": False, "single_word": False, "lstrip": False, "rstrip": False}]
    put("tokenizer_json_fuzz", name, small_tokenizer_json(vocab, merges, added).encode())
