// Every model family end to end through both real binaries with its real
// tokenizer: a one-layer checkpoint of the family's tiny architecture
// (../shared/models/tiny-*) at the real model's vocabulary size, beside the
// family's tokenizer files (../shared/tokenizers), quantized by
// quantizer_service (RTN, AWQ and TEQ each on two or more families, int4
// g32 and int8), then served by inference_service: ChatStream, Chat and Tokenize
// against the tokenizer's golden ids. generation_config.json's end-of-turn
// ids and sampling defaults are checked on the served fp32 checkpoint.
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "bench/synthetic_model.h"
#include "common/model/hf_config.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/e2e_client.h"
#include "tests/server_process.h"
#include "wq/v1/inference.grpc.pb.h"
#include "wq/v1/quantizer.grpc.pb.h"

namespace wq::e2e {
namespace {

using nlohmann::json;

constexpr char kModels[] = "../shared/models/";
constexpr char kTokenizers[] = "../shared/tokenizers/";

// Mistral-7B-Instruct-v0.1's tokenizer_config.json chat template (Hugging Face).
constexpr char kMistralInstructTemplate[] =
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ "
    "'[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' "
    "%}{{ message['content'] + eos_token + ' ' }}{% else %}{{ raise_exception('Only user and "
    "assistant roles are supported!') }}{% endif %}{% endfor %}";

struct Quantization {
  v1::WeightDtype dtype;
  v1::Algorithm algorithm;
};

struct Family {
  std::string name;        // the model id under the model root
  std::string tiny_model;  // the architecture's config, from ../shared/models
  // The published model's vocabulary (padded past the tokenizer's where it
  // is) and end ids, as its config.json has them.
  int vocab_size;
  int bos_token_id;
  int eos_token_id;
  // ../shared/tokenizers files (source, name in the model directory).
  std::vector<std::pair<std::string, std::string>> tokenizer_files;
  std::optional<json> tokenizer_config;  // written when the family ships none here
  std::string golden;                    // ../shared/tokenizers/<golden>/golden.json; "" none
  std::vector<Quantization> quantizations;
};

std::vector<Family> Families() {
  return {
      {"e2e-qwen2", "tiny-qwen2", 151936, 151643, 151645,
       {{"qwen2/vocab.json", "vocab.json"},
        {"qwen2/merges.txt", "merges.txt"},
        {"qwen2/tokenizer_config.json", "tokenizer_config.json"}},
       std::nullopt, "qwen2", {{v1::INT4_CLIP, v1::RTN}, {v1::INT8, v1::AWQ}}},
      {"e2e-qwen3", "tiny-qwen3", 151936, 151643, 151645,
       {{"qwen2/vocab.json", "vocab.json"},
        {"qwen2/merges.txt", "merges.txt"},
        {"qwen2/qwen3_tokenizer_config.json", "tokenizer_config.json"}},
       std::nullopt, "qwen2", {{v1::INT4_CLIP, v1::AWQ}, {v1::INT8, v1::TEQ}}},
      {"e2e-mistral", "tiny-mistral", 32000, 1, 2,
       {{"llama2/tokenizer.model", "tokenizer.model"}},
       json{{"add_bos_token", true},
            {"add_eos_token", false},
            {"bos_token", "<s>"},
            {"eos_token", "</s>"},
            {"unk_token", "<unk>"},
            {"chat_template", kMistralInstructTemplate}},
       "", {{v1::INT4_CLIP, v1::TEQ}, {v1::INT8, v1::RTN}}},
      // Llama-3-8B-Instruct: tiktoken tokenizer.model; ends turns on <|eot_id|>.
      {"e2e-llama3", "tiny-llama3", 128256, 128000, 128009,
       {{"llama3/tokenizer.model", "tokenizer.model"},
        {"llama3/tokenizer_config.json", "tokenizer_config.json"}},
       std::nullopt, "llama3", {{v1::INT4_CLIP, v1::RTN}}},
      // Phi-3-mini-4k-instruct: byte-fallback tokenizer.json; AWQ over its
      // fused qkv_proj and gate_up_proj.
      {"e2e-phi3", "tiny-phi3", 32064, 1, 32000,
       {{"phi3-mini/tokenizer.json", "tokenizer.json"},
        {"phi3-mini/tokenizer_config.json", "tokenizer_config.json"}},
       std::nullopt, "phi3-mini", {{v1::INT4_CLIP, v1::AWQ}}},
  };
}

std::string Env(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? value : "";
}

// Where the servers run, and their stubs.
struct Servers {
  std::string model_root;
  std::unique_ptr<ServerProcess> quantizer, inference;
  std::unique_ptr<v1::QuantizerService::Stub> quantizer_stub;
  std::unique_ptr<v1::InferenceService::Stub> inference_stub;
};
Servers* g_servers = nullptr;

// The family's one-layer checkpoint and tokenizer files, under the model root.
void WriteFamilyModel(const Family& family, const std::string& dir) {
  // Runfiles are symlinks, which rooted reads refuse: the file they point to.
  auto config = LoadLlamaConfig(
      std::filesystem::canonical(kModels + family.tiny_model + "/config.json").string());
  ASSERT_TRUE(config.ok()) << config.status();
  config->num_hidden_layers = 1;
  config->vocab_size = family.vocab_size;
  config->bos_token_id = family.bos_token_id;
  config->eos_token_id = family.eos_token_id;
  config->eos_token_ids = {family.eos_token_id};
  const absl::Status written = bench::WriteSyntheticModel(*config, {}, "", dir);
  ASSERT_TRUE(written.ok()) << written;
  for (const auto& [source, name] : family.tokenizer_files) {
    std::filesystem::copy_file(kTokenizers + source, dir + "/" + name,
                               std::filesystem::copy_options::overwrite_existing);
  }
  if (family.tokenizer_config.has_value()) {
    std::ofstream(dir + "/tokenizer_config.json") << family.tokenizer_config->dump();
  }
}

class ServersEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    std::string dir = (Env("TEST_TMPDIR").empty() ? "/tmp" : Env("TEST_TMPDIR")) +
                      "/e2e_families.XXXXXX";
    ASSERT_NE(mkdtemp(dir.data()), nullptr);
    auto servers = std::make_unique<Servers>();
    servers->model_root = dir + "/models";
    for (const Family& family : Families()) {
      WriteFamilyModel(family, servers->model_root + "/" + family.name);
      if (::testing::Test::HasFatalFailure()) return;
    }
    const std::string runfiles = Env("TEST_SRCDIR") + "/wq";
    const std::vector<std::string> roots = {"--model_root=" + servers->model_root,
                                            "--artifact_root=" + dir + "/artifacts",
                                            "--threads=2"};
    servers->quantizer = std::make_unique<ServerProcess>(
        "quantizer", runfiles + "/quantizer_service/quantizer_service", roots, dir);
    servers->inference = std::make_unique<ServerProcess>(
        "inference", runfiles + "/inference_service/inference_service", roots, dir);
    const int quantizer_port = servers->quantizer->WaitForPort(std::chrono::seconds(30));
    const int inference_port = servers->inference->WaitForPort(std::chrono::seconds(30));
    ASSERT_GT(quantizer_port, 0);
    ASSERT_GT(inference_port, 0);
    servers->quantizer_stub = v1::QuantizerService::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", quantizer_port), grpc::InsecureChannelCredentials()));
    servers->inference_stub = InferenceStub(absl::StrCat("127.0.0.1:", inference_port));
    g_servers = servers.release();
  }

