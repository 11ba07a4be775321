#include "inference_service/openai_api.h"

#include <cctype>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/io/logging.h"
#include "common/io/status_macros.h"
#include "nlohmann/json.hpp"

namespace wq {
namespace {

using json = nlohmann::json;

// How often a waiting response checks for new tokens and a gone client.
constexpr absl::Duration kPoll = absl::Milliseconds(50);
// Written while nothing else is: a write to a closed connection fails (the
// second one at the latest), which is how a client that left is noticed.
constexpr absl::Duration kHeartbeat = absl::Milliseconds(500);

// 64 prompts of a long context each, with room to spare; larger bodies get
// 413 before they are read.
constexpr size_t kMaxBodyBytes = 16 << 20;

// The request field an error is about, carried as a payload of the status
// (OpenAI's "param").
constexpr char kParamPayload[] = "wq.openai.param";

absl::Status WithParam(absl::Status status, const std::string& param) {
  status.SetPayload(kParamPayload, absl::Cord(param));
  return status;
}

absl::Status BadField(const std::string& param, const std::string& message) {
  return WithParam(absl::InvalidArgumentError(message), param);
}

int HttpStatus(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kCancelled:
      return 503;
    default:
      return 500;
  }
}

std::string Dump(const json& value) {
  // Token surfaces can be a lone byte of a multi-byte character.
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

json ErrorJson(const absl::Status& status) {
  const int http = HttpStatus(status.code());
  absl::optional<absl::Cord> param = status.GetPayload(kParamPayload);
  json error = {{"message", std::string(status.message())},
                {"type", http == 429   ? "rate_limit_error"
                         : http >= 500 ? "server_error"
                                       : "invalid_request_error"},
                {"param", param.has_value() ? json(std::string(*param)) : json(nullptr)},
                {"code", nullptr}};
  if (http == 404) error["code"] = "model_not_found";
  if (http == 429) error["code"] = "rate_limit_exceeded";
  return {{"error", std::move(error)}};
}

void SendError(httplib::Response& response, const absl::Status& status) {
  response.status = HttpStatus(status.code());
  response.set_content(Dump(ErrorJson(status)), "application/json");
}

void SendJson(httplib::Response& response, const json& body) {
  response.status = 200;
  response.set_content(Dump(body), "application/json");
}

absl::StatusOr<json> ParseBody(const httplib::Request& request) {
  json body = json::parse(request.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) {
    return absl::InvalidArgumentError("the request body is not valid JSON");
  }
  if (!body.is_object()) return absl::InvalidArgumentError("the request body is not a JSON object");
  return body;
}

// A field of the body; nullptr when missing or null (OpenAI's "not given").
const json* Field(const json& body, const std::string& name) {
  auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

absl::StatusOr<std::optional<double>> NumberField(const json& body, const std::string& name) {
  const json* field = Field(body, name);
  if (field == nullptr) return std::nullopt;
  if (!field->is_number()) return BadField(name, absl::StrCat(name, " must be a number"));
  return field->get<double>();
}

absl::StatusOr<std::optional<int64_t>> IntegerField(const json& body, const std::string& name) {
  const json* field = Field(body, name);
  if (field == nullptr) return std::nullopt;
  if (!field->is_number_integer()) {
    return BadField(name, absl::StrCat(name, " must be an integer"));
  }
  return field->get<int64_t>();
}

absl::StatusOr<std::optional<int64_t>> IntegerField(const json& body, const std::string& name,
                                                    int64_t min, int64_t max) {
  ASSIGN_OR_RETURN(std::optional<int64_t> value, IntegerField(body, name));
  if (value.has_value() && (*value < min || *value > max)) {
    return BadField(name, absl::StrCat(name, " must be in [", min, ", ", max, "], got ", *value));
  }
  return value;
}

absl::StatusOr<std::optional<bool>> BoolField(const json& body, const std::string& name) {
  const json* field = Field(body, name);
  if (field == nullptr) return std::nullopt;
  if (!field->is_boolean()) return BadField(name, absl::StrCat(name, " must be a boolean"));
  return field->get<bool>();
}

absl::StatusOr<std::string> ModelField(const json& body) {
  const json* field = Field(body, "model");
  if (field == nullptr || !field->is_string() || field->get<std::string>().empty()) {
    return BadField("model", "model must be a non-empty string (see GET /v1/models)");
  }
  return field->get<std::string>();
}

// The ModelManager's "known but not loaded" is, to an OpenAI client, a model
// it cannot use: 404 as for an unknown one.
absl::Status ModelLookupError(const absl::Status& status) {
  if (status.code() == absl::StatusCode::kFailedPrecondition ||
      status.code() == absl::StatusCode::kNotFound) {
    return WithParam(absl::NotFoundError(status.message()), "model");
  }
  return status;
}

absl::StatusOr<std::shared_ptr<LoadedModel>> GetModel(const ModelManager& models,
                                                      const std::string& name) {
  absl::StatusOr<std::shared_ptr<LoadedModel>> model = models.Get(name);
  if (!model.ok()) return ModelLookupError(model.status());
  return model;
}

// The loaded model the body's "model" field names.
absl::StatusOr<std::shared_ptr<LoadedModel>> BodyModel(const ModelManager& models,
                                                       const json& body) {
  absl::StatusOr<std::string> name = ModelField(body);
  if (!name.ok()) return name.status();
  return GetModel(models, *name);
}

// Fields the body may carry for `endpoint`; anything else is refused by
// name, since an ignored field could silently change what the client gets.
// Harmless ones (user, metadata, ...) are accepted and ignored; fields that
// change semantics are checked one by one in RefuseUnsupported.
const std::set<std::string>& KnownFields(bool chat) {
  static const std::set<std::string>* completions = new std::set<std::string>{
      "model", "prompt", "max_tokens", "temperature", "top_p", "n", "stream",
      "stream_options", "logprobs", "stop", "presence_penalty", "frequency_penalty",
      "seed", "user", "top_k", "repetition_penalty", "echo", "suffix", "best_of",
      "logit_bias"};
  static const std::set<std::string>* chats = new std::set<std::string>{
      "model", "messages", "max_tokens", "max_completion_tokens", "temperature",
      "top_p", "n", "stream", "stream_options", "logprobs", "top_logprobs", "stop",
      "presence_penalty", "frequency_penalty", "seed", "user", "top_k",
      "repetition_penalty", "logit_bias", "tools", "tool_choice", "functions",
      "function_call", "parallel_tool_calls", "response_format", "store", "metadata",
      "service_tier", "modalities"};
  return chat ? *chats : *completions;
}

absl::Status RefuseUnsupported(const json& body, bool chat) {
  const std::set<std::string>& known = KnownFields(chat);
  for (auto it = body.begin(); it != body.end(); ++it) {
    if (known.count(it.key()) == 0) {
      return BadField(it.key(), absl::StrCat(it.key(), " is not supported by this server"));
    }
  }
  auto refuse = [](const std::string& name, const std::string& why) {
    return BadField(name, absl::StrCat(name, " is not supported by this server: ", why));
  };
  for (const char* name : {"tools", "tool_choice", "functions", "function_call"}) {
    const json* field = Field(body, name);
    // tool_choice "none" asks for what is served anyway.
    if (field != nullptr && !(field->is_string() && *field == "none")) {
      return refuse(name, "no tool calling");
    }
  }
  if (const json* format = Field(body, "response_format");
      format != nullptr && !(format->is_object() && format->value("type", "") == "text")) {
    return refuse("response_format", "only {\"type\": \"text\"}");
  }
  if (const json* modalities = Field(body, "modalities");
      modalities != nullptr && *modalities != json::array({"text"})) {
    return refuse("modalities", "only [\"text\"]");
  }
  if (const json* bias = Field(body, "logit_bias");
      bias != nullptr && !(bias->is_object() && bias->empty())) {
    return refuse("logit_bias", "no logit bias");
  }
  if (const json* echo = Field(body, "echo"); echo != nullptr && *echo != false) {
    return refuse("echo", "the prompt is not echoed");
  }
  if (const json* suffix = Field(body, "suffix"); suffix != nullptr && *suffix != "") {
    return refuse("suffix", "no insertion");
  }
  if (const json* best_of = Field(body, "best_of"); best_of != nullptr) {
    const json* n = Field(body, "n");
    if (*best_of != (n != nullptr ? *n : json(1))) {
      return refuse("best_of", "best_of must equal n (no server-side ranking)");
    }
  }
  return absl::OkStatus();
}

// OpenAI's names for the shared sampling checks' fields ("sampling.x" or
// "sampling: x" in their messages).
absl::Status WithOpenAiNames(const absl::Status& status) {
  std::string message(status.message());
  for (const char* prefix : {"sampling.", "sampling: "}) {
    const size_t at = message.find(prefix);
    if (at == std::string::npos) continue;
    const size_t start = at + std::strlen(prefix);
    size_t end = start;
    while (end < message.size() && (std::isalnum(static_cast<unsigned char>(message[end])) ||
                                     message[end] == '_')) {
      ++end;
    }
    std::string name = message.substr(start, end - start);
    if (name == "max_new_tokens") name = "max_tokens";
    if (name == "stop_sequences") name = "stop";
    message.replace(at, end - at, name);
    return WithParam(absl::Status(status.code(), message), name);
  }
  return status;
}

// The request's sampling fields as the gRPC API's, so that both are checked
// and defaulted by the same PrepareGeneration; an absent field is unset.
absl::StatusOr<v1::SamplingParams> SamplingFields(const json& body, bool chat) {
  v1::SamplingParams sampling;
  ASSIGN_OR_RETURN(std::optional<double> temperature, NumberField(body, "temperature"));
  if (temperature.has_value()) sampling.set_temperature(static_cast<float>(*temperature));
  ASSIGN_OR_RETURN(std::optional<double> top_p, NumberField(body, "top_p"));
  if (top_p.has_value()) sampling.set_top_p(static_cast<float>(*top_p));
  ASSIGN_OR_RETURN(std::optional<int64_t> top_k, IntegerField(body, "top_k", 0, INT32_MAX));
  if (top_k.has_value()) sampling.set_top_k(static_cast<int32_t>(*top_k));
  ASSIGN_OR_RETURN(std::optional<double> repetition, NumberField(body, "repetition_penalty"));
  if (repetition.has_value()) sampling.set_repetition_penalty(static_cast<float>(*repetition));
  ASSIGN_OR_RETURN(std::optional<double> presence, NumberField(body, "presence_penalty"));
  if (presence.has_value()) sampling.set_presence_penalty(static_cast<float>(*presence));
  ASSIGN_OR_RETURN(std::optional<double> frequency, NumberField(body, "frequency_penalty"));
  if (frequency.has_value()) sampling.set_frequency_penalty(static_cast<float>(*frequency));
  ASSIGN_OR_RETURN(std::optional<int64_t> seed, IntegerField(body, "seed"));
  if (seed.has_value()) sampling.set_seed(static_cast<uint64_t>(*seed));

  // Newer chat clients send max_completion_tokens instead.
  const char* max_tokens_name =
      chat && Field(body, "max_completion_tokens") != nullptr ? "max_completion_tokens"
                                                              : "max_tokens";
  ASSIGN_OR_RETURN(std::optional<int64_t> max_tokens,
                   IntegerField(body, max_tokens_name, 1, INT32_MAX));
  if (max_tokens.has_value()) sampling.set_max_new_tokens(static_cast<int32_t>(*max_tokens));

  if (const json* stop = Field(body, "stop"); stop != nullptr) {
    if (stop->is_string()) {
      sampling.add_stop_sequences(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (const json& s : *stop) {
        if (!s.is_string()) return BadField("stop", "stop must be a string or strings");
        sampling.add_stop_sequences(s.get<std::string>());
      }
    } else {
      return BadField("stop", "stop must be a string or strings");
    }
  }

  if (chat) {
    ASSIGN_OR_RETURN(std::optional<bool> logprobs, BoolField(body, "logprobs"));
    ASSIGN_OR_RETURN(std::optional<int64_t> top,
                     IntegerField(body, "top_logprobs", 0, kMaxTopLogprobs));
    if (top.has_value() && !logprobs.value_or(false)) {
      return BadField("top_logprobs", "top_logprobs needs logprobs: true");
    }
    sampling.set_top_logprobs(static_cast<int32_t>(top.value_or(0)));
  } else {
    ASSIGN_OR_RETURN(std::optional<int64_t> logprobs,
                     IntegerField(body, "logprobs", 0, kMaxTopLogprobs));
    sampling.set_top_logprobs(static_cast<int32_t>(logprobs.value_or(0)));
  }
  return sampling;
}

// A message's content: a string, or text parts joined.
absl::StatusOr<std::string> MessageContent(const json& message, int index) {
  const std::string param = absl::StrCat("messages[", index, "].content");
  const json* content = Field(message, "content");
  if (content == nullptr) return std::string();
  if (content->is_string()) return content->get<std::string>();
  if (!content->is_array()) return BadField(param, absl::StrCat(param, " must be a string or parts"));
  std::string text;
  for (const json& part : *content) {
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
        !part["text"].is_string()) {
      return BadField(param, absl::StrCat(param, ": only text parts are supported"));
    }
    text += part["text"].get<std::string>();
  }
  return text;
}

absl::StatusOr<google::protobuf::RepeatedPtrField<v1::ChatMessage>> MessagesField(
    const json& body) {
  const json* messages = Field(body, "messages");
  if (messages == nullptr || !messages->is_array()) {
    return BadField("messages", "messages must be an array of messages");
  }
  google::protobuf::RepeatedPtrField<v1::ChatMessage> out;
  for (int i = 0; i < static_cast<int>(messages->size()); ++i) {
    const json& message = (*messages)[i];
    const std::string param = absl::StrCat("messages[", i, "]");
    if (!message.is_object() || !message.contains("role") || !message["role"].is_string()) {
      return BadField(param, absl::StrCat(param, " must be an object with a string role"));
    }
    std::string role = message["role"].get<std::string>();
    // OpenAI's newer name for the system role.
    if (role == "developer") role = "system";
    v1::ChatMessage* m = out.Add();
    m->set_role(role);
    ASSIGN_OR_RETURN(*m->mutable_content(), MessageContent(message, i));
  }
  return out;
}

// The prompts of a completions request: one string or several.
absl::StatusOr<std::vector<std::string>> PromptField(const json& body) {
  const json* prompt = Field(body, "prompt");
  if (prompt != nullptr && prompt->is_string()) {
    return std::vector<std::string>{prompt->get<std::string>()};
  }
  if (prompt == nullptr || !prompt->is_array() || prompt->empty()) {
    return BadField("prompt", "prompt must be a string or a non-empty array of strings");
  }
  std::vector<std::string> prompts;
  for (const json& p : *prompt) {
    if (!p.is_string()) {
      return BadField("prompt", "prompt must be text: token id prompts are not supported");
    }
    prompts.push_back(p.get<std::string>());
  }
  return prompts;
}

std::string NewRequestId() {
  static absl::Mutex mu(absl::kConstInit);
  static absl::BitGen* gen = new absl::BitGen();
  absl::MutexLock lock(&mu);
  return absl::StrFormat("%016x%08x", absl::Uniform<uint64_t>(*gen),
                         absl::Uniform<uint32_t>(*gen));
}

const char* FinishReasonName(FinishReason reason) {
  return reason == FinishReason::kLength ? "length" : "stop";
}

// A finished choice that did not finish well, as the error to report.
absl::Status FailureOf(const GenerationResult& result) {
  if (result.finish_reason == FinishReason::kError) return result.status;
  return absl::UnavailableError("the server is shutting down");
}

// One generation request in flight: its choices' tokens as the scheduler
// reports them, and the OpenAI JSON they become.
class Generation {
 public:
  struct Shape {
    bool chat = false;
    bool stream = false;
    bool include_usage = false;
    bool logprobs = false;  // report them (top_logprobs may be 0)
    int choices_per_prompt = 1;
    std::string id, model;
    int64_t created = 0;
  };

  Generation(Shape shape, std::shared_ptr<const Tokenizer> tokenizer, int choices)
      : shape_(std::move(shape)), tokenizer_(std::move(tokenizer)) {
    choices_.resize(choices);
    pending_ = choices;
  }

  std::vector<GenerationCallbacks> Callbacks(const std::shared_ptr<Generation>& self) {
    std::vector<GenerationCallbacks> callbacks(choices_.size());
    for (int i = 0; i < static_cast<int>(choices_.size()); ++i) {
      callbacks[i].on_token = [self, i](const TokenEvent& event) {
        absl::MutexLock lock(&self->mu_);
        self->updates_.push_back({i, event, std::nullopt});
      };
      callbacks[i].on_done = [self, i](const GenerationResult& result) {
        absl::MutexLock lock(&self->mu_);
        self->updates_.push_back({i, std::nullopt, result});
      };
    }
    return callbacks;
  }

  void SetHandles(std::vector<std::shared_ptr<GenerationScheduler::Handle>> handles) {
    handles_ = std::move(handles);
  }
  void Cancel() {
    for (auto& handle : handles_) handle->Cancel();
  }

  // Writes the response as the choices progress: SSE chunks, or whitespace
  // then one JSON body. False when the client went away or a choice failed
  // (then the connection is cut short after an error event or body: the
  // 200 was sent already, and a cut makes sure no client takes it as a
  // success).
  bool Serve(httplib::DataSink& sink) {
    if (shape_.stream && shape_.chat) {
      for (int i = 0; i < static_cast<int>(choices_.size()); ++i) {
        json delta = {{"role", "assistant"}, {"content", ""}};
        if (!Write(sink, Event(Chunk(i, std::move(delta), json(nullptr), nullptr)))) return ClientGone();
      }
    }
    absl::Time last_write = absl::Now();
    while (true) {
      std::deque<Update> updates;
      {
        absl::MutexLock lock(&mu_);
        mu_.AwaitWithTimeout(absl::Condition(
                                 +[](std::deque<Update>* u) { return !u->empty(); }, &updates_),
                             kPoll);
        updates.swap(updates_);
      }
      if (!sink.is_writable()) return ClientGone();
      for (Update& update : updates) {
        Choice& choice = choices_[update.choice];
        if (update.token.has_value()) {
          choice.tokens.push_back(*update.token);
          if (shape_.stream) {
            if (!Write(sink, Event(TokenChunk(update.choice, *update.token)))) return ClientGone();
            last_write = absl::Now();
          }
          continue;
        }
        choice.result = std::move(update.done);
        --pending_;
        if (choice.result->finish_reason != FinishReason::kLength &&
            choice.result->finish_reason != FinishReason::kEos &&
            choice.result->finish_reason != FinishReason::kStopSequence) {
          return Failed(sink, FailureOf(*choice.result));
        }
        if (shape_.stream) {
          json empty = shape_.chat ? json::object() : json("");
          if (!Write(sink, Event(Chunk(update.choice, std::move(empty), json(nullptr),
                                       FinishReasonName(choice.result->finish_reason))))) {
            return ClientGone();
          }
          last_write = absl::Now();
        }
      }
      if (pending_ == 0) break;
      if (absl::Now() - last_write >= kHeartbeat) {
        // An SSE comment; whitespace before a JSON body.
        if (!Write(sink, shape_.stream ? ":\n\n" : " ")) return ClientGone();
        last_write = absl::Now();
      }
    }
    if (shape_.stream) {
      if (shape_.include_usage) {
        json chunk = ChunkHeader();
        chunk["choices"] = json::array();
        chunk["usage"] = Usage();
        if (!Write(sink, Event(chunk))) return ClientGone();
      }
      if (!Write(sink, "data: [DONE]\n\n")) return ClientGone();
    } else if (!Write(sink, Dump(Body()))) {
      return ClientGone();
    }
    sink.done();
    return true;
  }

 private:
  // Logged with the tokens generated so far, the work the hang-up saved.
  bool ClientGone() const {
    size_t generated = 0;
    for (const Choice& choice : choices_) generated += choice.tokens.size();
    LogInfo("openai_cancelled", {{"id", shape_.id},
                                 {"reason", "client went away"},
                                 {"completion_tokens", generated}});
    return false;
  }

  // The 200 went out already: the error follows as an event or as the body,
  // and the connection is cut before the response completes, so that no
  // client takes it for a success.
  bool Failed(httplib::DataSink& sink, const absl::Status& status) const {
    LogWarning("openai_failed", {{"id", shape_.id}, {"error", status.ToString()}});
    const json error = ErrorJson(status);
    Write(sink, shape_.stream ? Event(error) : Dump(error));
    return false;
  }

  struct Update {
    int choice;
    std::optional<TokenEvent> token;
    std::optional<GenerationResult> done;
  };
  struct Choice {
    std::vector<TokenEvent> tokens;
    std::optional<GenerationResult> result;
    int text_offset = 0;  // of the next streamed token (completions logprobs)
  };

  static bool Write(httplib::DataSink& sink, const std::string& data) {
    return sink.write(data.data(), data.size());
  }
  static std::string Event(const json& data) { return absl::StrCat("data: ", Dump(data), "\n\n"); }

  json ChunkHeader() const {
    return {{"id", shape_.id},
            {"object", shape_.chat ? "chat.completion.chunk" : "text_completion"},
            {"created", shape_.created},
            {"model", shape_.model}};
  }

  // A streamed chunk of choice `index`: `content` is the chat delta or the
  // completion's text.
  json Chunk(int index, json content, json logprobs, const char* finish_reason) const {
    json chunk = ChunkHeader();
    json choice = {{"index", index},
                   {"logprobs", std::move(logprobs)},
                   {"finish_reason", finish_reason != nullptr ? json(finish_reason) : json(nullptr)}};
    choice[shape_.chat ? "delta" : "text"] = std::move(content);
    chunk["choices"] = json::array({std::move(choice)});
    if (shape_.include_usage) chunk["usage"] = nullptr;
    return chunk;
  }

  json TokenChunk(int index, const TokenEvent& token) {
    json logprobs = nullptr;
    if (shape_.logprobs) {
      logprobs = shape_.chat ? ChatLogprobs(absl::MakeConstSpan(&token, 1))
                             : CompletionLogprobs(absl::MakeConstSpan(&token, 1),
                                                  &choices_[index].text_offset);
    }
    json content = shape_.chat ? json{{"content", token.text}} : json(token.text);
    return Chunk(index, std::move(content), std::move(logprobs), nullptr);
  }

  std::string Surface(int id) const { return std::string(tokenizer_->Surface(id)); }

  // Chat's {"content": [{"token", "logprob", "bytes", "top_logprobs"}]}.
  json ChatLogprobs(absl::Span<const TokenEvent> tokens) const {
    auto entry = [this](int id, float logprob) {
      const std::string surface = Surface(id);
      json bytes = json::array();
      for (unsigned char c : surface) bytes.push_back(c);
      return json{{"token", surface}, {"logprob", logprob}, {"bytes", std::move(bytes)}};
    };
    json content = json::array();
    for (const TokenEvent& token : tokens) {
      json item = entry(token.id, token.logprob);
      item["top_logprobs"] = json::array();
      for (const TokenLogprob& top : token.top_logprobs) {
        item["top_logprobs"].push_back(entry(top.id, top.logprob));
      }
      content.push_back(std::move(item));
    }
    return {{"content", std::move(content)}, {"refusal", nullptr}};
  }

  // The completions API's {"tokens", "token_logprobs", "top_logprobs",
  // "text_offset"}; *offset is where the first token's text starts.
  json CompletionLogprobs(absl::Span<const TokenEvent> tokens, int* offset) const {
    json out = {{"tokens", json::array()},
                {"token_logprobs", json::array()},
                {"top_logprobs", json::array()},
                {"text_offset", json::array()}};
    for (const TokenEvent& token : tokens) {
      out["tokens"].push_back(Surface(token.id));
      out["token_logprobs"].push_back(token.logprob);
      json top = json::object();
      for (const TokenLogprob& t : token.top_logprobs) top[Surface(t.id)] = t.logprob;
      out["top_logprobs"].push_back(std::move(top));
      out["text_offset"].push_back(*offset);
      *offset += static_cast<int>(token.text.size());
    }
    return out;
  }

  json Usage() const {
    int prompt = 0, completion = 0;
    for (size_t i = 0; i < choices_.size(); ++i) {
      // A prompt counts once however many choices it has.
      if (i % shape_.choices_per_prompt == 0) prompt += choices_[i].result->prompt_tokens;
      completion += static_cast<int>(choices_[i].result->token_ids.size());
    }
    return {{"prompt_tokens", prompt},
            {"completion_tokens", completion},
            {"total_tokens", prompt + completion}};
  }

  json Body() {
    json body = {{"id", shape_.id},
                 {"object", shape_.chat ? "chat.completion" : "text_completion"},
                 {"created", shape_.created},
                 {"model", shape_.model},
                 {"choices", json::array()}};
    for (int i = 0; i < static_cast<int>(choices_.size()); ++i) {
      Choice& choice = choices_[i];
      json logprobs = nullptr;
      if (shape_.logprobs) {
        int offset = 0;
        logprobs = shape_.chat ? ChatLogprobs(choice.tokens)
                               : CompletionLogprobs(choice.tokens, &offset);
      }
      json out = {{"index", i},
                  {"logprobs", std::move(logprobs)},
                  {"finish_reason", FinishReasonName(choice.result->finish_reason)}};
      if (shape_.chat) {
        out["message"] = {{"role", "assistant"}, {"content", choice.result->text}};
      } else {
        out["text"] = choice.result->text;
      }
      body["choices"].push_back(std::move(out));
    }
    body["usage"] = Usage();
    return body;
  }

  const Shape shape_;
  const std::shared_ptr<const Tokenizer> tokenizer_;
  std::vector<std::shared_ptr<GenerationScheduler::Handle>> handles_;
  // Serve's own.
  std::vector<Choice> choices_;
  int pending_ = 0;

  absl::Mutex mu_;
  std::deque<Update> updates_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

void OpenAiApi::Register(httplib::Server& server) const {
  // Bodies are read whole before routing; httplib's default has no bound.
  server.set_payload_max_length(kMaxBodyBytes);
  server.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    Generate(Endpoint::kCompletions, req, res);
  });
  server.Post("/v1/chat/completions",
              [this](const httplib::Request& req, httplib::Response& res) {
                Generate(Endpoint::kChat, req, res);
              });
  server.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    json data = json::array();
    for (const v1::ModelInfo& info : models_->Loaded()) {
      data.push_back({{"id", info.model()},
                      {"object", "model"},
                      {"created", 0},
                      {"owned_by", "wq"},
                      {"max_model_len", info.max_context()}});
    }
    SendJson(res, {{"object", "list"}, {"data", std::move(data)}});
  });
  server.Post("/tokenize", [this](const httplib::Request& req, httplib::Response& res) {
    Tokenize(req, res);
  });
  server.Post("/detokenize", [this](const httplib::Request& req, httplib::Response& res) {
    Detokenize(req, res);
  });
}

