// inference_service: CPU text generation over gRPC with continuous batching.
#include <memory>
#include <string>
#include <vector>

#include <tbb/global_control.h>
#include <tbb/info.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "common/kernels/cpu_features.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "common/io/logging.h"
#include "common/formats/quant_config.h"
#include "inference_service/inference_service.h"
#include "inference_service/model_manager.h"
#include "inference_service/openai_api.h"
#include "server/security_flags.h"
#include "server/server.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:50052",
          "host:port to serve on (loopback by default; see README \"Security\"); port 0 picks "
          "a free one");
ABSL_FLAG(std::string, port_file, "", "write the bound port here once serving");
ABSL_FLAG(std::string, http_listen, "",
          "host:port of the HTTP listener (/health, /metrics, the OpenAI API); empty = none");
ABSL_FLAG(std::string, http_port_file, "", "write the bound HTTP port here once serving");
ABSL_FLAG(int, http_threads, 128,
          "HTTP connections served at once; each in-flight OpenAI request (a stream for its "
          "whole length) holds one, more wait to be accepted");
ABSL_FLAG(std::string, model_root, "./models", "directory of unquantized models (served in fp32)");
ABSL_FLAG(std::string, artifact_root, "./artifacts", "directory of quantized artifacts");
ABSL_FLAG(int, threads, 0, "oneTBB worker threads; 0 = all cores");
ABSL_FLAG(int, max_running, 8, "sequences decoded together per model");
ABSL_FLAG(int, max_queued, 64,
          "requests waiting per model while all max_running slots are busy; past it "
          "RESOURCE_EXHAUSTED; 0 = none wait");
ABSL_FLAG(int, max_new_tokens_cap, 2048, "largest max_new_tokens a request may ask for");
ABSL_FLAG(int, default_max_new_tokens, 128, "max_new_tokens when a request leaves it unset");
ABSL_FLAG(int, max_context, 0, "tokens per sequence; 0 = the model's maximum");
ABSL_FLAG(std::string, kv_cache_dtype, "fp32",
          "fp32 or bf16 (half the KV cache memory, keys and values rounded to bf16)");
ABSL_FLAG(std::string, compute_dtype, "",
          "fp32|bf16|int8: arithmetic of every quantized model, overriding the compute_dtype "
          "each artifact was quantized for (empty: the artifact's)");
ABSL_FLAG(bool, private_weights, false,
          "copy int8-tile weights into this process's memory instead of reading them in place "
          "from the page cache (slower load, nothing shared with other replicas; decoded "
          "faster on some machines)");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(20),
          "on SIGTERM: how long in-flight requests get to finish (new ones are refused at "
          "once) before those left fail with UNAVAILABLE; keep it below the pod's "
          "terminationGracePeriodSeconds");
ABSL_FLAG(std::string, preload, "", "comma-separated models (artifact or model ids) to load at start");