  void TearDown() override {
    if (g_servers == nullptr) return;
    for (ServerProcess* server : {g_servers->quantizer.get(), g_servers->inference.get()}) {
      EXPECT_EQ(server->Stop(std::chrono::seconds(10)), 0) << server->Log();
    }
    if (::testing::UnitTest::GetInstance()->failed_test_count() > 0) {
      std::cerr << "---- quantizer log ----\n" << g_servers->quantizer->Log()
                << "---- inference log ----\n" << g_servers->inference->Log();
    }
  }
};

v1::InferenceService::Stub& Inference() { return *g_servers->inference_stub; }

// Short texts: the calibration set skips any longer than seq_len.
std::string QuantizeOnServer(const std::string& model, const Quantization& q) {
  v1::SubmitJobRequest request;
  request.set_model_id(model);
  v1::WeightOnlyQuantConfig& config = *request.mutable_config();
  config.set_weight_dtype(q.dtype);
  config.set_group_size(32);
  config.set_algorithm(q.algorithm);
  if (q.algorithm != v1::RTN) {
    v1::CalibrationConfig& calibration = *config.mutable_calibration();
    for (const char* text :
         {"Once upon a time there was a little cat.", "The sun was warm and the sky was blue.",
          "She went to the park with her friend.", "They played with a red ball all day.",
          "In the evening they ate soup and bread.", "Then everyone went home to sleep.",
          "The next morning the birds sang loudly.", "It was a happy day for the family."}) {
      calibration.mutable_texts()->add_texts(text);
    }
    calibration.set_n_samples(2);
    calibration.set_seq_len(16);
  }
  v1::Job job;
  {
    grpc::ClientContext context;
    SetDeadline(&context);
    const grpc::Status status = g_servers->quantizer_stub->SubmitJob(&context, request, &job);
    EXPECT_TRUE(status.ok()) << status.error_message();
    if (!status.ok()) return "";
  }
  grpc::ClientContext context;
  SetDeadline(&context, 120);
  v1::WatchJobRequest watch;
  watch.set_job_id(job.job_id());
  auto reader = g_servers->quantizer_stub->WatchJob(&context, watch);
  while (reader->Read(&job)) {
  }
  const grpc::Status status = reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << job.error_message();
  return job.artifact_id();
}