void OpenAiApi::Generate(Endpoint endpoint, const httplib::Request& request,
                         httplib::Response& response) const {
  const bool chat = endpoint == Endpoint::kChat;
  auto fail = [&response](const absl::Status& status) { SendError(response, status); };
  absl::StatusOr<json> body = ParseBody(request);
  if (!body.ok()) return fail(body.status());
  if (absl::Status s = RefuseUnsupported(*body, chat); !s.ok()) return fail(s);
  absl::StatusOr<std::string> model_name = ModelField(*body);
  if (!model_name.ok()) return fail(model_name.status());
  absl::StatusOr<v1::SamplingParams> sampling = SamplingFields(*body, chat);
  if (!sampling.ok()) return fail(sampling.status());
  absl::StatusOr<std::optional<bool>> stream = BoolField(*body, "stream");
  if (!stream.ok()) return fail(stream.status());
  absl::StatusOr<std::optional<int64_t>> n = IntegerField(*body, "n", 1, limits_.max_prompts);
  if (!n.ok()) return fail(n.status());
  bool include_usage = false;
  if (const json* options = Field(*body, "stream_options"); options != nullptr) {
    if (!options->is_object()) {
      return fail(BadField("stream_options", "stream_options must be an object"));
    }
    absl::StatusOr<std::optional<bool>> usage = BoolField(*options, "include_usage");
    if (!usage.ok()) return fail(WithParam(usage.status(), "stream_options.include_usage"));
    include_usage = usage->value_or(false);
  }

  std::vector<std::string> prompts;
  std::optional<google::protobuf::RepeatedPtrField<v1::ChatMessage>> messages;
  if (chat) {
    absl::StatusOr<google::protobuf::RepeatedPtrField<v1::ChatMessage>> parsed =
        MessagesField(*body);
    if (!parsed.ok()) return fail(parsed.status());
    messages = *std::move(parsed);
  } else {
    absl::StatusOr<std::vector<std::string>> parsed = PromptField(*body);
    if (!parsed.ok()) return fail(parsed.status());
    prompts = *std::move(parsed);
  }
  const int per_prompt = static_cast<int>(n->value_or(1));
  const int choices = static_cast<int>(chat ? 1 : prompts.size()) * per_prompt;
  if (choices > limits_.max_prompts) {
    return fail(BadField(chat ? "n" : "prompt",
                         absl::StrCat("at most ", limits_.max_prompts,
                                      " choices (prompts times n) per request, got ", choices)));
  }

  // Clients that leave cancel their request themselves (a write fails):
  // no deadline of its own.
  // OpenAI's temperature is 1 where neither the request nor the model's
  // generation_config.json sets one.
  absl::StatusOr<PreparedGeneration> prepared =
      PrepareGeneration(*models_, limits_, *model_name, *sampling, absl::InfiniteFuture(),
                        /*default_temperature=*/1.0f);
  if (!prepared.ok()) {
    const absl::Status& s = prepared.status();
    return fail(s.code() == absl::StatusCode::kInvalidArgument ? WithOpenAiNames(s)
                                                               : ModelLookupError(s));
  }
  if (chat) {
    absl::StatusOr<ChatPrompt> prompt =
        RenderConversation(*prepared->model, *messages, /*add_generation_prompt=*/true);
    if (!prompt.ok()) return fail(WithParam(prompt.status(), "messages"));
    prepared->params.add_bos = prompt->add_bos;
    prompts = {std::move(prompt->text)};
  }

  // Choice i is sample i % n of prompt i / n, each with its own seed so that
  // the n samples are independent (and reproducible for a given seed).
  std::vector<std::string> choice_prompts;
  std::vector<GenerationParams> choice_params;
  for (const std::string& prompt : prompts) {
    for (int j = 0; j < per_prompt; ++j) {
      choice_prompts.push_back(prompt);
      choice_params.push_back(prepared->params);
      choice_params.back().sampling.seed += j;
    }
  }

  Generation::Shape shape;
  shape.chat = chat;
  shape.stream = stream->value_or(false);
  shape.include_usage = shape.stream && include_usage;
  shape.logprobs = chat ? Field(*body, "logprobs") != nullptr && (*body)["logprobs"] == true
                        : Field(*body, "logprobs") != nullptr;
  shape.choices_per_prompt = per_prompt;
  const std::string request_id = response.has_header("x-request-id")
                                     ? response.get_header_value("x-request-id")
                                     : NewRequestId();
  shape.id = absl::StrCat(chat ? "chatcmpl-" : "cmpl-", request_id);
  shape.model = *model_name;
  shape.created = absl::ToUnixSeconds(absl::Now());
  auto generation =
      std::make_shared<Generation>(shape, prepared->model->tokenizer, choices);
  absl::StatusOr<std::vector<std::shared_ptr<GenerationScheduler::Handle>>> handles =
      prepared->model->scheduler->SubmitBatch(choice_prompts, choice_params,
                                              generation->Callbacks(generation));
  if (!handles.ok()) {
    const absl::Status& s = handles.status();
    return fail(s.code() == absl::StatusCode::kInvalidArgument
                    ? WithParam(s, chat ? "messages" : "prompt")
                    : s);
  }
  generation->SetHandles(*std::move(handles));
  LogInfo(chat ? "openai_chat" : "openai_completion",
          {{"model", *model_name}, {"choices", choices}, {"stream", shape.stream},
           {"id", shape.id}});

  // Chunked even when not streaming, so that a client that leaves is noticed
  // (a write fails) and its generation cancelled rather than run to the end.
  if (shape.stream) response.set_header("Cache-Control", "no-cache");
  response.set_chunked_content_provider(
      shape.stream ? "text/event-stream" : "application/json",
      [generation](size_t, httplib::DataSink& sink) { return generation->Serve(sink); },
      // Whatever ended the response: nothing left to generate for it.
      [generation](bool) { generation->Cancel(); });
}

