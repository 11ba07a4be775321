// End-to-end speed of the inference engine on synthetic models (random
// weights in real shapes, see synthetic_model.h): for each model x weight
// dtype x lm_head variant x compute dtype x KV cache dtype, RTN-quantizes through
// common/quantizer, loads the artifact as the service does and measures
// prefill, time to first token, decode at several batch sizes, resident
// memory, artifact size and bits per weight. The same run measures the
// machine's read bandwidth (decode roofline = bandwidth / bytes streamed per
// token) and streams one configuration through the real inference_service
// binary over gRPC to compare with in-process decode. A second table states
// every row against llama.cpp on this machine (bench/llamacpp/run).
//
//   bazel run -c opt //bench:speed -- --models=tinyllama-1.1b
//       --json_out=/tmp/speed.json [--smoke] [--weights=int4_clip_sym,fp32] ...
//
// Models and artifacts go to --work_dir (never the repository). Timings are
// best of --iterations; the load average is printed with the results.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bench/bench_util.h"
#include "bench/synthetic_model.h"
#include "common/artifact/artifact_store.h"
#include "common/kernels/cpu_features.h"
#include "common/model/llama.h"
#include "common/formats/quant_config.h"
#include "common/io/process_memory.h"
#include "common/quant/quantizer.h"
#include "common/io/status_macros.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "wq/v1/inference.grpc.pb.h"
#include "tbb/global_control.h"

ABSL_FLAG(std::string, models, "llama-110m,tinyllama-1.1b", "synthetic model shapes");
ABSL_FLAG(std::string, weights, "fp32,int4_clip_sym,int4_asym,int8_sym,nf4",
          "weight dtypes (all group size 32, RTN), or the dense checkpoint rows fp32, bf16, "
          "bf16_as_fp32");
ABSL_FLAG(std::string, computes, "fp32,bf16,int8", "compute dtypes of quantized rows");
ABSL_FLAG(std::string, lm_head, "fp32,quantized",
          "lm_head variants: fp32 (the default llm_int8_skip_modules) and/or quantized");
ABSL_FLAG(std::string, kv_caches, "fp32",
          "KV cache dtypes (fp32, bf16): every row is measured with each");
ABSL_FLAG(std::string, prompts, "128,512", "prefill prompt lengths");
ABSL_FLAG(std::string, batches, "1,4,16", "decode batch sizes");
ABSL_FLAG(int, decode_prompt, 16, "prompt tokens of each decoding sequence");
ABSL_FLAG(int, decode_tokens, 32, "tokens decoded per sequence");
ABSL_FLAG(int, iterations, 2, "timings are the best of this many runs");
ABSL_FLAG(int, threads, 2, "oneTBB threads (also for the bandwidth measurement)");
ABSL_FLAG(bool, smoke, false, "CI mode: llama-110m, one row pair, tiny sizes, one iteration");
ABSL_FLAG(std::string, work_dir, "/tmp/wq-speed", "synthetic models and artifacts go here");
ABSL_FLAG(std::string, tokenizer, "../shared/tokenizers/llama2/tokenizer.model",
          "tokenizer.model copied into synthetic models");
ABSL_FLAG(bool, grpc, true, "also stream through the inference_service binary");
ABSL_FLAG(std::string, grpc_row, "int4_clip_sym:int8:fp32",
          "weights:compute:lm_head of the configuration served over gRPC");
ABSL_FLAG(std::string, service_binary, "",
          "inference_service binary; default: from this binary's runfiles");
ABSL_FLAG(std::string, json_out, "", "write the results as JSON here");
ABSL_FLAG(std::string, llamacpp_json, "/tmp/wq-llamacpp/reference.json",
          "llama.cpp measured on this machine (bench/llamacpp/run); when the file is "
          "missing, the issue's figures from another machine");
ABSL_FLAG(bool, allow_foreign_reference, false,
          "print ratios against llama.cpp figures measured on another CPU (the JSON's "
          "\"cpu\" is not this machine's model name, or there is no JSON)");
ABSL_FLAG(bool, private_weights, false,
          "load int8 tiles into private memory instead of reading them in place (LoadOptions)");

extern char** environ;

namespace wq::bench {
namespace {

using Clock = std::chrono::steady_clock;

// llama.cpp's tok/s per synthetic shape, format ("Q4_0", "Q8_0", "F32")
// and metric ("pp128", "pp512", "decode_b1", "decode_b4", "decode_b16"):
// measured by bench/llamacpp/run when its JSON is there, else the figures
// the issue quotes from another machine (tinyllama-1.1b, decode b1 and pp128
// only). Ratios only against figures from this machine's CPU unless
// --allow_foreign_reference.
using FormatMetrics = std::map<std::string, std::map<std::string, double>>;
struct LlamaCppReference {
  std::string source;
  std::map<std::string, FormatMetrics> tps;  // by shape
  std::string foreign;  // Why the figures are from another machine; empty: this one.
};

LlamaCppReference IssueFigures() {
  return {"the issue's figures",
          {{"tinyllama-1.1b",
            {{"Q4_0", {{"decode_b1", 39.5}, {"pp128", 200.0}}},
             {"Q8_0", {{"decode_b1", 29.1}, {"pp128", 99.0}}},
             {"F32", {{"decode_b1", 9.2}, {"pp128", 70.0}}}}}},
          "no llama.cpp JSON from this machine; the issue's figures are from another machine "
          "(67 GB/s)"};
}

// /proc/cpuinfo's first "model name", as bench/llamacpp/run records it.
std::string CpuModelName() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (!absl::StartsWith(line, "model name")) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) break;
    return std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
  }
  return "";
}

