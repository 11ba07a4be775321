// wqctl commands of the inference service.
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "cli/common.h"
#include "wq/v1/inference.grpc.pb.h"

// generate
ABSL_FLAG(std::string, prompt, "", "prompt text");
ABSL_FLAG(int, max_new_tokens, 0, "0 = server default");
// Unset, these four are the model's generation_config.json defaults, else
// the server's (greedy, no top-k, top-p 1, no penalty).
ABSL_FLAG(std::optional<double>, temperature, std::nullopt, "0 = greedy");
ABSL_FLAG(std::optional<int>, top_k, std::nullopt, "0 = no limit");
ABSL_FLAG(std::optional<double>, top_p, std::nullopt, "nucleus mass in (0, 1]");
ABSL_FLAG(std::optional<double>, repetition_penalty, std::nullopt, "> 0; 1 = off");
ABSL_FLAG(int64_t, seed, -1, "-1 = random");
ABSL_FLAG(std::vector<std::string>, stop, {}, "stop sequences, comma-separated");
// chat (with --prompt as the user's message)
ABSL_FLAG(std::string, system, "", "system message; empty: none");
// tokenize
ABSL_FLAG(std::vector<std::string>, ids, {},
          "token ids, comma-separated, to turn into text instead of --prompt into ids");
ABSL_FLAG(bool, add_special_tokens, true, "tokenize --prompt with the tokenizer's BOS");
ABSL_FLAG(bool, skip_special_tokens, true, "leave control tokens out of --ids' text");

