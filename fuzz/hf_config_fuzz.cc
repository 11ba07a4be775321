// config.json and generation_config.json: the first half of the input is
// parsed as a config.json, the rest is merged into it (or into the parsed
// stories260K-like default) as a generation_config.json.
#include <cstdint>
#include <string_view>

#include "common/model/hf_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t split = input.find('\0');
  const std::string_view config_json = input.substr(0, split);
  const std::string_view generation_json =
      split == std::string_view::npos ? input : input.substr(split + 1);
  auto config = wq::ParseLlamaConfig(config_json);
  if (config.ok()) {
    // What was accepted must serialize and parse again.
    if (!wq::ParseLlamaConfig(wq::LlamaConfigToJson(*config)).ok()) __builtin_trap();
    (void)wq::MergeGenerationConfig(generation_json, &*config);
  } else {
    wq::LlamaConfig defaults;
    (void)wq::MergeGenerationConfig(generation_json, &defaults);
  }
  return 0;
}