absl::StatusOr<LlamaCppReference> LoadLlamaCppReference(const std::string& path) {
  std::ifstream in(path);
  if (!in) return IssueFigures();
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains("llama_cpp") ||
      !j["llama_cpp"].is_string() || !j.contains("models") || !j["models"].is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not bench/llamacpp/run's JSON"));
  }
  LlamaCppReference ref;
  const std::string cpu = j.contains("cpu") && j["cpu"].is_string() ? j["cpu"].get<std::string>() : "";
  const std::string here = CpuModelName();
  ref.source = absl::StrCat("llama.cpp ", j["llama_cpp"].get<std::string>(), " measured by "
                            "bench/llamacpp/run on \"", cpu, "\" (", path, ")");
  if (cpu.empty() || cpu != here) {
    ref.foreign = absl::StrCat(path, " was measured on \"", cpu, "\", this machine is \"", here,
                               "\"");
  }
  for (const auto& [shape, formats] : j["models"].items()) {
    if (!formats.is_object()) continue;
    for (const auto& [format, metrics] : formats.items()) {
      if (!metrics.is_object()) continue;
      for (const auto& [metric, value] : metrics.items()) {
        if (value.is_number() && metric != "file_bytes") {
          ref.tps[shape][format][metric] = value.get<double>();
        }
      }
    }
  }
  return ref;
}

// The llama.cpp format a weight dtype of ours is compared with.
std::string LlamaCppFormat(const std::string& weights) {
  if (absl::StartsWith(weights, "int8")) return "Q8_0";
  if (weights == "fp32") return "F32";
  return "Q4_0";
}

struct WeightChoice {
  std::string name;
  bool dense;
  v1::WeightDtype dtype;
  v1::Scheme scheme;
  v1::ScaleDtype scales = v1::SCALE_FP32;
  // Dense rows: the checkpoint's dtype and how it is served.
  DType checkpoint = DType::kF32;
  HalfWeights served = HalfWeights::kToF32;
};
// The _bf16scale rows store 16-bit scales, as llama.cpp's Q4_0 and Q8_0 do.
// Dense rows load the unquantized checkpoint as inference_service does
// (copied into memory): bf16 serves it as stored with bf16 compute,
// bf16_as_fp32 converts it to fp32 (what the service did before).
const WeightChoice kWeightChoices[] = {
    {"fp32", true, v1::WEIGHT_DTYPE_UNSPECIFIED, v1::SYM},
    {"bf16", true, v1::WEIGHT_DTYPE_UNSPECIFIED, v1::SYM, v1::SCALE_FP32, DType::kBF16,
     HalfWeights::kServeAsStored},
    {"bf16_as_fp32", true, v1::WEIGHT_DTYPE_UNSPECIFIED, v1::SYM, v1::SCALE_FP32, DType::kBF16,
     HalfWeights::kToF32},
    {"int4_clip_sym", false, v1::INT4_CLIP, v1::SYM},
    {"int4_clip_sym_bf16scale", false, v1::INT4_CLIP, v1::SYM, v1::SCALE_BF16},
    {"int4_asym", false, v1::INT4_CLIP, v1::ASYM},
    {"int8_sym", false, v1::INT8, v1::SYM},
    {"int8_sym_bf16scale", false, v1::INT8, v1::SYM, v1::SCALE_BF16},
    {"nf4", false, v1::NF4, v1::SYM},
};

const v1::ComputeDtype kComputeProto[] = {v1::COMPUTE_FP32, v1::COMPUTE_BF16, v1::COMPUTE_INT8};

struct Row {
  std::string model, weights, lm_head, compute;
  std::string kv_cache = "fp32";
  double quantize_s = 0;
  double load_s = 0;  // LoadWeights: verify, map, pack for the compute dtype.
  int64_t artifact_bytes = 0;
  double bits_per_weight = 0;     // over all linear layers incl. lm_head
  int64_t bytes_per_token = 0;    // weights streamed per decode step
  int64_t rss_bytes = 0;
  std::map<int, double> prefill_tps;  // prompt length -> tok/s
  std::map<int, double> ttft_ms;
  std::map<int, double> decode_tps;   // batch -> aggregate tok/s
};

struct GrpcResult {
  std::string model, row;
  int tokens = 0;
  double ttft_ms = 0, decode_tps = 0, in_process_tps = 0;
};

std::vector<std::string> Split(const std::string& s) {
  return absl::StrSplit(s, ',', absl::SkipWhitespace());
}

std::vector<int> SplitInts(const std::string& s) {
  std::vector<int> out;
  for (const std::string& p : Split(s)) {
    int v = 0;
    if (absl::SimpleAtoi(p, &v) && v > 0) out.push_back(v);
  }
  return out;
}

std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return absl::StrCat(a, " ", b, " ", c);
}

int Argmax(const float* v, int n) { return static_cast<int>(std::max_element(v, v + n) - v); }

