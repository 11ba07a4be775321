// End-to-end tests of wq.v1.InferenceService (servers: e2e_test.cc).
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "common/kernels/cpu_features.h"
#include "gtest/gtest.h"
#include "wq/v1/inference.grpc.pb.h"
#include "tests/e2e_client.h"
#include "tests/e2e_support.h"
#include "tests/rounded_checkpoint.h"

namespace wq::e2e {
namespace {

constexpr char kOnce[] = "Once upon a time";
constexpr char kGolden[] = ", there was a little girl named Lily";

using Stub = v1::InferenceService::Stub;

std::unique_ptr<Stub> Main() { return InferenceStub(GetServers().inference); }

v1::SamplingParams Greedy(int max_new_tokens) { return GreedySampling(max_new_tokens); }

// On the main inference server unless `stub` is given.
grpc::Status Load(const std::string& model, v1::ModelInfo* info, Stub* stub = nullptr) {
  return LoadModel(stub != nullptr ? *stub : *Main(), model, info);
}

grpc::Status Generate(const std::string& model, const std::vector<std::string>& prompts,
                      const v1::SamplingParams& sampling, v1::GenerateResponse* response,
                      Stub* stub = nullptr) {
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::GenerateRequest request;
  request.set_model(model);
  for (const std::string& p : prompts) request.add_prompts(p);
  *request.mutable_sampling() = sampling;
  return (stub != nullptr ? *stub : *Main()).Generate(&context, request, response);
}

// A second inference server over the same roots, with `flags` added, and a
// stub for it (null when it did not start).
struct ExtraServer {
  ExtraServer(const std::string& name, const std::vector<std::string>& flags)
      : process(name, GetServers().inference_binary, Args(flags), GetServers().dir) {
    const int port = process.WaitForPort(std::chrono::seconds(30));
    if (port > 0) stub = InferenceStub("127.0.0.1:" + std::to_string(port));
  }
  static std::vector<std::string> Args(const std::vector<std::string>& flags) {
    std::vector<std::string> args = {"--model_root=" + GetServers().model_root,
                                     "--artifact_root=" + GetServers().artifact_root,
                                     "--threads=2"};
    args.insert(args.end(), flags.begin(), flags.end());
    return args;
  }
  ServerProcess process;
  std::unique_ptr<Stub> stub;
};

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
  auto reader = Main()->GenerateStream(&context, GreedyStream(model, 24));
  const StreamedGeneration stream = ReadStream(*reader);
  ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
  ASSERT_TRUE(stream.end.has_value());
  EXPECT_EQ(stream.after_end, 0);
  EXPECT_EQ(stream.tokens, 24);
  EXPECT_LE(stream.max_logprob, 0);
  EXPECT_EQ(stream.end->finish_reason(), v1::LENGTH);
  EXPECT_EQ(stream.end->text(), stream.text);
  EXPECT_EQ(stream.end->usage().completion_tokens(), stream.tokens);
  EXPECT_GT(stream.end->usage().prompt_tokens(), 0);
}

TEST(E2eInferenceTest, CancelMidStreamKeepsServing) {
  const std::string model = LoadedArtifact();
  grpc::ClientContext context;
  SetDeadline(&context);
  // Long enough to be cut short.
  auto reader = Main()->GenerateStream(&context, GreedyStream(model, 256));
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
    Main()->UnloadModel(&context, request, &response);  // may not be loaded
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
  ASSERT_TRUE(Main()->ListModels(&context, v1::ListModelsRequest(), &models).ok());
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

  ExtraServer int8_server("inference_int8", {"--compute_dtype=int8"});
  ASSERT_NE(int8_server.stub, nullptr);
  grpc::Status status = Load(id, &info, int8_server.stub.get());
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(info.config().compute_dtype(), v1::COMPUTE_INT8);
  v1::GenerateResponse response;
  status = Generate(id, {kOnce}, Greedy(16), &response, int8_server.stub.get());
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(response.results_size(), 1);
  const v1::GenerationResult& result = response.results(0);
  EXPECT_GT(result.token_ids_size(), 0);
  EXPECT_EQ(result.usage().completion_tokens(), result.token_ids_size());
  EXPECT_FALSE(result.text().empty());
  EXPECT_EQ(int8_server.process.Stop(std::chrono::seconds(10)), 0) << int8_server.process.Log();
}

// --max_queued=0 is a server with no waiting line, not one that refuses all;
// a batch longer than --max_running waits for nothing but a free slot.
TEST(E2eInferenceTest, NoWaitingLineServesBatches) {
  ExtraServer server("inference_no_queue", {"--max_running=1", "--max_queued=0"});
  ASSERT_NE(server.stub, nullptr);
  v1::ModelInfo info;
  grpc::Status status = Load("stories260K", &info, server.stub.get());
  ASSERT_TRUE(status.ok()) << status.error_message();
  v1::GenerateResponse response;
  status = Generate("stories260K", {kOnce, "The cat", "One day"}, Greedy(24), &response,
                    server.stub.get());
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(response.results_size(), 3);
  EXPECT_EQ(response.results(0).text().rfind(kGolden, 0), 0u) << response.results(0).text();
  EXPECT_EQ(server.process.Stop(std::chrono::seconds(10)), 0) << server.process.Log();
}

TEST(E2eInferenceTest, ServerInfo) {
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::ServerInfo info;
  ASSERT_TRUE(Main()->GetServerInfo(&context, v1::GetServerInfoRequest(), &info).ok());
  // The server runs on this machine without WQ_ISA: it picks what we would.
  EXPECT_EQ(info.kernel_isa(), std::string(KernelIsaName()));
  EXPECT_EQ(info.max_new_tokens_cap(), 256);
  EXPECT_EQ(info.threads(), 2);
  EXPECT_GT(info.max_batch(), 0);
}

}  // namespace
}  // namespace wq::e2e
