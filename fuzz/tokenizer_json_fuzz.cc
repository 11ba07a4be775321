// tokenizer.json (byte-level BPE): load, then encode and decode a fixed text
// with added tokens, and decode every id with one out of range.
#include <cstdint>
#include <string_view>
#include <vector>

#include "common/bpe.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto bpe = wq::Bpe::FromTokenizerJson(
      std::string_view(reinterpret_cast<const char*>(data), size), "");
  if (!bpe.ok()) return 0;
  for (const bool special : {false, true}) {
    auto ids = (*bpe)->Encode("Hello, world! <|endoftext|> 123 \xC3\xA9t\xC3\xA9\n", special);
    if (ids.ok()) (void)(*bpe)->Decode(*ids);
  }
  std::vector<int> all_ids;
  for (int id = -1; id <= (*bpe)->vocab_size() && id < 4096; ++id) all_ids.push_back(id);
  (void)(*bpe)->Decode(all_ids);
  return 0;
}