// Options after --smoke and validation.
struct Options {
  std::vector<std::string> models, weights, computes, lm_heads, kv_caches;
  std::vector<int> prompts, batches;
  int decode_prompt, decode_tokens, iterations, threads;
  bool grpc;
  std::string grpc_row;
};

Options GetOptions() {
  Options o;
  o.models = Split(absl::GetFlag(FLAGS_models));
  o.weights = Split(absl::GetFlag(FLAGS_weights));
  o.computes = Split(absl::GetFlag(FLAGS_computes));
  o.lm_heads = Split(absl::GetFlag(FLAGS_lm_head));
  o.kv_caches = Split(absl::GetFlag(FLAGS_kv_caches));
  o.prompts = SplitInts(absl::GetFlag(FLAGS_prompts));
  o.batches = SplitInts(absl::GetFlag(FLAGS_batches));
  o.decode_prompt = absl::GetFlag(FLAGS_decode_prompt);
  o.decode_tokens = absl::GetFlag(FLAGS_decode_tokens);
  o.iterations = absl::GetFlag(FLAGS_iterations);
  o.threads = absl::GetFlag(FLAGS_threads);
  o.grpc = absl::GetFlag(FLAGS_grpc);
  o.grpc_row = absl::GetFlag(FLAGS_grpc_row);
  if (absl::GetFlag(FLAGS_smoke)) {
    o.models = {"llama-110m"};
    o.weights = {"fp32", "int4_clip_sym"};
    o.computes = {"int8"};
    o.lm_heads = {"fp32"};
    o.prompts = {32};
    o.batches = {1, 2};
    o.decode_prompt = 4;
    o.decode_tokens = 4;
    o.iterations = 1;
    o.grpc_row = "int4_clip_sym:int8:fp32";
  }
  return o;
}

// The synthetic model directory of `shape` in `dtype`, written on first use.
absl::StatusOr<std::string> ModelDir(const std::string& shape, DType dtype = DType::kF32) {
  const std::string suffix =
      dtype == DType::kF32 ? "" : "-" + absl::AsciiStrToLower(std::string(DTypeName(dtype)));
  const std::string dir =
      absl::StrCat(absl::GetFlag(FLAGS_work_dir), "/models/", shape, suffix);
  std::error_code ec;
  if (std::filesystem::exists(dir + "/model.safetensors", ec)) return dir;
  ASSIGN_OR_RETURN(LlamaConfig config, SyntheticShape(shape));
  std::printf("writing synthetic %s to %s\n", shape.c_str(), dir.c_str());
  std::fflush(stdout);
  SyntheticOptions options;
  options.dtype = dtype;
  RETURN_IF_ERROR(WriteSyntheticModel(config, options, absl::GetFlag(FLAGS_tokenizer), dir));
  return dir;
}

v1::WeightOnlyQuantConfig QuantConfig(const WeightChoice& w, bool quantize_lm_head,
                                      v1::ComputeDtype compute) {
  v1::WeightOnlyQuantConfig c;
  c.set_weight_dtype(w.dtype);
  c.set_scheme(w.scheme);
  c.set_scale_dtype(w.scales);
  c.set_group_size(32);
  c.set_algorithm(v1::RTN);
  c.set_compute_dtype(compute);
  // An empty list means the default ["lm_head"]; naming only the embeddings,
  // which are never quantized, skips nothing and so quantizes lm_head too.
  c.add_llm_int8_skip_modules(quantize_lm_head ? "embed_tokens" : "lm_head");
  return c;
}

// Quantizes (or reuses) the artifact; returns its id and the seconds spent.
absl::StatusOr<std::pair<std::string, double>> Quantize(ArtifactStore& store,
                                                         const std::string& shape,
                                                         const std::string& dir,
                                                         const v1::WeightOnlyQuantConfig& c) {
  QuantizeRequest request;
  request.model_id = absl::StrCat("synthetic-", shape);
  request.model_dir = dir;
  request.config = c;
  const auto t0 = Clock::now();
  ASSIGN_OR_RETURN(v1::ArtifactManifest manifest, QuantizeModel(request, store));
  return std::make_pair(manifest.artifact_id(),
                        std::chrono::duration<double>(Clock::now() - t0).count());
}

// Weights of every linear layer as streamed by one decode step.
void CountLinearBytes(const LlamaWeights& w, int64_t* bytes, int64_t* params) {
  *bytes = 0;
  *params = 0;
  auto add = [&](const LinearWeight& l) {
    *bytes += l.storage_bytes();
    *params += l.out_features() * l.in_features();
  };
  for (const LlamaLayerWeights& l : w.layers) {
    for (const BlockLinearSpec& spec : BlockLinears(w.config)) add(l.linear[spec.role]);
  }
  add(w.lm_head);
}

std::vector<int> RandomTokens(int n, int vocab, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> dist(3, vocab - 1);
  std::vector<int> t(n);
  for (int& v : t) v = dist(gen);
  return t;
}

