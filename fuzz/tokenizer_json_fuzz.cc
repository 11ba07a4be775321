// Bpe loaders: tokenizer.json (byte-level or SentencePiece-style), or a
// tiktoken tokenizer.model when the input looks like one. Then encode and
// decode a fixed text with added tokens, and decode every id with one out of
// range.
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "common/tokenizer/bpe.h"

// Special tokens for tiktoken inputs, which carry none themselves.
constexpr char kTiktokenConfig[] = R"({
  "added_tokens_decoder": {
    "300": {"content": "<|endoftext|>", "special": true, "normalized": false},
    "301": {"content": "<|user|>", "special": true, "rstrip": true, "normalized": false}
  },
  "bos_token": "<|endoftext|>"})";

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  auto bpe = wq::Bpe::IsTiktoken(input)
                 ? wq::Bpe::FromTiktoken(input, kTiktokenConfig)
                 : wq::Bpe::FromTokenizerJson(input, "");
  if (!bpe.ok()) return 0;
  for (const bool special : {false, true}) {
    auto ids = (*bpe)->Encode(
        "Hello, world! <|endoftext|><|user|>\n  123 \xC3\xA9t\xC3\xA9 \xF0\x9F\x98\x80\n",
        special);
    if (ids.ok()) (void)(*bpe)->Decode(*ids);
  }
  std::vector<int> all_ids;
  for (int id = -1; id <= (*bpe)->vocab_size() && id < 4096; ++id) all_ids.push_back(id);
  (void)(*bpe)->Decode(all_ids);
  return 0;
}