grpc::Status Load(const std::string& model) { return LoadModel(Inference(), model); }

grpc::Status Unload(const std::string& model) {
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::UnloadModelRequest request;
  request.set_model(model);
  v1::UnloadModelResponse response;
  return Inference().UnloadModel(&context, request, &response);
}

v1::SamplingParams Greedy(int max_new_tokens) { return GreedySampling(max_new_tokens); }

bool IsValidUtf8(const std::string& text) {
  size_t i = 0;
  while (i < text.size()) {
    const unsigned char lead = static_cast<unsigned char>(text[i]);
    const int length = lead < 0x80 ? 1 : (lead >> 5) == 0x6 ? 2 : (lead >> 4) == 0xE ? 3
                                       : (lead >> 3) == 0x1E ? 4 : 0;
    if (length == 0 || i + length > text.size()) return false;
    for (int k = 1; k < length; ++k) {
      if ((static_cast<unsigned char>(text[i + k]) & 0xC0) != 0x80) return false;
    }
    i += length;
  }
  return true;
}


// ChatStream streams UTF-8 text token by token and ends with EOS or LENGTH;
// unary Chat of the same conversation gives the same greedy text.
void ExpectChatWorks(const std::string& model) {
  constexpr char kQuestion[] = "Tell me a story about a cat.";
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::ChatStreamRequest request;
  request.set_model(model);
  *request.mutable_messages() = UserSays(kQuestion);
  *request.mutable_sampling() = Greedy(16);
  auto reader = Inference().ChatStream(&context, request);
  const StreamedGeneration stream = ReadStream(*reader);
  ASSERT_TRUE(stream.status.ok()) << model << ": " << stream.status.error_message();
  const std::optional<v1::StreamEnd>& end = stream.end;
  const std::string& streamed = stream.text;
  const int tokens = stream.tokens;
  ASSERT_TRUE(end.has_value()) << model;
  EXPECT_TRUE(end->finish_reason() == v1::EOS || end->finish_reason() == v1::LENGTH) << model;
  EXPECT_GT(tokens, 0) << model;
  EXPECT_EQ(end->text(), streamed) << model;
  EXPECT_FALSE(streamed.empty()) << model;
  EXPECT_TRUE(IsValidUtf8(streamed)) << model;

  grpc::ClientContext chat_context;
  SetDeadline(&chat_context);
  v1::ChatRequest chat;
  chat.set_model(model);
  *chat.add_conversations()->mutable_messages() = UserSays(kQuestion);
  *chat.mutable_sampling() = Greedy(16);
  v1::ChatResponse response;
  const grpc::Status chat_status = Inference().Chat(&chat_context, chat, &response);
  ASSERT_TRUE(chat_status.ok()) << model << ": " << chat_status.error_message();
  ASSERT_EQ(response.results_size(), 1);
  EXPECT_EQ(response.results(0).text(), streamed) << model;
  EXPECT_EQ(response.results(0).token_ids_size(), tokens) << model;
  EXPECT_EQ(response.results(0).finish_reason(), end->finish_reason()) << model;
}

