// quantizer_service: runs weight-only quantization jobs over gRPC.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <memory>
#include <string>

#include <tbb/global_control.h>
#include <tbb/info.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/io/logging.h"
#include "quantizer_service/job_manager.h"
#include "quantizer_service/one_shot.h"
#include "quantizer_service/quantizer_service.h"
#include "server/security_flags.h"
#include "server/server.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "host:port to serve on (loopback by default; see README \"Security\"); port 0 picks "
          "a free one");
ABSL_FLAG(std::string, port_file, "", "write the bound port here once serving");
ABSL_FLAG(std::string, http_listen, "",
          "host:port of the HTTP listener (/health, /metrics); empty = none");
ABSL_FLAG(std::string, http_port_file, "", "write the bound HTTP port here once serving");
ABSL_FLAG(std::string, model_root, "./models", "directory of source models (model ids are paths under it)");
ABSL_FLAG(std::string, artifact_root, "./artifacts", "directory of quantized artifacts");
ABSL_FLAG(std::string, data_root, "./data", "directory of calibration files");
ABSL_FLAG(int, workers, 1, "jobs run concurrently");
ABSL_FLAG(int, job_retention, 1000,
          "finished jobs kept (records included); the oldest finished are forgotten first");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(20),
          "on SIGTERM, how long running jobs get to stop before the process exits anyway");
ABSL_FLAG(int, threads, 0, "oneTBB worker threads; 0 = all cores");
ABSL_FLAG(bool, once, false,
          "run one job (--model_id with --config_json or --config_file) without serving, "
          "print its artifact id on stdout and exit: 0 succeeded, 1 failed or cancelled, "
          "2 refused (bad flags, unknown model, invalid config)");
ABSL_FLAG(std::string, model_id, "", "--once: the model id under --model_root");
ABSL_FLAG(std::string, config_json, "",
          "--once: the wq.v1.WeightOnlyQuantConfig as JSON, e.g. "
          "'{\"weight_dtype\":\"INT4_CLIP\",\"group_size\":32}'");
ABSL_FLAG(std::string, config_file, "", "--once: a file holding --config_json's JSON");

namespace {

absl::StatusOr<wq::v1::SubmitJobRequest> OneShotFromFlags() {
  std::string config = absl::GetFlag(FLAGS_config_json);
  const std::string file = absl::GetFlag(FLAGS_config_file);
  if (!config.empty() == !file.empty()) {
    return absl::InvalidArgumentError("--once needs one of --config_json and --config_file");
  }
  if (!file.empty()) {
    constexpr uintmax_t kMaxConfigBytes = 1 << 20;
    std::error_code error;
    const uintmax_t size = std::filesystem::file_size(file, error);
    if (error) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot read --config_file=", file, ": ", error.message()));
    }
    if (size > kMaxConfigBytes) {
      return absl::InvalidArgumentError(absl::StrCat("--config_file=", file, " exceeds 1 MiB"));
    }
    std::ifstream in(file, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    config = text.str();
  }
  return wq::OneShotRequest(absl::GetFlag(FLAGS_model_id), config);
}

}  // namespace

int main(int argc, char** argv) {
  wq::TakeShutdownSignals();
  absl::SetProgramUsageMessage(
      "Serves wq.v1.QuantizerService.\nUsage: quantizer_service [--listen=host:port] "
      "[--model_root=DIR] [--artifact_root=DIR] [--workers=N]\n"
      "   or: quantizer_service --once --model_id=ID --config_json=JSON|--config_file=F "
      "[--model_root=DIR] [--artifact_root=DIR]");
  absl::ParseCommandLine(argc, argv);
  wq::SetLogServiceName("quantizer");

  const int threads = absl::GetFlag(FLAGS_threads);
  if (threads < 0) {
    wq::LogError("bad_flag", {{"message", "--threads must be >= 0 (0 = all cores)"}});
    return 2;
  }
  // Limits every oneTBB parallel region in the process (QuantizeModel's).
  tbb::global_control tbb_threads(
      tbb::global_control::max_allowed_parallelism,
      threads > 0 ? threads : tbb::info::default_concurrency());

  const bool once = absl::GetFlag(FLAGS_once);
  absl::StatusOr<wq::v1::SubmitJobRequest> one_shot;
  if (once) {
    one_shot = OneShotFromFlags();
    if (!one_shot.ok()) {
      wq::LogError("bad_flag", {{"message", std::string(one_shot.status().message())}});
      return wq::kOneShotBadRequest;
    }
  }

  wq::JobManager::Options options;
  options.model_root = absl::GetFlag(FLAGS_model_root);
  options.artifact_root = absl::GetFlag(FLAGS_artifact_root);
  options.data_root = absl::GetFlag(FLAGS_data_root);
  options.workers = absl::GetFlag(FLAGS_workers);
  options.job_retention = absl::GetFlag(FLAGS_job_retention);
  absl::StatusOr<std::unique_ptr<wq::JobManager>> jobs = wq::JobManager::Create(options);
  if (!jobs.ok()) {
    wq::LogError("startup_failed", {{"error", jobs.status().ToString()}});
    return 1;
  }
  const absl::Duration grace = absl::GetFlag(FLAGS_shutdown_grace);
  if (once) return wq::RunOneShot(**jobs, *one_shot, wq::ShutdownSignalled, grace);
  wq::QuantizerServiceImpl service(jobs->get());

  wq::ServerOptions server;
  server.listen = absl::GetFlag(FLAGS_listen);
  server.port_file = absl::GetFlag(FLAGS_port_file);
  server.http_listen = absl::GetFlag(FLAGS_http_listen);
  server.http_port_file = absl::GetFlag(FLAGS_http_port_file);
  server.security = wq::SecurityOptionsFromFlags();
  server.services = {{&service, wq::v1::QuantizerService::service_full_name()}};
  // Cancelled jobs end their WatchJob streams, so Shutdown finds no call left.
  server.shutdown_deadline = grace + absl::Seconds(2);
  server.on_shutdown = [&jobs, grace] {
    if (!(*jobs)->Shutdown(grace)) {
      // A stuck job (a read from a hung filesystem) would hold the process
      // and its pod forever. Its record says RUNNING, so the next start lists
      // it as interrupted; the shutdown itself was asked for, hence exit 0.
      wq::LogError("shutdown_forced", {{"exit_code", 0}});
      std::_Exit(0);
    }
  };
  return wq::ServeUntilShutdown(server, {{"model_root", options.model_root},
                                         {"artifact_root", options.artifact_root},
                                         {"workers", options.workers},
                                         {"job_retention", options.job_retention},
                                         {"threads", threads}});
}