// Prefill of one prompt: seconds of the Forward that yields the first token.
absl::StatusOr<double> TimePrefill(const LlamaModel& model, int len, KvCacheDtype kv,
                                   int iterations) {
  const LlamaConfig& c = model.config();
  KVCache cache(c, len, kv);
  const std::vector<int> tokens = RandomTokens(len, c.vocab_size, 7);
  std::vector<float> logits;
  absl::Status status;
  const double s = BestSeconds(iterations, [&] {
    SequenceChunk chunk;
    chunk.cache = &cache;
    chunk.tokens = tokens;
    status.Update(model.Forward({&chunk, 1}, &logits));
    Argmax(logits.data(), c.vocab_size);
  });
  RETURN_IF_ERROR(status);
  return s;
}

// Aggregate greedy decode tok/s of `batch` sequences stepping together.
absl::StatusOr<double> TimeDecode(const LlamaModel& model, int batch, int prompt, int steps,
                                  KvCacheDtype kv, int iterations) {
  const LlamaConfig& c = model.config();
  std::vector<std::unique_ptr<KVCache>> caches;
  std::vector<std::vector<int>> prompts;
  for (int b = 0; b < batch; ++b) {
    caches.push_back(std::make_unique<KVCache>(c, prompt + steps, kv));
    prompts.push_back(RandomTokens(prompt, c.vocab_size, 100 + b));
  }
  std::vector<float> logits;
  std::vector<SequenceChunk> chunks(batch);
  for (int b = 0; b < batch; ++b) {
    chunks[b].cache = caches[b].get();
    chunks[b].tokens = prompts[b];
  }
  RETURN_IF_ERROR(model.Forward(chunks, &logits));
  std::vector<int> first(batch);
  for (int b = 0; b < batch; ++b) first[b] = Argmax(&logits[b * c.vocab_size], c.vocab_size);
  absl::Status status;
  std::vector<int> next(batch);
  const double s = BestSeconds(iterations, [&] {
    next = first;
    for (int t = 0; t < steps && status.ok(); ++t) {
      for (int b = 0; b < batch; ++b) {
        chunks[b].tokens = absl::MakeConstSpan(&next[b], 1);
        chunks[b].start_pos = prompt + t;
      }
      status.Update(model.Forward(chunks, &logits));
      for (int b = 0; b < batch; ++b) next[b] = Argmax(&logits[b * c.vocab_size], c.vocab_size);
    }
  });
  RETURN_IF_ERROR(status);
  return static_cast<double>(batch) * steps / s;
}

absl::StatusOr<KvCacheDtype> FindKvCache(const std::string& name) {
  const std::optional<KvCacheDtype> kv = ParseKvCacheDtype(name);
  if (!kv) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown KV cache dtype ", name, " (fp32, bf16)"));
  }
  return *kv;
}

absl::Status MeasureRow(const Options& o, const std::shared_ptr<const LlamaWeights>& weights,
                        Row* row) {
  ASSIGN_OR_RETURN(const KvCacheDtype kv, FindKvCache(row->kv_cache));
  const LlamaModel model(weights);
  int64_t params = 0;
  CountLinearBytes(*weights, &row->bytes_per_token, &params);
  row->bits_per_weight = 8.0 * row->bytes_per_token / params;
  for (int len : o.prompts) {
    ASSIGN_OR_RETURN(double s, TimePrefill(model, len, kv, o.iterations));
    row->prefill_tps[len] = len / s;
    row->ttft_ms[len] = s * 1e3;
  }
  for (int batch : o.batches) {
    ASSIGN_OR_RETURN(row->decode_tps[batch],
                     TimeDecode(model, batch, o.decode_prompt, o.decode_tokens, kv, o.iterations));
  }
  row->rss_bytes = ResidentBytes();
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// gRPC: the real service as a child process.

std::string Runfiles() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return (n > 0 ? std::string(buf, n) : "") + ".runfiles";
}