void OpenAiApi::Tokenize(const httplib::Request& request, httplib::Response& response) const {
  auto fail = [&response](const absl::Status& status) { SendError(response, status); };
  absl::StatusOr<json> body = ParseBody(request);
  if (!body.ok()) return fail(body.status());
  absl::StatusOr<std::shared_ptr<LoadedModel>> model = BodyModel(*models_, *body);
  if (!model.ok()) return fail(model.status());
  absl::StatusOr<std::optional<bool>> add_special = BoolField(*body, "add_special_tokens");
  if (!add_special.ok()) return fail(add_special.status());

  std::string text;
  bool add_bos = add_special->value_or(true);
  if (Field(*body, "messages") != nullptr) {
    absl::StatusOr<google::protobuf::RepeatedPtrField<v1::ChatMessage>> messages =
        MessagesField(*body);
    if (!messages.ok()) return fail(messages.status());
    absl::StatusOr<std::optional<bool>> generation_prompt =
        BoolField(*body, "add_generation_prompt");
    if (!generation_prompt.ok()) return fail(generation_prompt.status());
    absl::StatusOr<ChatPrompt> prompt =
        RenderConversation(**model, *messages, generation_prompt->value_or(true));
    if (!prompt.ok()) return fail(WithParam(prompt.status(), "messages"));
    text = std::move(prompt->text);
    add_bos = add_bos && prompt->add_bos;
  } else {
    const json* prompt = Field(*body, "prompt");
    if (prompt == nullptr || !prompt->is_string()) {
      return fail(BadField("prompt", "prompt must be a string (or pass messages)"));
    }
    text = prompt->get<std::string>();
  }
  absl::StatusOr<std::vector<int>> ids = (*model)->tokenizer->Encode(text, add_bos);
  if (!ids.ok()) return fail(ids.status());
  SendJson(response, {{"tokens", *ids},
                      {"count", ids->size()},
                      {"max_model_len", (*model)->info.max_context()}});
}

void OpenAiApi::Detokenize(const httplib::Request& request, httplib::Response& response) const {
  auto fail = [&response](const absl::Status& status) { SendError(response, status); };
  absl::StatusOr<json> body = ParseBody(request);
  if (!body.ok()) return fail(body.status());
  absl::StatusOr<std::shared_ptr<LoadedModel>> model = BodyModel(*models_, *body);
  if (!model.ok()) return fail(model.status());
  const json* tokens = Field(*body, "tokens");
  std::vector<int> ids;
  if (tokens == nullptr || !tokens->is_array()) {
    return fail(BadField("tokens", "tokens must be an array of token ids"));
  }
  for (const json& id : *tokens) {
    if (!id.is_number_integer() || id.get<int64_t>() < INT32_MIN ||
        id.get<int64_t>() > INT32_MAX) {
      return fail(BadField("tokens", "tokens must be an array of token ids"));
    }
    ids.push_back(id.get<int>());
  }
  absl::StatusOr<std::string> text = DetokenizeIds(**model, ids, /*skip_special_tokens=*/true);
  if (!text.ok()) return fail(WithParam(text.status(), "tokens"));
  SendJson(response, {{"prompt", *text}});
}

}  // namespace wq
