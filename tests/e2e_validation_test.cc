// Request validation on the real inference server (server/request_validation.h):
// invalid UTF-8 in any string field and oversized ids or prompts get
// INVALID_ARGUMENT naming the field, not INTERNAL or RESOURCE_EXHAUSTED.
#include <chrono>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/e2e_client.h"
#include "tests/e2e_support.h"
#include "wq/v1/inference.grpc.pb.h"

namespace wq::e2e {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kInvalidUtf8[] = "caf\xc3\x28";  // a lead byte without its continuation

std::unique_ptr<v1::InferenceService::Stub> Stub() { return InferenceStub(GetServers().inference); }

std::unique_ptr<grpc::ClientContext> Context() {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  return context;
}

void ExpectInvalidArgument(const grpc::Status& status, const std::string& names) {
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr(names));
}

TEST(E2eValidationTest, InvalidUtf8IsInvalidArgumentNamingTheField) {
  v1::GenerateResponse generated;
  v1::GenerateRequest generate;
  generate.set_model(kInvalidUtf8);
  ExpectInvalidArgument(Stub()->Generate(Context().get(), generate, &generated),
                        "model is not valid UTF-8");
  generate.set_model("stories260K");
  generate.add_prompts("fine");
  generate.add_prompts(kInvalidUtf8);
  ExpectInvalidArgument(Stub()->Generate(Context().get(), generate, &generated),
                        "prompts[1] is not valid UTF-8");
  generate.clear_prompts();
  generate.add_prompts("fine");
  generate.mutable_sampling()->add_stop_sequences(kInvalidUtf8);
  ExpectInvalidArgument(Stub()->Generate(Context().get(), generate, &generated),
                        "sampling.stop_sequences[0] is not valid UTF-8");

  v1::ChatRequest chat;
  chat.set_model("stories260K");
  v1::Conversation* conversation = chat.add_conversations();
  conversation->add_messages()->set_content("hello");
  v1::ChatMessage* bad = conversation->add_messages();
  bad->set_role("user");
  bad->set_content(kInvalidUtf8);
  v1::ChatResponse chatted;
  ExpectInvalidArgument(Stub()->Chat(Context().get(), chat, &chatted),
                        "conversations[0].messages[1].content is not valid UTF-8");

  v1::GenerateStreamRequest stream_request;
  stream_request.set_model("stories260K");
  stream_request.set_prompt(kInvalidUtf8);
  auto context = Context();
  auto stream = Stub()->GenerateStream(context.get(), stream_request);
  v1::GenerateStreamResponse message;
  EXPECT_FALSE(stream->Read(&message));
  ExpectInvalidArgument(stream->Finish(), "prompt is not valid UTF-8");

  v1::TokenizeRequest tokenize;
  tokenize.set_model("stories260K");
  tokenize.set_text(kInvalidUtf8);
  v1::TokenizeResponse tokens;
  ExpectInvalidArgument(Stub()->Tokenize(Context().get(), tokenize, &tokens),
                        "text is not valid UTF-8");
}

TEST(E2eValidationTest, LongIdsAndPromptsAreInvalidArgument) {
  v1::LoadModelRequest load;
  load.set_model(std::string(257, 'a'));
  v1::ModelInfo info;
  ExpectInvalidArgument(Stub()->LoadModel(Context().get(), load, &info),
                        "model is 257 bytes; at most 256");
  // Far past gRPC's 8 KiB metadata limit, had the id been echoed in an error.
  load.set_model(std::string(100000, 'a'));
  ExpectInvalidArgument(Stub()->LoadModel(Context().get(), load, &info), "model is 100000 bytes");
  // Within the limit, but one component past the file system's NAME_MAX.
  load.set_model(std::string(256, 'a'));
  grpc::Status status = Stub()->LoadModel(Context().get(), load, &info);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("longer than the file system allows"));

  v1::GenerateRequest generate;
  generate.set_model("stories260K");
  generate.add_prompts(std::string((1 << 20) + 1, 'a'));
  v1::GenerateResponse generated;
  ExpectInvalidArgument(Stub()->Generate(Context().get(), generate, &generated),
                        "prompts[0] is 1048577 bytes; at most 1048576");
}

// The field number through which the server hands a refusal to its callback
// methods (server/request_validation.h) is not the client's to send.
TEST(E2eValidationTest, TheReservedRefusalFieldIsRefused) {
  v1::GenerateRequest generate;
  generate.set_model("stories260K");
  generate.add_prompts("fine");
  generate.GetReflection()->MutableUnknownFields(&generate)->AddLengthDelimited(
      (1 << 29) - 1, "forged refusal");
  v1::GenerateResponse generated;
  ExpectInvalidArgument(Stub()->Generate(Context().get(), generate, &generated),
                        "is reserved");
}

TEST(E2eValidationTest, ErrorsNameNoServerPaths) {
  v1::LoadModelRequest load;
  v1::ModelInfo info;
  for (const std::string& model :
       {std::string("org/missing"), std::string("missing"), std::string(256, 'b')}) {
    load.set_model(model);
    const grpc::Status status = Stub()->LoadModel(Context().get(), load, &info);
    EXPECT_FALSE(status.ok());
    EXPECT_THAT(status.error_message(), Not(HasSubstr(GetServers().model_root)));
    EXPECT_THAT(status.error_message(), Not(HasSubstr(GetServers().artifact_root)));
    EXPECT_THAT(status.error_message(), Not(HasSubstr(GetServers().dir)));
  }
}

}  // namespace
}  // namespace wq::e2e
