#!/usr/bin/env python3
"""Writes a Hugging Face Llama or Qwen2 directory (config.json,
model.safetensors, tokenizer.model) as an F32 GGUF file for llama.cpp, the
reference that bench/llamacpp/run measures beside wq: tied embeddings,
Llama 3's rope scaling and Qwen2's qkv biases included. The synthetic models'
vocabulary can be larger than their tokenizer.model (llama-3.2-1b's 128k
rows); the ids past it are written as unused tokens. Needs numpy,
sentencepiece and llama.cpp's own gguf-py (on PYTHONPATH); no torch.

    hf_to_gguf.py MODEL_DIR OUT.gguf
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np
import sentencepiece
import gguf


def read_safetensors(path):
    with open(path, "rb") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(header_len))
        base = 8 + header_len
    data = np.memmap(path, dtype=np.uint8, mode="r")
    dtypes = {"F32": np.float32, "F16": np.float16}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = data[base + begin:base + end]
        if info["dtype"] == "BF16":
            bits = raw.view(np.uint16).astype(np.uint32) << 16
            array = bits.view(np.float32)
        else:
            array = raw.view(dtypes[info["dtype"]])
        yield name, array.reshape(info["shape"]).astype(np.float32)


def permute_rotary(w, heads):
    # HF stores q/k with the two halves of each head's rotary pairs apart;
    # llama.cpp's rope rotates adjacent pairs (its converter does the same).
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(cfg, head_dim):
    # What llama.cpp's converter stores as rope_freqs.weight: the divisor of
    # each rotary frequency under rope_type "llama3" (transformers'
    # _compute_llama3_parameters).
    r = cfg["rope_scaling"]
    base = cfg.get("rope_theta", 10000.0)
    factor, low, high = r["factor"], r.get("low_freq_factor", 1.0), r.get("high_freq_factor", 4.0)
    old_context = r.get("original_max_position_embeddings", 8192)
    factors = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * np.pi * base ** (i / head_dim)
        if wavelen < old_context / high:
            factors.append(1.0)
        elif wavelen > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def main(model_dir, out_path):
    model_dir = Path(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads", heads)
    hidden = cfg["hidden_size"]
    arch = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}.get(cfg["architectures"][0])
    if arch is None:
        sys.exit(f"hf_to_gguf.py: {cfg['architectures'][0]} is not converted")
    writer = gguf.GGUFWriter(out_path, arch)
    writer.add_name(model_dir.name)
    writer.add_context_length(cfg.get("max_position_embeddings", 2048))
    writer.add_embedding_length(hidden)
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    writer.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-5))
    writer.add_vocab_size(cfg["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    rope_type = (cfg.get("rope_scaling") or {}).get("rope_type")
    if rope_type not in (None, "default", "llama3"):
        sys.exit(f"hf_to_gguf.py: rope_type {rope_type} is not converted")
    if rope_type == "llama3":
        writer.add_tensor("rope_freqs.weight", llama3_rope_factors(cfg, hidden // heads))

    sp = sentencepiece.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    if sp.vocab_size() > cfg["vocab_size"]:
        sys.exit("hf_to_gguf.py: tokenizer.model has more pieces than vocab_size")
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        elif sp.is_unused(i):
            types.append(gguf.TokenType.UNUSED)
        else:
            types.append(gguf.TokenType.NORMAL)
    for i in range(sp.vocab_size(), cfg["vocab_size"]):
        tokens.append(f"<unused{i}>".encode())
        scores.append(0.0)
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(sp.bos_id())
    writer.add_eos_token_id(sp.eos_id())
    writer.add_unk_token_id(sp.unk_id())

    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    per_layer = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
        "self_attn.q_proj.bias": "attn_q.bias",
        "self_attn.k_proj.bias": "attn_k.bias",
        "self_attn.v_proj.bias": "attn_v.bias",
    }
    # llama.cpp's llama rotates adjacent pairs, so HF's q/k rows are permuted
    # for it; its qwen2 rotates HF's halves (NEOX style) and takes them as
    # they are. Without lm_head.weight (tied), both use token_embd.
    for path in sorted(model_dir.glob("*.safetensors")):
        for name, w in read_safetensors(path):
            if name in names:
                writer.add_tensor(names[name], w)
                continue
            parts = name.split(".")  # model.layers.N.<rest>
            rest = ".".join(parts[3:])
            if arch == "llama" and name.endswith("q_proj.weight"):
                w = permute_rotary(w, heads)
            elif arch == "llama" and name.endswith("k_proj.weight"):
                w = permute_rotary(w, kv_heads)
            writer.add_tensor(f"blk.{parts[2]}.{per_layer[rest]}", w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
