// End-to-end tests of wq.v1.InferenceService (servers: e2e_test.cc).
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "common/kernels/cpu_features.h"
#include "gtest/gtest.h"
#include "wq/v1/inference.grpc.pb.h"
#include "tests/e2e_support.h"
#include "tests/rounded_checkpoint.h"

namespace wq::e2e {
namespace {

constexpr char kOnce[] = "Once upon a time";
constexpr char kGolden[] = ", there was a little girl named Lily";

std::unique_ptr<v1::InferenceService::Stub> Stub() {
  return v1::InferenceService::NewStub(
      grpc::CreateChannel(GetServers().inference, grpc::InsecureChannelCredentials()));
}

void SetDeadline(grpc::ClientContext* context, int seconds = 60) {
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
}

v1::SamplingParams Greedy(int max_new_tokens) {
  v1::SamplingParams sampling;
  sampling.set_temperature(0);
  sampling.set_max_new_tokens(max_new_tokens);
  return sampling;
}

grpc::Status Load(const std::string& model, v1::ModelInfo* info) {
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::LoadModelRequest request;
  request.set_model(model);
  return Stub()->LoadModel(&context, request, info);
}

grpc::Status Generate(const std::string& model, const std::vector<std::string>& prompts,
                      const v1::SamplingParams& sampling, v1::GenerateResponse* response) {
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::GenerateRequest request;
  request.set_model(model);
  for (const std::string& p : prompts) request.add_prompts(p);
  *request.mutable_sampling() = sampling;
  return Stub()->Generate(&context, request, response);
}

// The loaded quantized artifact's name.
std::string LoadedArtifact() {
  const std::string id = QuantizedArtifactId();
  v1::ModelInfo info;
  grpc::Status status = Load(id, &info);  // idempotent
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(info.quantized());
  EXPECT_EQ(info.source_model_id(), "stories260K");
  return id;
}

TEST(E2eInferenceTest, BatchOfFourMatchesSinglePrompt) {
  const std::string model = LoadedArtifact();
  ASSERT_FALSE(model.empty());
  const std::vector<std::string> prompts = {kOnce, "The cat", "Tom had a big", "One day"};
  v1::GenerateResponse batch;
  grpc::Status status = Generate(model, prompts, Greedy(24), &batch);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(batch.results_size(), 4);
  for (const v1::GenerationResult& r : batch.results()) {
    EXPECT_FALSE(r.text().empty());
    EXPECT_GT(r.usage().prompt_tokens(), 0);
    EXPECT_GT(r.usage().completion_tokens(), 0);
    EXPECT_LE(r.usage().completion_tokens(), 24);
    EXPECT_EQ(r.token_ids_size(), r.usage().completion_tokens());
    EXPECT_TRUE(r.finish_reason() == v1::LENGTH || r.finish_reason() == v1::EOS);
  }
  v1::GenerateResponse single;
  status = Generate(model, {kOnce}, Greedy(24), &single);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(single.results_size(), 1);
  // Batching must not change greedy output.
  EXPECT_EQ(batch.results(0).text(), single.results(0).text());
  EXPECT_EQ(batch.results(0).token_ids_size(), single.results(0).token_ids_size());
}

v1::GenerateStreamRequest GreedyStream(const std::string& model, int max_new_tokens) {
  v1::GenerateStreamRequest request;
  request.set_model(model);
  request.set_prompt(kOnce);
  *request.mutable_sampling() = Greedy(max_new_tokens);
  return request;
}

TEST(E2eInferenceTest, StreamTokensThenEnd) {
  const std::string model = LoadedArtifact();
  grpc::ClientContext context;
  SetDeadline(&context);
  auto reader = Stub()->GenerateStream(&context, GreedyStream(model, 24));
  v1::GenerateStreamResponse event;
  std::string text;
  int tokens = 0;
  bool ended = false;
  while (reader->Read(&event)) {
    ASSERT_FALSE(ended) << "message after End";
    if (event.has_token()) {
      text += event.token().text();
      ++tokens;
      EXPECT_LE(event.token().logprob(), 0);
    } else {
      ASSERT_TRUE(event.has_end());
      ended = true;
      EXPECT_EQ(event.end().finish_reason(), v1::LENGTH);
      EXPECT_EQ(event.end().text(), text);
      EXPECT_EQ(event.end().usage().completion_tokens(), tokens);
      EXPECT_GT(event.end().usage().prompt_tokens(), 0);
    }
  }
  grpc::Status status = reader->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(ended);
  EXPECT_EQ(tokens, 24);
}

TEST(E2eInferenceTest, CancelMidStreamKeepsServing) {
  const std::string model = LoadedArtifact();
  grpc::ClientContext context;
  SetDeadline(&context);
  // Long enough to be cut short.
  auto reader = Stub()->GenerateStream(&context, GreedyStream(model, 256));
  v1::GenerateStreamResponse event;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(reader->Read(&event));
    ASSERT_TRUE(event.has_token());
  }
  context.TryCancel();
  while (reader->Read(&event)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);