class Service {
 public:
  absl::Status Start(const std::string& binary, std::vector<std::string> args,
                     const std::string& dir) {
    const std::string port_file = dir + "/inference.port";
    std::filesystem::remove(port_file);
    args.insert(args.begin(), binary);
    args.push_back("--listen=127.0.0.1:0");
    args.push_back("--port_file=" + port_file);
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    const std::string log = dir + "/inference.log";
    posix_spawn_file_actions_addopen(&actions, 2, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int rc = posix_spawn(&pid_, binary.c_str(), &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
      pid_ = -1;
      return absl::InternalError(absl::StrCat("cannot start ", binary, ": ", std::strerror(rc)));
    }
    // Preloading verifies and maps the artifact before the port appears.
    for (int i = 0; i < 1200; ++i) {
      std::ifstream in(port_file);
      int port = 0;
      if (in >> port && port > 0) {
        address_ = absl::StrCat("127.0.0.1:", port);
        return absl::OkStatus();
      }
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return absl::InternalError(absl::StrCat("inference_service exited; see ", log));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return absl::DeadlineExceededError(absl::StrCat("inference_service did not start; see ", log));
  }
  ~Service() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    waitpid(pid_, nullptr, 0);
  }
  const std::string& address() const { return address_; }

 private:
  pid_t pid_ = -1;
  std::string address_;
};

absl::Status StreamThroughService(const Options& o, const std::string& artifact_id,
                                  GrpcResult* result) {
  // The child finds the sentencepiece shim through RUNFILES_DIR (ours: it is
  // a data dependency of this binary).
  setenv("RUNFILES_DIR", Runfiles().c_str(), /*overwrite=*/0);
  const std::string binary = absl::GetFlag(FLAGS_service_binary).empty()
                                 ? Runfiles() + "/wq/inference_service/inference_service"
                                 : absl::GetFlag(FLAGS_service_binary);
  const std::string work = absl::GetFlag(FLAGS_work_dir);
  Service service;
  RETURN_IF_ERROR(service.Start(
      binary,
      {"--artifact_root=" + work + "/artifacts", "--model_root=" + work + "/models",
       absl::StrCat("--threads=", o.threads), "--preload=" + artifact_id},
      work));
  auto channel = grpc::CreateChannel(service.address(), grpc::InsecureChannelCredentials());
  auto stub = v1::InferenceService::NewStub(channel);
  double best_tps = 0, best_ttft = 1e30;
  for (int it = 0; it < o.iterations; ++it) {
    v1::GenerateStreamRequest request;
    request.set_model(artifact_id);
    request.set_prompt("Once upon a time, there was a little girl named Lily who loved to play");
    request.mutable_sampling()->set_max_new_tokens(o.decode_tokens);
    request.mutable_sampling()->set_seed(1);
    grpc::ClientContext context;
    const auto t0 = Clock::now();
    auto reader = stub->GenerateStream(&context, request);
    v1::GenerateStreamResponse response;
    int tokens = 0;
    Clock::time_point first, last;
    while (reader->Read(&response)) {
      if (!response.has_token()) continue;
      last = Clock::now();
      if (tokens++ == 0) first = last;
    }
    const grpc::Status status = reader->Finish();
    if (!status.ok()) {
      return absl::InternalError(absl::StrCat("GenerateStream: ", status.error_message()));
    }
    if (tokens < 2) return absl::InternalError("GenerateStream returned fewer than 2 tokens");
    result->tokens = tokens;
    best_ttft = std::min(best_ttft, std::chrono::duration<double, std::milli>(first - t0).count());
    best_tps = std::max(best_tps,
                        (tokens - 1) / std::chrono::duration<double>(last - first).count());
  }
  result->ttft_ms = best_ttft;
  result->decode_tps = best_tps;
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Output.

std::string Num(double v, int decimals = 1) { return absl::StrFormat("%.*f", decimals, v); }

std::string Table(const Options& o, const std::vector<Row>& rows, double bandwidth) {
  std::string header =
      "| model | weights | lm_head | compute | KV | bpw | artifact MB | load ms | RSS MB |";
  std::string rule = "|---|---|---|---|---|---|---|---|---|";
  for (int p : o.prompts) {
    absl::StrAppend(&header, " pp", p, " tok/s | TTFT", p, " ms |");
    rule += "---|---|";
  }
  for (int b : o.batches) {
    absl::StrAppend(&header, " decode b", b, " tok/s |");
    rule += "---|";
  }
  const int bmax = o.batches.empty() ? 1 : o.batches.back();
  absl::StrAppend(&header, " b", bmax, "/b1 | MB/token | roofline tok/s | % roofline |");
  rule += "---|---|---|---|";
  std::string out = header + "\n" + rule + "\n";
  for (const Row& r : rows) {
    const double roofline = bandwidth * 1e9 / r.bytes_per_token;
    const double b1 = r.decode_tps.count(1) ? r.decode_tps.at(1) : 0;
    std::string line = absl::StrCat("| ", r.model, " | ", r.weights, " | ", r.lm_head, " | ",
                                    r.compute, " | ", r.kv_cache, " | ",
                                    Num(r.bits_per_weight, 2), " | ",
                                    Num(r.artifact_bytes / 1e6, 0), " | ",
                                    Num(r.load_s * 1e3, 0), " | ",
                                    Num(r.rss_bytes / 1e6, 0), " |");
    for (int p : o.prompts) {
      absl::StrAppend(&line, " ", Num(r.prefill_tps.at(p)), " | ", Num(r.ttft_ms.at(p), 0), " |");
    }
    for (int b : o.batches) absl::StrAppend(&line, " ", Num(r.decode_tps.at(b)), " |");
    absl::StrAppend(&line, " ", b1 > 0 ? Num(r.decode_tps.at(bmax) / b1, 2) : "-", " | ",
                    Num(r.bytes_per_token / 1e6, 0), " | ", Num(roofline), " | ",
                    Num(100 * b1 / roofline, 0), "% |");
    out += line + "\n";
  }
  return out;
}

// The compute dtypes of each quantized weight side by side: prefill at the
// first prompt length, decode at batch 1 and RSS, and the first two over
// int8 compute's.
std::string ComputeTable(const Options& o, const std::vector<Row>& rows) {
  if (o.prompts.empty() || o.batches.empty() || o.batches.front() != 1) return "";
  const std::string pp = absl::StrCat("pp", o.prompts.front());
  std::string header = "| model | weights | lm_head | KV |";
  std::string rule = "|---|---|---|---|";
  for (const std::string& c : o.computes) {
    absl::StrAppend(&header, " ", c, " ", pp, " | ", c, " b1 | ", c, " RSS MB |");
    rule += "---|---|---|";
    if (c != "int8") {
      absl::StrAppend(&header, " ", c, "/int8 ", pp, " | ", c, "/int8 b1 |");
      rule += "---|---|";
    }
  }
  std::string out = header + "\n" + rule + "\n";
  std::map<std::tuple<std::string, std::string, std::string, std::string>,
           std::map<std::string, const Row*>>
      by_weight;
  for (const Row& r : rows) {
    if (r.weights != "fp32") by_weight[{r.model, r.weights, r.lm_head, r.kv_cache}][r.compute] = &r;
  }
  for (const auto& [key, computes] : by_weight) {
    std::string line = absl::StrCat("| ", std::get<0>(key), " | ", std::get<1>(key), " | ",
                                    std::get<2>(key), " | ", std::get<3>(key), " |");
    const auto int8 = computes.find("int8");
    for (const std::string& c : o.computes) {
      const auto it = computes.find(c);
      if (it == computes.end()) {
        line += c == "int8" ? " - | - | - |" : " - | - | - | - | - |";
        continue;
      }
      const Row& r = *it->second;
      const double prefill = r.prefill_tps.at(o.prompts.front());
      const double b1 = r.decode_tps.at(1);
      absl::StrAppend(&line, " ", Num(prefill), " | ", Num(b1), " | ", Num(r.rss_bytes / 1e6, 0),
                      " |");
      if (c == "int8") continue;
      if (int8 == computes.end()) {
        line += " - | - |";
      } else {
        absl::StrAppend(&line, " ", Num(prefill / int8->second->prefill_tps.at(o.prompts.front()), 2),
                        " | ", Num(b1 / int8->second->decode_tps.at(1), 2), " |");
      }
    }
    out += line + "\n";
  }
  return out;
}

// Ours over llama.cpp's tok/s for every measured metric llama.cpp has too.
std::string LlamaCppTable(const Options& o, const std::vector<Row>& rows,
                          const LlamaCppReference& ref) {
  std::string header = "| model | weights | compute | KV | llama.cpp |";
  std::string rule = "|---|---|---|---|---|";
  for (int p : o.prompts) {
    absl::StrAppend(&header, " pp", p, " |");
    rule += "---|";
  }
  for (int b : o.batches) {
    absl::StrAppend(&header, " decode b", b, " |");
    rule += "---|";
  }
  if (!ref.foreign.empty() && !absl::GetFlag(FLAGS_allow_foreign_reference)) {
    return absl::StrCat("No ratios against llama.cpp: ", ref.foreign,
                        " (--allow_foreign_reference prints them anyway).\n");
  }
  std::string out = absl::StrCat("Against ", ref.source,
                                 ref.foreign.empty() ? "" : absl::StrCat(", ANOTHER MACHINE: ", ref.foreign),
                                 ": ours / theirs tok/s = ratio\n\n", header, "\n", rule, "\n");
  for (const Row& r : rows) {
    const auto shape = ref.tps.find(r.model);
    if (shape == ref.tps.end()) continue;
    const std::string format = LlamaCppFormat(r.weights);
    const auto it = shape->second.find(format);
    if (it == shape->second.end()) continue;
    auto cell = [&](const std::string& metric, double ours) {
      const auto theirs = it->second.find(metric);
      if (theirs == it->second.end()) return std::string(" - |");
      return absl::StrCat(" ", Num(ours), " / ", Num(theirs->second), " = ",
                          Num(ours / theirs->second, 2), "x |");
    };
    std::string line = absl::StrCat("| ", r.model, " | ", r.weights, " | ", r.compute, " | ",
                                    r.kv_cache, " | ", format, " |");
    for (int p : o.prompts) line += cell(absl::StrCat("pp", p), r.prefill_tps.at(p));
    for (int b : o.batches) line += cell(absl::StrCat("decode_b", b), r.decode_tps.at(b));
    out += line + "\n";
  }
  return out;
}

std::string Json(const Options& o, const std::vector<Row>& rows,
                 const std::vector<std::string>& skipped, double bandwidth,
                 const std::vector<GrpcResult>& grpc, const std::string& load_before,
                 const std::string& load_after, const LlamaCppReference& ref) {
  auto map_json = [](const std::map<int, double>& m) {
    std::vector<std::string> parts;
    for (const auto& [k, v] : m) parts.push_back(absl::StrFormat("\"%d\": %.3f", k, v));
    return absl::StrCat("{", absl::StrJoin(parts, ", "), "}");
  };
  std::vector<std::string> row_json;
  for (const Row& r : rows) {
    const double roofline = bandwidth * 1e9 / r.bytes_per_token;
    row_json.push_back(absl::StrFormat(
        "    {\"model\": \"%s\", \"weights\": \"%s\", \"lm_head\": \"%s\", \"compute\": \"%s\", "
        "\"kv_cache\": \"%s\", \"llama_cpp_format\": \"%s\", "
        "\"quantize_s\": %.2f, \"load_s\": %.3f, \"artifact_bytes\": %d, "
        "\"bits_per_weight\": %.4f, "
        "\"bytes_per_token\": %d, \"rss_bytes\": %d, \"prefill_tok_s\": %s, \"ttft_ms\": %s, "
        "\"decode_tok_s\": %s, \"roofline_tok_s\": %.2f}",
        r.model, r.weights, r.lm_head, r.compute, r.kv_cache, LlamaCppFormat(r.weights),
        r.quantize_s, r.load_s, r.artifact_bytes,
        r.bits_per_weight, r.bytes_per_token, r.rss_bytes, map_json(r.prefill_tps),
        map_json(r.ttft_ms), map_json(r.decode_tps), roofline));
  }
  std::vector<std::string> grpc_json;
  for (const GrpcResult& g : grpc) {
    grpc_json.push_back(absl::StrFormat(
        "    {\"model\": \"%s\", \"row\": \"%s\", \"tokens\": %d, \"ttft_ms\": %.2f, "
        "\"decode_tok_s\": %.3f, \"in_process_decode_tok_s\": %.3f}",
        g.model, g.row, g.tokens, g.ttft_ms, g.decode_tps, g.in_process_tps));
  }
  nlohmann::json llama_cpp = {{"source", ref.source}, {"tok_s", ref.tps}, {"foreign", ref.foreign}};
  return absl::StrFormat(
      "{\n  \"isa\": \"%s\",\n  \"threads\": %d,\n  \"iterations\": %d,\n"
      "  \"load_average_before\": \"%s\",\n  \"load_average_after\": \"%s\",\n"
      "  \"read_bandwidth_gb_s\": %.2f,\n  \"decode_prompt\": %d,\n  \"decode_tokens\": %d,\n"
      "  \"llama_cpp\": %s,\n  \"skipped\": %s,\n"
      "  \"rows\": [\n%s\n  ],\n  \"grpc\": [\n%s\n  ]\n}\n",
      std::string(KernelIsaName()), o.threads, o.iterations, load_before, load_after,
      bandwidth, o.decode_prompt, o.decode_tokens, llama_cpp.dump(),
      nlohmann::json(skipped).dump(), absl::StrJoin(row_json, ",\n"),
      absl::StrJoin(grpc_json, ",\n"));
}

const WeightChoice* FindWeights(const std::string& name) {
  for (const WeightChoice& w : kWeightChoices) {
    if (w.name == name) return &w;
  }
  return nullptr;
}

absl::StatusOr<v1::ComputeDtype> FindCompute(const std::string& name) {
  for (v1::ComputeDtype c : kComputeProto) {
    if (ComputeDtypeName(ComputeDtypeOf(c)) == name) return c;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown compute dtype ", name));
}

// The row measured with each KV cache dtype, each printed when measured.
absl::Status MeasureRows(const Options& o, const std::shared_ptr<const LlamaWeights>& weights,
                         const Row& row, double bandwidth, std::vector<Row>* rows) {
  for (const std::string& kv : o.kv_caches) {
    Row measured = row;
    measured.kv_cache = kv;
    RETURN_IF_ERROR(MeasureRow(o, weights, &measured));
    rows->push_back(measured);
    std::printf("%s", Table(o, {measured}, bandwidth).c_str());
    std::fflush(stdout);
  }
  return absl::OkStatus();
}

absl::Status Run() {
  const Options o = GetOptions();
  tbb::global_control threads(tbb::global_control::max_allowed_parallelism, o.threads);
  ASSIGN_OR_RETURN(const LlamaCppReference llama_cpp,
                   LoadLlamaCppReference(absl::GetFlag(FLAGS_llamacpp_json)));
  const std::string load_before = LoadAverage();
  std::printf("isa %s, %d threads, load average %s\n", std::string(KernelIsaName()).c_str(),
              o.threads, load_before.c_str());
  const double bandwidth = ReadBandwidth(o.threads, std::max(5, o.iterations + 2));
  std::printf("read bandwidth (%d threads): %.1f GB/s\n", o.threads, bandwidth);
  std::fflush(stdout);

  ASSIGN_OR_RETURN(std::unique_ptr<ArtifactStore> store,
                   ArtifactStore::Open(absl::GetFlag(FLAGS_work_dir) + "/artifacts"));
  const std::vector<std::string> grpc_parts = absl::StrSplit(o.grpc_row, ':');
  if (grpc_parts.size() != 3) return absl::InvalidArgumentError("--grpc_row is weights:compute:lm_head");
  for (const std::string& kv : o.kv_caches) RETURN_IF_ERROR(FindKvCache(kv).status());
  std::vector<Row> rows;
  std::vector<std::string> skipped;  // Rows not measured, and why.
  std::vector<GrpcResult> grpc;
  for (const std::string& shape : o.models) {
    ASSIGN_OR_RETURN(std::string dir, ModelDir(shape));
    for (const std::string& wname : o.weights) {
      const WeightChoice* w = FindWeights(wname);
      if (w == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown weights ", wname));
      if (w->dense) {
        const char* compute = w->served == HalfWeights::kServeAsStored ? "bf16" : "fp32";
        Row row{shape, wname, compute, compute};
        ASSIGN_OR_RETURN(const std::string dense_dir, ModelDir(shape, w->checkpoint));
        const absl::Time start = absl::Now();
        ASSIGN_OR_RETURN(std::shared_ptr<const LlamaWeights> weights,
                         LoadLlamaModelDir(dense_dir, FileBacking::kCopied, w->served));
        row.load_s = absl::ToDoubleSeconds(absl::Now() - start);
        row.artifact_bytes = static_cast<int64_t>(
            std::filesystem::file_size(dense_dir + "/model.safetensors"));
        RETURN_IF_ERROR(MeasureRows(o, weights, row, bandwidth, &rows));
        continue;
      }
      for (const std::string& lm_head : o.lm_heads) {
        // int8 compute gets its own artifact, in the kernels' tile layout
        // (format 3); fp32 and bf16 share one row-major artifact (only the
        // arithmetic differs). Each is quantized once (the store would reuse
        // it, but only after checksumming the source model again) and
        // loaded for every row as the service would.
        std::map<v1::ComputeDtype, std::pair<std::string, double>> artifacts;
        for (const std::string& cname : o.computes) {
          ASSIGN_OR_RETURN(v1::ComputeDtype compute, FindCompute(cname));
          const v1::ComputeDtype stored =
              compute == v1::COMPUTE_INT8 ? v1::COMPUTE_INT8 : v1::COMPUTE_FP32;
          auto it = artifacts.find(stored);
          if (it == artifacts.end()) {
            auto q = Quantize(*store, shape, dir, QuantConfig(*w, lm_head == "quantized", stored));
            // A config the quantizer refuses is a row this build cannot
            // measure: said, not silently left out.
            if (absl::IsInvalidArgument(q.status())) {
              skipped.push_back(absl::StrCat(shape, " ", wname, " lm_head ", lm_head, " compute ",
                                             cname, ": ", q.status().message()));
              std::printf("skipped %s\n", skipped.back().c_str());
              continue;
            }
            RETURN_IF_ERROR(q.status());
            it = artifacts.emplace(stored, *std::move(q)).first;
          }
          const auto& [artifact_id, quantize_s] = it->second;
          Row row{shape, wname, lm_head, cname};
          row.quantize_s = quantize_s;
          ASSIGN_OR_RETURN(row.artifact_bytes, store->SizeBytes(artifact_id));
          const absl::Time start = absl::Now();
          LoadOptions load;
          load.compute = ComputeDtypeOf(compute);
          load.private_weights = absl::GetFlag(FLAGS_private_weights);
          auto weights = store->LoadWeights(artifact_id, load);
          row.load_s = absl::ToDoubleSeconds(absl::Now() - start);
          RETURN_IF_ERROR(weights.status());
          RETURN_IF_ERROR(MeasureRows(o, *weights, row, bandwidth, &rows));
        }
      }
    }
    if (!o.grpc) continue;
    // The served configuration is quantized with its compute dtype, which the
    // service applies when it loads the artifact.
    const WeightChoice* w = FindWeights(grpc_parts[0]);
    if (w == nullptr || w->dense) return absl::InvalidArgumentError("--grpc_row needs quantized weights");
    ASSIGN_OR_RETURN(v1::ComputeDtype compute, FindCompute(grpc_parts[1]));
    ASSIGN_OR_RETURN(auto q, Quantize(*store, shape, dir,
                                      QuantConfig(*w, grpc_parts[2] == "quantized", compute)));
    GrpcResult g{shape, o.grpc_row};
    RETURN_IF_ERROR(StreamThroughService(o, q.first, &g));
    {
      ASSIGN_OR_RETURN(std::shared_ptr<const LlamaWeights> loaded, store->LoadWeights(q.first));
      const LlamaModel model(loaded);
      ASSIGN_OR_RETURN(g.in_process_tps, TimeDecode(model, 1, o.decode_prompt, o.decode_tokens,
                                                    KvCacheDtype::kF32, o.iterations));
    }
    std::printf("gRPC %s %s: %d tokens, TTFT %.1f ms, decode %.1f tok/s (in-process %.1f, %.2fx)\n",
                shape.c_str(), o.grpc_row.c_str(), g.tokens, g.ttft_ms, g.decode_tps,
                g.in_process_tps, g.decode_tps / g.in_process_tps);
    grpc.push_back(g);
  }
  const std::string load_after = LoadAverage();
  std::printf("\n## Speed (%s, %d threads, best of %d; load average %s before, %s after)\n\n",
              std::string(KernelIsaName()).c_str(), o.threads, o.iterations,
              load_before.c_str(), load_after.c_str());
  std::printf("read bandwidth %.1f GB/s; decode: %d-token prompts, %d steps; MB/token = all "
              "linear weights incl. lm_head\n\n",
              bandwidth, o.decode_prompt, o.decode_tokens);
  std::printf("%s", Table(o, rows, bandwidth).c_str());
  std::printf("\n%s", ComputeTable(o, rows).c_str());
  std::printf("\nrows skipped: %s\n", skipped.empty() ? "none" : "");
  for (const std::string& s : skipped) std::printf("- %s\n", s.c_str());
  std::printf("\n%s", LlamaCppTable(o, rows, llama_cpp).c_str());
  for (const GrpcResult& g : grpc) {
    std::printf("\ngRPC %s %s: TTFT %.1f ms, decode %.1f tok/s vs in-process %.1f (%.2fx)\n",
                g.model.c_str(), g.row.c_str(), g.ttft_ms, g.decode_tps, g.in_process_tps,
                g.decode_tps / g.in_process_tps);
  }
  if (const std::string path = absl::GetFlag(FLAGS_json_out); !path.empty()) {
    std::ofstream out(path);
    out << Json(o, rows, skipped, bandwidth, grpc, load_before, load_after, llama_cpp);
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace wq::bench

int main(int argc, char** argv) {
  return wq::bench::RunTool(argc, argv, "speed",
                            "End-to-end inference speed on synthetic models.", &wq::bench::Run);
}
