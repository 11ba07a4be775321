// What the end-to-end tests do as clients of a real inference_service:
// stubs, deadlines, greedy sampling, LoadModel, a user turn, and a
// GenerateStream / ChatStream read to its end.
#ifndef WQ_TESTS_E2E_CLIENT_H_
#define WQ_TESTS_E2E_CLIENT_H_

#include <algorithm>
#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include <grpcpp/grpcpp.h>

#include "wq/v1/inference.grpc.pb.h"

namespace wq::e2e {

// A stub on a plaintext channel to `address` ("127.0.0.1:port").
inline std::unique_ptr<v1::InferenceService::Stub> InferenceStub(const std::string& address) {
  return v1::InferenceService::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
}

inline void SetDeadline(grpc::ClientContext* context, int seconds = 60) {
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
}

// Temperature 0, at most `max_new_tokens`.
inline v1::SamplingParams GreedySampling(int max_new_tokens) {
  v1::SamplingParams sampling;
  sampling.set_temperature(0);
  sampling.set_max_new_tokens(max_new_tokens);
  return sampling;
}

inline grpc::Status LoadModel(v1::InferenceService::Stub& stub, const std::string& model,
                              v1::ModelInfo* info = nullptr) {
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::LoadModelRequest request;
  request.set_model(model);
  v1::ModelInfo ignored;
  return stub.LoadModel(&context, request, info != nullptr ? info : &ignored);
}

// One user message: a conversation's messages.
inline google::protobuf::RepeatedPtrField<v1::ChatMessage> UserSays(const std::string& text) {
  google::protobuf::RepeatedPtrField<v1::ChatMessage> messages;
  v1::ChatMessage* message = messages.Add();
  message->set_role("user");
  message->set_content(text);
  return messages;
}

// What a GenerateStream or ChatStream delivered, read to its end.
struct StreamedGeneration {
  std::string text;  // the tokens' texts, in order
  int tokens = 0;
  float max_logprob = -1e30f;  // the largest token logprob seen
  std::optional<v1::StreamEnd> end;
  int after_end = 0;  // messages after the end (there should be none)
  grpc::Status status;  // Finish()'s
};

inline StreamedGeneration ReadStream(grpc::ClientReader<v1::GenerateStreamResponse>& reader) {
  StreamedGeneration out;
  v1::GenerateStreamResponse event;
  while (reader.Read(&event)) {
    if (out.end.has_value()) {
      ++out.after_end;
    } else if (event.has_token()) {
      out.text += event.token().text();
      ++out.tokens;
      out.max_logprob = std::max(out.max_logprob, event.token().logprob());
    } else if (event.has_end()) {
      out.end = event.end();
    }
  }
  out.status = reader.Finish();
  return out;
}

}  // namespace wq::e2e

#endif  // WQ_TESTS_E2E_CLIENT_H_
