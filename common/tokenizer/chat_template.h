// Renders the Jinja2 chat templates of Hugging Face tokenizer_config.json the
// way transformers' apply_chat_template does (trim_blocks, lstrip_blocks,
// loop controls, tojson with ensure_ascii=False, raise_exception,
// strftime_now). Only the subset chat templates use is implemented; anything
// else is refused when the template is parsed, so a model with an unusable
// template fails at load rather than at its first request.
#ifndef WQ_COMMON_CHAT_TEMPLATE_H_
#define WQ_COMMON_CHAT_TEMPLATE_H_

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace wq {

struct ChatMessage {
  std::string role;
  std::string content;
};

struct ChatRenderInput {
  std::vector<ChatMessage> messages;
  bool add_generation_prompt = false;
  // Unset: the variable is undefined in the template (prints as "").
  std::optional<std::string> bos_token;
  std::optional<std::string> eos_token;
  // Further variables (tools, enable_thinking, ...), set after the ones
  // above, so they may override them: a "messages" list here carries
  // messages with tool calls or content parts. Ordered so that tojson writes
  // objects in the caller's key order, as Python's json.dumps does.
  nlohmann::ordered_json extra_variables = nlohmann::ordered_json::object();
  // Rendering fails with RESOURCE_EXHAUSTED past this many bytes of output
  // or of any single string or list it builds.
  size_t max_output_bytes = size_t{16} << 20;
};

namespace chat_template_internal {
struct Program;
}  // namespace chat_template_internal

class ChatTemplate {
 public:
  // INVALID_ARGUMENT for syntax errors, UNIMPLEMENTED for Jinja constructs
  // (tags, filters, tests, methods, functions) outside the supported subset;
  // both name the construct and its line.
  static absl::StatusOr<ChatTemplate> Parse(std::string_view source);

  // INVALID_ARGUMENT with the template's own message for raise_exception,
  // and for type errors (e.g. adding a string to an undefined variable);
  // RESOURCE_EXHAUSTED when output or work exceeds its bounds.
  absl::StatusOr<std::string> Render(const ChatRenderInput& input) const;

 private:
  explicit ChatTemplate(
      std::shared_ptr<const chat_template_internal::Program> program)
      : program_(std::move(program)) {}

  std::shared_ptr<const chat_template_internal::Program> program_;
};

// The config's chat_template: a string, or a list of {name, template}
// objects from which `name` is taken ("default" when empty; transformers
// picks "tool_use" itself when tools are given, callers here name it).
// NOT_FOUND when the config has no template or none of that name.
absl::StatusOr<ChatTemplate> ChatTemplateFromTokenizerConfig(
    const nlohmann::json& config, std::string_view name);

}  // namespace wq

#endif  // WQ_COMMON_CHAT_TEMPLATE_H_