std::vector<int> Tokenize(const std::string& model, const std::string& text,
                          bool add_special_tokens) {
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::TokenizeRequest request;
  request.set_model(model);
  request.set_text(text);
  request.set_add_special_tokens(add_special_tokens);
  v1::TokenizeResponse response;
  const grpc::Status status = Inference().Tokenize(&context, request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return {response.ids().begin(), response.ids().end()};
}

// Every case of the tokenizer's golden.json, with and without special tokens.
void ExpectGoldenTokenizer(const std::string& model, const std::string& golden) {
  std::ifstream file(kTokenizers + golden + "/golden.json");
  const json cases = json::parse(file)["cases"];
  ASSERT_FALSE(cases.empty());
  for (const json& c : cases) {
    const std::string text = c["text"].get<std::string>();
    EXPECT_EQ(Tokenize(model, text, true), c["ids_with_special"].get<std::vector<int>>())
        << model << ": " << text;
    EXPECT_EQ(Tokenize(model, text, false), c["ids_without_special"].get<std::vector<int>>())
        << model << ": " << text;
  }
}

class FamilyTest : public ::testing::TestWithParam<Family> {};

TEST_P(FamilyTest, QuantizesAndServesWithItsTokenizer) {
  const Family& family = GetParam();
  for (const Quantization& quantization : family.quantizations) {
    SCOPED_TRACE(absl::StrCat(family.name, " ", v1::WeightDtype_Name(quantization.dtype), " ",
                              v1::Algorithm_Name(quantization.algorithm)));
    const std::string artifact = QuantizeOnServer(family.name, quantization);
    ASSERT_FALSE(artifact.empty());
    const grpc::Status loaded = Load(artifact);
    ASSERT_TRUE(loaded.ok()) << loaded.error_message();
    ExpectChatWorks(artifact);
    if (!family.golden.empty()) {
      ExpectGoldenTokenizer(artifact, family.golden);
    } else {
      // SentencePiece without a golden here: BOS, then ids that decode back.
      const std::vector<int> ids = Tokenize(artifact, "Hello world", true);
      ASSERT_GE(ids.size(), 2u);
      EXPECT_EQ(ids[0], family.bos_token_id);
    }
    ASSERT_TRUE(Unload(artifact).ok());
  }
}

INSTANTIATE_TEST_SUITE_P(Families, FamilyTest, ::testing::ValuesIn(Families()),
                         [](const ::testing::TestParamInfo<Family>& info) {
                           std::string name = info.param.tiny_model;
                           name.erase(0, name.find('-') + 1);
                           return name;
                         });

v1::GenerationResult Generate(const std::string& model, const std::string& prompt,
                              const v1::SamplingParams& sampling) {
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::GenerateRequest request;
  request.set_model(model);
  request.add_prompts(prompt);
  *request.mutable_sampling() = sampling;
  v1::GenerateResponse response;
  const grpc::Status status = Inference().Generate(&context, request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response.results_size() == 1 ? response.results(0) : v1::GenerationResult();
}

// Qwen2.5-Instruct's config.json ends on <|im_end|> only; its
// generation_config.json adds <|endoftext|> (and sampling defaults). The
// one-layer random qwen2 checkpoint (tied embeddings) greedily repeats its
// last input token: after a prompt ending in <|endoftext|> it generates
// <|endoftext|>, running past it without generation_config.json and stopping
// there, as EOS, with it; requests that leave the temperature unset then
// sample at the file's temperature.
TEST(GenerationConfigTest, EndOfTurnIdsAndSamplingDefaults) {
  constexpr int kEndOfText = 151643;
  const std::string prompt = "Once upon a time<|endoftext|>";
  const std::string model = "e2e-qwen2-eot";
  const std::string dir = g_servers->model_root + "/" + model;
  std::filesystem::copy(g_servers->model_root + "/" + Families()[0].name, dir,
                        std::filesystem::copy_options::recursive);
  ASSERT_TRUE(Load(model).ok());
  const v1::GenerationResult runs_on = Generate(model, prompt, Greedy(4));
  ASSERT_GE(runs_on.token_ids_size(), 1);
  EXPECT_EQ(runs_on.token_ids(0), kEndOfText);
  EXPECT_EQ(runs_on.finish_reason(), v1::LENGTH);
  ASSERT_TRUE(Unload(model).ok());

  std::ofstream(dir + "/generation_config.json")
      << R"({"bos_token_id": 151643, "eos_token_id": [151645, 151643], "do_sample": true,
             "temperature": 1.5})";
  const grpc::Status loaded = Load(model);
  ASSERT_TRUE(loaded.ok()) << loaded.error_message();
  const v1::GenerationResult stopped = Generate(model, prompt, Greedy(4));
  EXPECT_EQ(stopped.finish_reason(), v1::EOS);
  EXPECT_LE(stopped.token_ids_size(), 1);
  EXPECT_TRUE(stopped.text().empty()) << stopped.text();

  // Temperature unset: the file's 1.5, the same tokens as asking for it.
  v1::SamplingParams unset;
  unset.set_max_new_tokens(4);
  unset.set_seed(7);
  v1::SamplingParams explicit_temperature = unset;
  explicit_temperature.set_temperature(1.5f);
  const v1::GenerationResult defaulted = Generate(model, prompt, unset);
  const v1::GenerationResult asked = Generate(model, prompt, explicit_temperature);
  EXPECT_EQ(std::vector<int>(defaulted.token_ids().begin(), defaulted.token_ids().end()),
            std::vector<int>(asked.token_ids().begin(), asked.token_ids().end()));
  EXPECT_EQ(defaulted.finish_reason(), v1::LENGTH) << "sampled, not greedy";
  ASSERT_TRUE(Unload(model).ok());
}

}  // namespace
}  // namespace wq::e2e

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new wq::e2e::ServersEnvironment());
  return RUN_ALL_TESTS();
}
