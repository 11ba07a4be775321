// wqctl commands of the quantizer service.
#include <algorithm>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cli/common.h"
#include "wq/v1/quantizer.grpc.pb.h"

// quantize
ABSL_FLAG(std::string, weight_dtype, "",
          "int4_clip|int4_fullrange|int8|nf4|fp4_e2m1|int3|int2 (default nf4)");
ABSL_FLAG(std::string, scheme, "", "sym|asym (default sym)");
ABSL_FLAG(std::string, group_size, "", "weights per group; -1 = per channel (default 32)");
ABSL_FLAG(std::string, algorithm, "", "rtn|awq|teq (default rtn)");
ABSL_FLAG(bool, mse_range, false, "search a clip ratio per layer (with any algorithm)");
ABSL_FLAG(std::string, scale_dtype, "", "fp32|bf16 (default fp32)");
ABSL_FLAG(std::string, compute_dtype, "",
          "fp32|bf16|int8: the arithmetic the artifact is served with (default fp32; "
          "int8 runs the packed integer kernels, sym schemes only)");
ABSL_FLAG(bool, double_quant, false, "quantize the scales too");
ABSL_FLAG(std::vector<std::string>, skip_modules, {},
          "modules kept in fp32, names or globs (default lm_head)");
ABSL_FLAG(std::string, calib_file, "",
          "calibration text file under the server's data root (awq and teq need it)");
ABSL_FLAG(int, n_samples, 0, "calibration blocks (0 = server default, 128)");
ABSL_FLAG(int, seq_len, 0, "calibration block length in tokens (0 = server default, 512)");
ABSL_FLAG(bool, wait, true, "quantize: watch the job until it ends");
// jobs
ABSL_FLAG(std::string, job, "", "job id (cancel, watch)");
namespace wq {
namespace {

template <typename Enum>
bool ParseEnum(const std::string& text, const std::map<std::string, Enum>& names,
               Enum* out) {
  if (text.empty()) return true;  // leave the server's default
  auto it = names.find(absl::AsciiStrToLower(text));
  if (it == names.end()) return false;
  *out = it->second;
  return true;
}

void PrintProgress(const v1::Job& job) {
  const v1::JobProgress& p = job.progress();
  std::string detail = p.message();
  if (detail.empty()) {
    detail = Lower(v1::JobPhase_Name(p.phase()).substr(6));  // drop "PHASE_"
    if (p.total_steps() > 0) detail += absl::StrFormat(" %d/%d", p.step(), p.total_steps());
  }
  std::string eta = p.eta_seconds() >= 0 ? absl::StrFormat(" eta %.1fs", p.eta_seconds()) : "";
  std::cerr << absl::StrFormat("[%3.0f%%] %s%s\n", p.percent(), detail, eta);
}

// One WatchJob stream: progress lines (or JSON) as they come; the last
// snapshot in `last`.
grpc::Status WatchOnce(v1::QuantizerService::Stub& stub, const std::string& job_id,
                       v1::Job* last) {
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::WatchJobRequest request;
  request.set_job_id(job_id);
  auto reader = stub.WatchJob(&context, request);
  v1::Job job;
  while (reader->Read(&job)) {
    if (JsonOutput()) {
      PrintJson(job);
    } else {
      PrintProgress(job);
    }
    *last = job;
  }
  return reader->Finish();
}

// Watches the job to its end; exit code by its final state. A server that
// goes away (a restart, a rescheduled pod) is waited for with backoff until
// the command's deadline: the job's record survives the restart.
int Watch(v1::QuantizerService::Stub& stub, const std::string& job_id) {
  v1::Job last;
  absl::Duration backoff = absl::Milliseconds(250);
  grpc::Status status;
  while (true) {
    status = WatchOnce(stub, job_id, &last);
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE) break;
    if (absl::Now() + backoff >= CommandDeadline()) {
      std::cerr << "wqctl: the quantizer stayed unavailable until --timeout_s passed\n";
      return RpcError("WatchJob", grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                                               status.error_message()));
    }
    std::cerr << "wqctl: WatchJob unavailable (" << status.error_message() << "); retrying in "
              << absl::FormatDuration(backoff) << "\n";
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(5));
  }
  if (!status.ok()) return RpcError("WatchJob", status);
  switch (last.state()) {
    case v1::JOB_STATE_SUCCEEDED:
      std::cerr << "job " << last.job_id() << " succeeded\n";
      if (!JsonOutput()) std::cout << last.artifact_id() << "\n";
      return kOk;
    case v1::JOB_STATE_CANCELLED:
      std::cerr << "job " << last.job_id() << " was cancelled\n";
      return kFailed;
    default:
      std::cerr << "job " << last.job_id() << " failed: " << last.error_message() << "\n";
      return kFailed;
  }
}

}  // namespace