namespace {

// Returns a message naming the bad flag, or "" when all are usable.
std::string CheckFlags() {
  if (absl::GetFlag(FLAGS_threads) < 0) return "--threads must be >= 0 (0 = all cores)";
  if (absl::GetFlag(FLAGS_max_running) < 1) return "--max_running must be >= 1";
  if (absl::GetFlag(FLAGS_max_queued) < 0) return "--max_queued must be >= 0";
  if (absl::GetFlag(FLAGS_http_threads) < 1) return "--http_threads must be >= 1";
  if (absl::GetFlag(FLAGS_max_new_tokens_cap) < 1) return "--max_new_tokens_cap must be >= 1";
  if (absl::GetFlag(FLAGS_default_max_new_tokens) < 1) {
    return "--default_max_new_tokens must be >= 1";
  }
  if (absl::GetFlag(FLAGS_shutdown_grace) < absl::ZeroDuration()) {
    return "--shutdown_grace must be >= 0";
  }
  if (absl::GetFlag(FLAGS_max_context) < 0) return "--max_context must be >= 0";
  if (!wq::ParseKvCacheDtype(absl::GetFlag(FLAGS_kv_cache_dtype))) {
    return "--kv_cache_dtype must be fp32 or bf16";
  }
  if (const std::string c = absl::GetFlag(FLAGS_compute_dtype);
      !c.empty() && !wq::ParseComputeDtype(c)) {
    return "--compute_dtype must be fp32, bf16 or int8 (or empty for each artifact's own)";
  }
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  wq::TakeShutdownSignals();
  absl::SetProgramUsageMessage(
      "Serves wq.v1.InferenceService.\nUsage: inference_service [--listen=host:port] "
      "[--model_root=DIR] [--artifact_root=DIR] [--preload=a,b]");
  absl::ParseCommandLine(argc, argv);
  wq::SetLogServiceName("inference");
  if (std::string bad = CheckFlags(); !bad.empty()) {
    wq::LogError("bad_flag", {{"message", bad}});
    return 2;
  }
  const int threads = absl::GetFlag(FLAGS_threads) > 0 ? absl::GetFlag(FLAGS_threads)
                                                       : tbb::info::default_concurrency();
  tbb::global_control tbb_threads(tbb::global_control::max_allowed_parallelism, threads);

  wq::ModelManager::Options options;
  options.model_root = absl::GetFlag(FLAGS_model_root);
  options.artifact_root = absl::GetFlag(FLAGS_artifact_root);
  options.scheduler.max_running = absl::GetFlag(FLAGS_max_running);
  options.scheduler.max_queued = absl::GetFlag(FLAGS_max_queued);
  options.scheduler.max_context = absl::GetFlag(FLAGS_max_context);
  options.scheduler.kv_cache_dtype = *wq::ParseKvCacheDtype(absl::GetFlag(FLAGS_kv_cache_dtype));
  options.load.compute = wq::ParseComputeDtype(absl::GetFlag(FLAGS_compute_dtype));
  options.load.private_weights = absl::GetFlag(FLAGS_private_weights);
  absl::StatusOr<std::unique_ptr<wq::ModelManager>> models =
      wq::ModelManager::Create(options);
  if (!models.ok()) {
    wq::LogError("startup_failed", {{"error", models.status().ToString()}});
    return 1;
  }
  for (absl::string_view name :
       absl::StrSplit(absl::GetFlag(FLAGS_preload), ',', absl::SkipWhitespace())) {
    absl::StatusOr<wq::v1::ModelInfo> info = (*models)->Load(std::string(name));
    if (!info.ok()) {
      wq::LogError("preload_failed", {{"model", std::string(name)},
                                      {"error", info.status().ToString()}});
      return 1;
    }
  }

  wq::InferenceLimits limits;
  limits.max_new_tokens_cap = absl::GetFlag(FLAGS_max_new_tokens_cap);
  limits.default_max_new_tokens = absl::GetFlag(FLAGS_default_max_new_tokens);
  limits.threads = threads;
  limits.max_running = options.scheduler.max_running;
  wq::InferenceServiceImpl service(models->get(), limits);
  wq::OpenAiApi openai(models->get(), limits);

  wq::ServerOptions server;
  server.listen = absl::GetFlag(FLAGS_listen);
  server.port_file = absl::GetFlag(FLAGS_port_file);
  server.http_listen = absl::GetFlag(FLAGS_http_listen);
  server.http_port_file = absl::GetFlag(FLAGS_http_port_file);
  server.http_threads = absl::GetFlag(FLAGS_http_threads);
  server.http_routes = [&openai](httplib::Server& routes) { openai.Register(routes); };
  server.security = wq::SecurityOptionsFromFlags();
  server.services = {{&service, wq::v1::InferenceService::service_full_name(),
                      wq::InferenceServiceImpl::CallbackMethods()}};
  // In-flight requests finish within the grace, the rest fail UNAVAILABLE; the
  // server cancels calls (a LoadModel) still open a little after that.
  const absl::Duration grace = absl::GetFlag(FLAGS_shutdown_grace);
  server.shutdown_deadline = grace + absl::Seconds(2);
  server.on_shutdown = [&models, grace] { (*models)->Drain(grace); };
  return wq::ServeUntilShutdown(server, {{"model_root", options.model_root},
                                         {"artifact_root", options.artifact_root},
                                         {"threads", threads},
                                         {"kernel_isa", std::string(wq::KernelIsaName())}});
}