namespace wq {

int Load() {
  v1::LoadModelRequest request;
  request.set_model(absl::GetFlag(FLAGS_model));
  if (request.model().empty()) return UsageError("load needs --model=ID");
  auto stub = v1::InferenceService::NewStub(Connect(true));
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::ModelInfo info;
  grpc::Status status = stub->LoadModel(&context, request, &info);
  if (!status.ok()) return RpcError("LoadModel", status);
  if (JsonOutput()) {
    PrintJson(info);
    return kOk;
  }
  std::cout << absl::StrFormat("loaded %s (%s, %d weight bytes, %.3f bits/weight, context %d)\n",
                               info.model(), info.quantized() ? "quantized" : "fp32",
                               info.weight_bytes(), info.bits_per_weight(),
                               info.max_context());
  return kOk;
}

int Models() {
  auto stub = v1::InferenceService::NewStub(Connect(true));
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::ListModelsResponse response;
  grpc::Status status = stub->ListModels(&context, v1::ListModelsRequest(), &response);
  if (!status.ok()) return RpcError("ListModels", status);
  if (JsonOutput()) {
    PrintJson(response);
    return kOk;
  }
  for (const v1::ModelInfo& info : response.loaded()) {
    std::cout << "loaded    " << info.model() << "\n";
  }
  for (const std::string& name : response.available()) {
    std::cout << "available " << name << "\n";
  }
  return kOk;
}

namespace {

v1::SamplingParams SamplingFromFlags() {
  v1::SamplingParams s;
  if (const auto temperature = absl::GetFlag(FLAGS_temperature)) {
    s.set_temperature(static_cast<float>(*temperature));
  }
  if (const auto top_k = absl::GetFlag(FLAGS_top_k)) s.set_top_k(*top_k);
  if (const auto top_p = absl::GetFlag(FLAGS_top_p)) s.set_top_p(static_cast<float>(*top_p));
  if (const auto penalty = absl::GetFlag(FLAGS_repetition_penalty)) {
    s.set_repetition_penalty(static_cast<float>(*penalty));
  }
  if (absl::GetFlag(FLAGS_seed) >= 0) s.set_seed(absl::GetFlag(FLAGS_seed));
  if (absl::GetFlag(FLAGS_max_new_tokens) != 0) {
    s.set_max_new_tokens(absl::GetFlag(FLAGS_max_new_tokens));
  }
  for (const std::string& stop : absl::GetFlag(FLAGS_stop)) s.add_stop_sequences(stop);
  return s;
}

// Prints the tokens as they come (with --output=json each message as a
// line), then the summary on stderr.
int PrintStream(const char* rpc,
                grpc::ClientReaderInterface<v1::GenerateStreamResponse>& reader) {
  v1::GenerateStreamResponse event;
  std::optional<v1::StreamEnd> end;
  while (reader.Read(&event)) {
    if (JsonOutput()) {
      PrintJson(event);
    } else if (event.has_token()) {
      std::cout << event.token().text() << std::flush;
    }
    if (event.has_end()) end = event.end();
  }
  if (!JsonOutput()) std::cout << "\n";
  grpc::Status status = reader.Finish();
  if (!status.ok()) return RpcError(rpc, status);
  if (!end.has_value()) {
    std::cerr << "wqctl: stream ended without a summary\n";
    return kFailed;
  }
  std::cerr << absl::StrFormat(
      "finish=%s prompt_tokens=%d completion_tokens=%d ttft=%.1fms total=%.1fms %.1f tok/s\n",
      Lower(v1::FinishReason_Name(end->finish_reason())), end->usage().prompt_tokens(),
      end->usage().completion_tokens(), end->timings().time_to_first_token_ms(),
      end->timings().total_ms(), end->timings().decode_tokens_per_second());
  return end->finish_reason() == v1::CANCELLED ? kFailed : kOk;
}

}  // namespace

int Generate() {
  v1::GenerateStreamRequest request;
  request.set_model(absl::GetFlag(FLAGS_model));
  if (request.model().empty()) return UsageError("generate needs --model=ID");
  request.set_prompt(absl::GetFlag(FLAGS_prompt));
  *request.mutable_sampling() = SamplingFromFlags();
  auto stub = v1::InferenceService::NewStub(Connect(true));
  grpc::ClientContext context;
  SetDeadline(&context);
  auto reader = stub->GenerateStream(&context, request);
  return PrintStream("GenerateStream", *reader);
}

int Chat() {
  v1::ChatStreamRequest request;
  request.set_model(absl::GetFlag(FLAGS_model));
  if (request.model().empty()) return UsageError("chat needs --model=ID");
  if (absl::GetFlag(FLAGS_prompt).empty()) {
    return UsageError("chat needs --prompt=TEXT (the user's message)");
  }
  if (!absl::GetFlag(FLAGS_system).empty()) {
    v1::ChatMessage* system = request.add_messages();
    system->set_role("system");
    system->set_content(absl::GetFlag(FLAGS_system));
  }
  v1::ChatMessage* user = request.add_messages();
  user->set_role("user");
  user->set_content(absl::GetFlag(FLAGS_prompt));
  *request.mutable_sampling() = SamplingFromFlags();
  auto stub = v1::InferenceService::NewStub(Connect(true));
  grpc::ClientContext context;
  SetDeadline(&context);
  auto reader = stub->ChatStream(&context, request);
  return PrintStream("ChatStream", *reader);
}

int Tokenize() {
  const std::string model = absl::GetFlag(FLAGS_model);
  if (model.empty()) return UsageError("tokenize needs --model=ID");
  auto stub = v1::InferenceService::NewStub(Connect(true));
  grpc::ClientContext context;
  SetDeadline(&context);
  if (!absl::GetFlag(FLAGS_ids).empty()) {
    v1::DetokenizeRequest request;
    request.set_model(model);
    for (const std::string& id : absl::GetFlag(FLAGS_ids)) {
      int value = 0;
      if (!absl::SimpleAtoi(id, &value)) {
        return UsageError("--ids must be comma-separated integers, got \"" + id + "\"");
      }
      request.add_ids(value);
    }
    request.set_skip_special_tokens(absl::GetFlag(FLAGS_skip_special_tokens));
    v1::DetokenizeResponse response;
    grpc::Status status = stub->Detokenize(&context, request, &response);
    if (!status.ok()) return RpcError("Detokenize", status);
    if (JsonOutput()) {
      PrintJson(response);
    } else {
      std::cout << response.text() << "\n";
    }
    return kOk;
  }
  v1::TokenizeRequest request;
  request.set_model(model);
  request.set_text(absl::GetFlag(FLAGS_prompt));
  request.set_add_special_tokens(absl::GetFlag(FLAGS_add_special_tokens));
  v1::TokenizeResponse response;
  grpc::Status status = stub->Tokenize(&context, request, &response);
  if (!status.ok()) return RpcError("Tokenize", status);
  if (JsonOutput()) {
    PrintJson(response);
  } else {
    std::cout << absl::StrJoin(response.ids(), ",") << "\n";
  }
  return kOk;
}

int Info() {
  auto stub = v1::InferenceService::NewStub(Connect(true));
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::ServerInfo info;
  grpc::Status status = stub->GetServerInfo(&context, v1::GetServerInfoRequest(), &info);
  if (!status.ok()) return RpcError("GetServerInfo", status);
  if (JsonOutput()) {
    PrintJson(info);
  } else {
    std::cout << info.DebugString();
  }
  return kOk;
}

}  // namespace wq