int Quantize() {
  v1::SubmitJobRequest request;
  request.set_model_id(absl::GetFlag(FLAGS_model));
  if (request.model_id().empty()) return UsageError("quantize needs --model=ID");
  v1::WeightOnlyQuantConfig* config = request.mutable_config();
  v1::WeightDtype dtype = v1::WEIGHT_DTYPE_UNSPECIFIED;
  if (!ParseEnum<v1::WeightDtype>(absl::GetFlag(FLAGS_weight_dtype),
                                  {{"int4_clip", v1::INT4_CLIP},
                                   {"int4_fullrange", v1::INT4_FULLRANGE},
                                   {"int8", v1::INT8},
                                   {"nf4", v1::NF4},
                                   {"fp4_e2m1", v1::FP4_E2M1},
                                   {"int3", v1::INT3},
                                   {"int2", v1::INT2}},
                                  &dtype)) {
    return UsageError(
        "--weight_dtype must be int4_clip, int4_fullrange, int8, nf4, fp4_e2m1, int3 or int2");
  }
  config->set_weight_dtype(dtype);
  v1::Scheme scheme = v1::SCHEME_UNSPECIFIED;
  if (!ParseEnum<v1::Scheme>(absl::GetFlag(FLAGS_scheme),
                             {{"sym", v1::SYM}, {"asym", v1::ASYM}}, &scheme)) {
    return UsageError("--scheme must be sym or asym");
  }
  config->set_scheme(scheme);
  v1::Algorithm algorithm = v1::ALGORITHM_UNSPECIFIED;
  if (!ParseEnum<v1::Algorithm>(absl::GetFlag(FLAGS_algorithm),
                                {{"rtn", v1::RTN}, {"awq", v1::AWQ}, {"teq", v1::TEQ}},
                                &algorithm)) {
    return UsageError("--algorithm must be rtn, awq or teq");
  }
  config->set_algorithm(algorithm);
  if (const std::string g = absl::GetFlag(FLAGS_group_size); !g.empty()) {
    int group = 0;
    if (!absl::SimpleAtoi(g, &group)) return UsageError("--group_size must be an integer");
    config->set_group_size(group);  // the server says which values it accepts
  }
  v1::ScaleDtype scale_dtype = v1::SCALE_DTYPE_UNSPECIFIED;
  if (!ParseEnum<v1::ScaleDtype>(absl::GetFlag(FLAGS_scale_dtype),
                                 {{"fp32", v1::SCALE_FP32}, {"bf16", v1::SCALE_BF16}},
                                 &scale_dtype)) {
    return UsageError("--scale_dtype must be fp32 or bf16");
  }
  config->set_scale_dtype(scale_dtype);
  v1::ComputeDtype compute_dtype = v1::COMPUTE_DTYPE_UNSPECIFIED;
  if (!ParseEnum<v1::ComputeDtype>(
          absl::GetFlag(FLAGS_compute_dtype),
          {{"fp32", v1::COMPUTE_FP32}, {"bf16", v1::COMPUTE_BF16}, {"int8", v1::COMPUTE_INT8}},
          &compute_dtype)) {
    return UsageError("--compute_dtype must be fp32, bf16 or int8");
  }
  config->set_compute_dtype(compute_dtype);
  config->set_mse_range(absl::GetFlag(FLAGS_mse_range));
  config->set_use_double_quant(absl::GetFlag(FLAGS_double_quant));
  for (const std::string& m : absl::GetFlag(FLAGS_skip_modules)) {
    config->add_llm_int8_skip_modules(m);
  }
  if (const std::string f = absl::GetFlag(FLAGS_calib_file); !f.empty()) {
    config->mutable_calibration()->set_data_file(f);
  }
  if (absl::GetFlag(FLAGS_n_samples) != 0 || absl::GetFlag(FLAGS_seq_len) != 0) {
    config->mutable_calibration()->set_n_samples(absl::GetFlag(FLAGS_n_samples));
    config->mutable_calibration()->set_seq_len(absl::GetFlag(FLAGS_seq_len));
  }

  auto stub = v1::QuantizerService::NewStub(Connect(false));
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::Job job;
  grpc::Status status = stub->SubmitJob(&context, request, &job);
  if (!status.ok()) return RpcError("SubmitJob", status);
  std::cerr << "submitted job " << job.job_id() << "\n";
  if (!absl::GetFlag(FLAGS_wait)) {
    if (JsonOutput()) {
      PrintJson(job);
    } else {
      std::cout << job.job_id() << "\n";
    }
    return kOk;
  }
  return Watch(*stub, job.job_id());
}

