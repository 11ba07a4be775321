// SIGTERM drains the inference service: new requests are refused at once,
// streams in flight finish within --shutdown_grace, those still running when
// it ends fail UNAVAILABLE, and the process exits 0 either way. The model is
// a synthetic one large enough that a long stream takes seconds.
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include "bench/synthetic_model.h"
#include "gtest/gtest.h"
#include "tests/server_process.h"
#include "wq/v1/inference.grpc.pb.h"

namespace wq::e2e {
namespace {

constexpr char kModel[] = "slow";

class ShutdownTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string runfiles = std::string(std::getenv("TEST_SRCDIR")) + "/wq";
    dir_ = new std::string(std::string(std::getenv("TEST_TMPDIR")) + "/shutdown");
    std::filesystem::create_directories(*dir_ + "/models");
    std::filesystem::create_directories(*dir_ + "/artifacts");
    LlamaConfig config;
    config.hidden_size = 512;
    config.intermediate_size = 1408;
    config.num_hidden_layers = 4;
    config.num_attention_heads = 8;
    config.num_key_value_heads = 8;
    config.head_dim = 64;
    config.vocab_size = 512;  // stories260K's tokenizer
    config.max_position_embeddings = 2048;
    config.torch_dtype = "float32";
    const absl::Status written = bench::WriteSyntheticModel(
        config, {}, runfiles + "/testdata/models/stories260K/tokenizer.model",
        *dir_ + "/models/" + kModel);
    ASSERT_TRUE(written.ok()) << written;
  }

  // A server with `grace`, the synthetic model preloaded.
  std::unique_ptr<ServerProcess> Start(const std::string& name, const std::string& grace) {
    const std::string runfiles = std::string(std::getenv("TEST_SRCDIR")) + "/wq";
    auto server = std::make_unique<ServerProcess>(
        name, runfiles + "/inference_service/inference_service",
        std::vector<std::string>{"--model_root=" + *dir_ + "/models",
                                 "--artifact_root=" + *dir_ + "/artifacts", "--threads=1",
                                 std::string("--preload=") + kModel,
                                 "--shutdown_grace=" + grace, "--http_listen=127.0.0.1:0",
                                 "--http_port_file=" + *dir_ + "/" + name + ".http_port"},
        *dir_);
    const int port = server->WaitForPort(std::chrono::seconds(60));
    address_ = "127.0.0.1:" + std::to_string(port);
    return server;
  }

  std::unique_ptr<v1::InferenceService::Stub> Stub() const {
    return v1::InferenceService::NewStub(
        grpc::CreateChannel(address_, grpc::InsecureChannelCredentials()));
  }

  static v1::GenerateStreamRequest LongStream(int max_new_tokens) {
    v1::GenerateStreamRequest request;
    request.set_model(kModel);
    request.set_prompt("Once upon a time");
    request.mutable_sampling()->set_temperature(0);
    request.mutable_sampling()->set_max_new_tokens(max_new_tokens);
    return request;
  }

  static std::string* dir_;
  std::string address_;
};

std::string* ShutdownTest::dir_ = nullptr;

void SetDeadline(grpc::ClientContext* context) {
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
}

TEST_F(ShutdownTest, InFlightStreamFinishesNewRequestsRefused) {
  std::unique_ptr<ServerProcess> server = Start("drain", "60s");
  std::string http_port;
  {
    std::ifstream in(*dir_ + "/drain.http_port");
    in >> http_port;
  }
  grpc::ClientContext context;
  SetDeadline(&context);
  constexpr int kTokens = 300;
  auto reader = Stub()->GenerateStream(&context, LongStream(kTokens));
  v1::GenerateStreamResponse event;
  ASSERT_TRUE(reader->Read(&event));
  ASSERT_TRUE(event.has_token());
  const auto signalled = std::chrono::steady_clock::now();
  server->Terminate();

  // Refused while the stream is still generating.
  grpc::Status refused;
  do {
    grpc::ClientContext load_context;
    SetDeadline(&load_context);
    v1::GenerateRequest request;
    request.set_model(kModel);
    request.add_prompts("Once");
    request.mutable_sampling()->set_max_new_tokens(2);
    v1::GenerateResponse response;
    refused = Stub()->Generate(&load_context, request, &response);
  } while (refused.ok() && std::chrono::steady_clock::now() - signalled < std::chrono::seconds(5));
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE) << refused.error_message();
  httplib::Client http("127.0.0.1", std::stoi(http_port));
  httplib::Result health = http.Get("/health");
  ASSERT_TRUE(health) << "HTTP listener gone during the drain";
  EXPECT_EQ(health->status, 503);

  int tokens = 1;
  bool ended = false;
  while (reader->Read(&event)) {
    if (event.has_token()) ++tokens;
    if (event.has_end()) {
      ended = true;
      EXPECT_TRUE(event.end().finish_reason() == v1::LENGTH ||
                  event.end().finish_reason() == v1::EOS);
      EXPECT_EQ(event.end().usage().completion_tokens(), tokens);
    }
  }
  const grpc::Status status = reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(ended);
  EXPECT_GT(tokens, 1) << "the stream ended at the signal";
  EXPECT_LE(tokens, kTokens);
  EXPECT_EQ(server->Wait(std::chrono::seconds(30)), 0) << server->Log();
  EXPECT_NE(server->Log().find("\"shutdown_done\""), std::string::npos) << server->Log();
}

TEST_F(ShutdownTest, GraceOverFailsStreamUnavailableAndExitsZero) {
  std::unique_ptr<ServerProcess> server = Start("grace_over", "300ms");
  grpc::ClientContext context;
  SetDeadline(&context);
  // Far more than 300 ms of decoding on one thread.
  auto reader = Stub()->GenerateStream(&context, LongStream(1500));
  v1::GenerateStreamResponse event;
  ASSERT_TRUE(reader->Read(&event));
  const auto signalled = std::chrono::steady_clock::now();
  server->Terminate();
  bool ended = false;
  while (reader->Read(&event)) ended = ended || event.has_end();
  const grpc::Status status = reader->Finish();
  EXPECT_FALSE(ended);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_NE(status.error_message().find("shut down"), std::string::npos)
      << status.error_message();
  EXPECT_EQ(server->Wait(std::chrono::seconds(30)), 0) << server->Log();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - signalled).count();
  EXPECT_LT(seconds, 5.0) << "grace 300 ms, but the exit took " << seconds << " s";
  EXPECT_NE(server->Log().find("\"drain_incomplete\""), std::string::npos) << server->Log();
}

}  // namespace
}  // namespace wq::e2e
