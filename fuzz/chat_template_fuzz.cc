// Chat templates: parse, then render a small conversation with bounded output.
#include <cstdint>
#include <string_view>

#include "common/tokenizer/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto parsed = wq::ChatTemplate::Parse(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!parsed.ok()) return 0;
  wq::ChatRenderInput input;
  input.messages = {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello."},
                    {"user", "Again"}};
  input.add_generation_prompt = true;
  input.bos_token = "<s>";
  input.eos_token = "</s>";
  input.max_output_bytes = 1 << 13;  // beyond any seed's output; runaway loops stop early
  (void)parsed->Render(input);
  return 0;
}