void PrintJob(const v1::Job& job) {
  if (JsonOutput()) return PrintJson(job);
  std::cout << absl::StrFormat("%-22s %-10s %-24s %5.1f%% %s\n", job.job_id(),
                               Lower(v1::JobState_Name(job.state()).substr(10)), job.model_id(),  // drop "JOB_STATE_"
                               job.progress().percent(),
                               job.state() == v1::JOB_STATE_FAILED ? job.error_message()
                                                         : job.artifact_id());
}

int Jobs() {
  auto stub = v1::QuantizerService::NewStub(Connect(false));
  if (!JsonOutput()) {
    std::cout << absl::StrFormat("%-22s %-10s %-24s %6s %s\n", "JOB", "STATE", "MODEL",
                                 "DONE", "ARTIFACT/ERROR");
  }
  // The server answers a page at a time.
  v1::ListJobsRequest request;
  do {
    grpc::ClientContext context;
    SetDeadline(&context);
    v1::ListJobsResponse response;
    grpc::Status status = stub->ListJobs(&context, request, &response);
    if (!status.ok()) return RpcError("ListJobs", status);
    for (const v1::Job& job : response.jobs()) PrintJob(job);
    request.set_page_token(response.next_page_token());
  } while (!request.page_token().empty());
  return kOk;
}

int Cancel() {
  v1::CancelJobRequest request;
  request.set_job_id(absl::GetFlag(FLAGS_job));
  if (request.job_id().empty()) return UsageError("cancel needs --job=ID");
  auto stub = v1::QuantizerService::NewStub(Connect(false));
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::Job job;
  grpc::Status status = stub->CancelJob(&context, request, &job);
  if (!status.ok()) return RpcError("CancelJob", status);
  PrintJob(job);
  return kOk;
}

int WatchCommand() {
  const std::string job_id = absl::GetFlag(FLAGS_job);
  if (job_id.empty()) return UsageError("watch needs --job=ID");
  auto stub = v1::QuantizerService::NewStub(Connect(false));
  return Watch(*stub, job_id);
}

int Artifacts() {
  auto stub = v1::QuantizerService::NewStub(Connect(false));
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::ListArtifactsResponse response;
  grpc::Status status =
      stub->ListArtifacts(&context, v1::ListArtifactsRequest(), &response);
  if (!status.ok()) return RpcError("ListArtifacts", status);
  if (JsonOutput()) {
    for (const v1::Artifact& a : response.artifacts()) PrintJson(a);
    return kOk;
  }
  std::cout << absl::StrFormat("%-48s %-14s %-6s %6s %10s %12s %s\n", "ID", "DTYPE",
                               "SCHEME", "GROUP", "BITS/W", "SIZE", "SOURCE");
  for (const v1::Artifact& a : response.artifacts()) {
    std::cout << absl::StrFormat(
        "%-48s %-14s %-6s %6d %10.3f %12d %s\n", a.artifact_id(),
        Lower(v1::WeightDtype_Name(a.config().weight_dtype())),
        Lower(v1::Scheme_Name(a.config().scheme())), a.config().group_size(),
        a.bits_per_weight(), a.size_bytes(), a.source_model_id());
  }
  return kOk;
}

}  // namespace wq