  v1::GenerateResponse after;
  grpc::Status status = Generate(model, {kOnce}, Greedy(8), &after);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(after.results_size(), 1);
  EXPECT_FALSE(after.results(0).text().empty());
}

TEST(E2eInferenceTest, GenerateRejectsBadRequests) {
  const std::string model = LoadedArtifact();
  v1::GenerateResponse response;
  grpc::Status status = Generate(model, {}, Greedy(8), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("prompts is empty"), std::string::npos)
      << status.error_message();

  v1::SamplingParams top_p = Greedy(8);
  top_p.set_top_p(1.5f);
  status = Generate(model, {kOnce}, top_p, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("top_p"), std::string::npos);

  status = Generate(model, {kOnce}, Greedy(100000), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("256"), std::string::npos)
      << "should name the cap: " << status.error_message();

  status = Generate(model, {kOnce}, Greedy(0), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  v1::SamplingParams negative = Greedy(8);
  negative.set_temperature(-1);
  status = Generate(model, {kOnce}, negative, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  status = Generate("no-such-model", {kOnce}, Greedy(8), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);

  status = Generate("", {kOnce}, Greedy(8), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  v1::ModelInfo info;
  EXPECT_EQ(Load("../etc", &info).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Load("no-such-model", &info).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST(E2eInferenceTest, Fp32ModelGivesGoldenContinuation) {
  // Unloaded, a known model asks for LoadModel first.
  {
    grpc::ClientContext context;
    SetDeadline(&context);
    v1::UnloadModelRequest request;
    request.set_model("stories260K");
    v1::UnloadModelResponse response;
    Stub()->UnloadModel(&context, request, &response);  // may not be loaded
  }
  v1::GenerateResponse response;
  grpc::Status status = Generate("stories260K", {kOnce}, Greedy(24), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(status.error_message().find("LoadModel"), std::string::npos);

  v1::ModelInfo info;
  status = Load("stories260K", &info);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_FALSE(info.quantized());
  EXPECT_GT(info.vocab_size(), 0);
  status = Generate("stories260K", {kOnce}, Greedy(24), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(response.results_size(), 1);
  EXPECT_EQ(response.results(0).text().rfind(kGolden, 0), 0u) << response.results(0).text();

  grpc::ClientContext context;
  SetDeadline(&context);
  v1::ListModelsResponse models;
  ASSERT_TRUE(Stub()->ListModels(&context, v1::ListModelsRequest(), &models).ok());
  bool loaded = false;
  for (const v1::ModelInfo& m : models.loaded()) loaded |= m.model() == "stories260K";
  EXPECT_TRUE(loaded);
}

// A bf16 or f16 checkpoint is served as stored: 16 bits per weight, about
// half the fp32 model's weight bytes, and the fp32 model's greedy
// continuation.
void ExpectServedAsStored(DType dtype) {
  const Servers& servers = GetServers();
  const std::string name = "stories260K-" + std::string(DTypeName(dtype));
  ASSERT_TRUE(WriteRoundedCopy(servers.model_root + "/stories260K", servers.model_root + "/" + name,
                               dtype, /*sharded=*/true)
                  .ok());
  v1::ModelInfo fp32, half;
  ASSERT_TRUE(Load("stories260K", &fp32).ok());
  grpc::Status status = Load(name, &half);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_FALSE(half.quantized());
  EXPECT_EQ(half.bits_per_weight(), 16);
  EXPECT_EQ(fp32.bits_per_weight(), 32);
  // Norms stay fp32: a little over half.
  EXPECT_GT(half.weight_bytes(), fp32.weight_bytes() / 2);
  EXPECT_LT(half.weight_bytes(), fp32.weight_bytes() * 0.52);
  v1::GenerateResponse response;
  status = Generate(name, {kOnce}, Greedy(24), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(response.results_size(), 1);
  EXPECT_EQ(response.results(0).text().rfind(kGolden, 0), 0u) << response.results(0).text();
}

TEST(E2eInferenceTest, Bf16CheckpointIsServedAsBf16) { ExpectServedAsStored(DType::kBF16); }

TEST(E2eInferenceTest, F16CheckpointIsServedAsF16) { ExpectServedAsStored(DType::kF16); }

// --compute_dtype overrides the arithmetic each artifact was quantized for
// (this one: fp32) on every model a server loads.
TEST(E2eInferenceTest, ComputeDtypeFlagOverridesArtifacts) {
  const std::string id = LoadedArtifact();
  v1::ModelInfo info;
  ASSERT_TRUE(Load(id, &info).ok());
  EXPECT_EQ(info.config().compute_dtype(), v1::COMPUTE_FP32);

  const Servers& servers = GetServers();
  ServerProcess int8_server("inference_int8", servers.inference_binary,
                            {"--model_root=" + servers.model_root,
                             "--artifact_root=" + servers.artifact_root, "--threads=2",
                             "--compute_dtype=int8"},
                            servers.dir);
  const int port = int8_server.WaitForPort(std::chrono::seconds(30));
  ASSERT_GT(port, 0);
  auto stub = v1::InferenceService::NewStub(grpc::CreateChannel(
      "127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  {
    grpc::ClientContext context;
    SetDeadline(&context);
    v1::LoadModelRequest request;
    request.set_model(id);
    grpc::Status status = stub->LoadModel(&context, request, &info);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  EXPECT_EQ(info.config().compute_dtype(), v1::COMPUTE_INT8);
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::GenerateRequest request;
  request.set_model(id);
  request.add_prompts(kOnce);
  *request.mutable_sampling() = Greedy(16);
  v1::GenerateResponse response;
  grpc::Status status = stub->Generate(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(response.results_size(), 1);
  const v1::GenerationResult& result = response.results(0);
  EXPECT_GT(result.token_ids_size(), 0);
  EXPECT_EQ(result.usage().completion_tokens(), result.token_ids_size());
  EXPECT_FALSE(result.text().empty());
  EXPECT_EQ(int8_server.Stop(std::chrono::seconds(10)), 0) << int8_server.Log();
}

// --max_queued=0 is a server with no waiting line, not one that refuses all;
// a batch longer than --max_running waits for nothing but a free slot.
TEST(E2eInferenceTest, NoWaitingLineServesBatches) {
  const Servers& servers = GetServers();
  ServerProcess server("inference_no_queue", servers.inference_binary,
                       {"--model_root=" + servers.model_root,
                        "--artifact_root=" + servers.artifact_root, "--threads=2",
                        "--max_running=1", "--max_queued=0"},
                       servers.dir);
  const int port = server.WaitForPort(std::chrono::seconds(30));
  ASSERT_GT(port, 0);
  auto stub = v1::InferenceService::NewStub(grpc::CreateChannel(
      "127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  {
    grpc::ClientContext context;
    SetDeadline(&context);
    v1::LoadModelRequest request;
    request.set_model("stories260K");
    v1::ModelInfo info;
    grpc::Status status = stub->LoadModel(&context, request, &info);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::GenerateRequest request;
  request.set_model("stories260K");
  for (const char* prompt : {kOnce, "The cat", "One day"}) request.add_prompts(prompt);
  *request.mutable_sampling() = Greedy(24);
  v1::GenerateResponse response;
  grpc::Status status = stub->Generate(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(response.results_size(), 3);
  EXPECT_EQ(response.results(0).text().rfind(kGolden, 0), 0u) << response.results(0).text();
  EXPECT_EQ(server.Stop(std::chrono::seconds(10)), 0) << server.Log();
}

TEST(E2eInferenceTest, ServerInfo) {
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::ServerInfo info;
  ASSERT_TRUE(Stub()->GetServerInfo(&context, v1::GetServerInfoRequest(), &info).ok());
  // The server runs on this machine without WQ_ISA: it picks what we would.
  EXPECT_EQ(info.kernel_isa(), std::string(KernelIsaName()));
  EXPECT_EQ(info.max_new_tokens_cap(), 256);
  EXPECT_EQ(info.threads(), 2);
  EXPECT_GT(info.max_batch(), 0);
}

}  // namespace
}  // namespace wq::e2e
