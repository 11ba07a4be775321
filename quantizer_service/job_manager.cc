#include "quantizer_service/job_manager.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <utility>

#include "absl/random/random.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/util/json_util.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/io/file_util.h"
#include "common/io/logging.h"
#include "common/io/metrics.h"
#include "common/io/process_memory.h"
#include "common/formats/quant_config.h"
#include "common/io/status_macros.h"

namespace wq {
namespace {

namespace fs = std::filesystem;

constexpr char kJobsDir[] = ".jobs";  // dot-entries are not artifacts
constexpr char kRecordSuffix[] = ".json";

// ListJobs pages: small by default, and never near gRPC's 4 MiB default
// message limit (a job's log alone may hold kMaxLogLines lines).
constexpr int kDefaultPageSize = 100;
constexpr int kMaxPageSize = 1000;
constexpr size_t kMaxPageBytes = 3 << 20;

// Job.log grows with notable events only, but a pathological job must not
// grow it without bound.
constexpr int kMaxLogLines = 200;

int64_t UnixNanos(const google::protobuf::Timestamp& ts) {
  return ts.seconds() * 1000000000 + ts.nanos();
}

void SetTimestamp(absl::Time t, google::protobuf::Timestamp* ts) {
  const int64_t nanos = absl::ToUnixNanos(t);
  ts->set_seconds(nanos / 1000000000);
  ts->set_nanos(static_cast<int32_t>(nanos % 1000000000));
}

v1::JobPhase PhaseOf(QuantizePhase phase) {
  switch (phase) {
    case QuantizePhase::kLoading: return v1::PHASE_LOADING;
    case QuantizePhase::kCalibration: return v1::PHASE_CALIBRATION;
    case QuantizePhase::kGridSearch: return v1::PHASE_GRID_SEARCH;
    case QuantizePhase::kClipSearch: return v1::PHASE_CLIP_SEARCH;
    case QuantizePhase::kQuantizing: return v1::PHASE_QUANTIZING;
    case QuantizePhase::kWriting: return v1::PHASE_WRITING;
    case QuantizePhase::kDone: return v1::PHASE_DONE;
  }
  return v1::JOB_PHASE_UNSPECIFIED;
}

void AppendLog(v1::Job* job, std::string line) {
  if (job->log_size() < kMaxLogLines) job->add_log(std::move(line));
}

std::string NewJobId() {
  // Random rather than sequential: ids stay unique across restarts.
  static absl::Mutex mu(absl::kConstInit);
  static absl::BitGen* gen = new absl::BitGen();
  absl::MutexLock lock(&mu);
  return absl::StrFormat("job-%016x", absl::Uniform<uint64_t>(*gen));
}

// Identifies what a job will produce without the model checksum (which
// costs a read of every weight): ArtifactIdFor hashes the same model id and
// resolved config, so equal keys mean equal artifacts while the model's
// files stay put.
std::string RequestKey(const std::string& model_id, const v1::WeightOnlyQuantConfig& resolved) {
  std::string key = absl::StrCat(model_id, "\n");
  google::protobuf::io::StringOutputStream out(&key);
  google::protobuf::io::CodedOutputStream coded(&out);
  coded.SetSerializationDeterministic(true);
  resolved.SerializeToCodedStream(&coded);
  coded.Trim();
  return key;
}

}  // namespace

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED || state == v1::JOB_STATE_CANCELLED;
}

absl::StatusOr<std::unique_ptr<JobManager>> JobManager::Create(Options options) {
  if (options.workers < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("workers must be >= 1, got ", options.workers));
  }
  // At least one: a job that just ended stays watchable.
  if (options.job_retention < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("job_retention must be >= 1, got ", options.job_retention));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<ArtifactStore> store,
                   ArtifactStore::Open(options.artifact_root));
  std::error_code ec;
  fs::create_directories(absl::StrCat(options.artifact_root, "/", kJobsDir), ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot create ", options.artifact_root, "/",
                                            kJobsDir, ": ", ec.message()));
  }
  return std::unique_ptr<JobManager>(
      new JobManager(std::move(options), std::move(store)));
}

JobManager::JobManager(Options options, std::unique_ptr<ArtifactStore> store)
    : options_(std::move(options)),
      store_(std::move(store)),
      jobs_dir_(absl::StrCat(options_.artifact_root, "/", kJobsDir)),
      registry_(options_.model_root) {
  {
    absl::MutexLock lock(&mu_);
    LoadRecords();
  }
  MetricsRegistry& metrics = MetricsRegistry::Default();
  jobs_collector_ =
      metrics
          .AddScrapedGauge("wq:quantize_jobs",
                           "Jobs held by the quantizer (finished ones up to --job_retention), "
                           "by state.",
                           {"state"})
          .AddCollector([this](const ScrapedGaugeFamily::Emit& emit) {
            std::map<v1::JobState, int> counts = {{v1::JOB_STATE_QUEUED, 0},
                                                  {v1::JOB_STATE_RUNNING, 0},
                                                  {v1::JOB_STATE_SUCCEEDED, 0},
                                                  {v1::JOB_STATE_FAILED, 0},
                                                  {v1::JOB_STATE_CANCELLED, 0}};
            {
              absl::MutexLock lock(&mu_);
              for (const auto& [id, entry] : jobs_) ++counts[entry->job.state()];
            }
            for (const auto& [state, count] : counts) emit({v1::JobState_Name(state)}, count);
          });
  phase_collector_ =
      metrics
          .AddScrapedGauge("wq:quantize_job_phase",
                           "1 for each running job, labelled with its current phase.",
                           {"job_id", "model_id", "phase"})
          .AddCollector([this](const ScrapedGaugeFamily::Emit& emit) {
            absl::MutexLock lock(&mu_);
            for (const auto& [id, entry] : jobs_) {
              if (entry->job.state() != v1::JOB_STATE_RUNNING) continue;
              emit({id, entry->job.model_id(), v1::JobPhase_Name(entry->job.progress().phase())},
                   1);
            }
          });
  for (int i = 0; i < options_.workers; ++i) {
    workers_.emplace_back([this] { WorkerLoop(); });
  }
}

JobManager::~JobManager() { Shutdown(); }

void JobManager::LoadRecords() {
  std::error_code ec;
  for (const auto& file : fs::directory_iterator(jobs_dir_, ec)) {
    const std::string path = file.path().string();
    const std::string name = file.path().filename().string();
    if (!absl::EndsWith(name, kRecordSuffix)) {
      // Only a crash mid-write leaves a temporary behind.
      std::error_code ignored;
      fs::remove(file.path(), ignored);
      continue;
    }
    absl::StatusOr<std::string> json = ReadFile(path);
    auto entry = std::make_unique<JobEntry>();
    google::protobuf::util::JsonParseOptions options;
    options.ignore_unknown_fields = true;  // records of a newer server
    absl::Status status = json.status();
    if (status.ok() &&
        !google::protobuf::util::JsonStringToMessage(*json, &entry->job, options).ok()) {
      status = absl::DataLossError("not a Job in JSON");
    }
    if (status.ok() && absl::StrCat(entry->job.job_id(), kRecordSuffix) != name) {
      status = absl::DataLossError("job_id does not match the file name");
    }
    if (!status.ok()) {
      LogWarning("job_record_skipped", {{"path", path}, {"error", status.ToString()}});
      continue;
    }
    v1::Job& job = entry->job;
    if (!IsTerminal(job.state())) {
      job.set_state(v1::JOB_STATE_FAILED);
      job.set_error_code(static_cast<int>(absl::StatusCode::kUnavailable));
      job.set_error_message("interrupted by restart");
      job.mutable_progress()->set_eta_seconds(-1);
      SetTimestamp(absl::Now(), job.mutable_end_time());
      AppendLog(&job, "failed: interrupted by restart");
      Persist(job);
      LogError("job_finished", {{"job_id", job.job_id()},
                                {"state", v1::JobState_Name(job.state())},
                                {"error", job.error_message()}});
    }
    order_.emplace(OrderKey{UnixNanos(job.create_time()), job.job_id()}, job.job_id());
    jobs_.emplace(job.job_id(), std::move(entry));
  }
  if (ec) {
    LogWarning("job_records_unreadable", {{"path", jobs_dir_}, {"error", ec.message()}});
  }
  LogInfo("job_records_loaded", {{"jobs", order_.size()}});
  EvictFinished();
}

void JobManager::EvictFinished() {
  std::vector<const JobEntry*> finished;
  for (const auto& [id, entry] : jobs_) {
    if (IsTerminal(entry->job.state())) finished.push_back(entry.get());
  }
  if (finished.size() <= static_cast<size_t>(options_.job_retention)) return;
  const size_t evict = finished.size() - options_.job_retention;
  // Oldest finished first.
  std::partial_sort(finished.begin(), finished.begin() + evict, finished.end(),
                    [](const JobEntry* a, const JobEntry* b) {
                      return std::make_pair(UnixNanos(a->job.end_time()), a->job.job_id()) <
                             std::make_pair(UnixNanos(b->job.end_time()), b->job.job_id());
                    });
  for (size_t i = 0; i < evict; ++i) {
    const v1::Job& job = finished[i]->job;
    const std::string id = job.job_id();
    std::error_code ec;
    fs::remove(absl::StrCat(jobs_dir_, "/", id, kRecordSuffix), ec);
    if (ec) LogWarning("job_record_not_removed", {{"job_id", id}, {"error", ec.message()}});
    order_.erase(OrderKey{UnixNanos(job.create_time()), id});
    jobs_.erase(id);
    LogInfo("job_evicted", {{"job_id", id}});
  }
}

void JobManager::Persist(const v1::Job& job) const {
  std::string json;
  google::protobuf::util::JsonPrintOptions print;
  print.preserve_proto_field_names = true;
  absl::Status status;
  if (!google::protobuf::util::MessageToJsonString(job, &json, print).ok()) {
    status = absl::InternalError("cannot serialise the job");
  }
  const std::string path = absl::StrCat(jobs_dir_, "/", job.job_id(), kRecordSuffix);
  const std::string tmp = absl::StrCat(path, ".tmp");
  // Temporary, then rename: a crash leaves the old record or the new one.
  if (status.ok()) status = WriteFileDurably(tmp, json);
  if (status.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    status = absl::InternalError(absl::StrCat("cannot rename ", tmp, ": ", strerror(errno)));
  }
  if (status.ok()) status = FsyncDirectory(jobs_dir_);
  if (!status.ok()) {
    LogError("job_persist_failed", {{"job_id", job.job_id()}, {"error", status.ToString()}});
  }
}

bool JobManager::Shutdown(absl::Duration grace) {
  const absl::Time deadline = absl::Now() + grace;
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_) {
      stopping_ = true;
      for (JobEntry* entry : queue_) {
        entry->cancelled.store(true);
        entry->job.set_state(v1::JOB_STATE_CANCELLED);
        entry->job.set_error_message("server shutting down");
        SetTimestamp(absl::Now(), entry->job.mutable_end_time());
        Touch(entry);
      }
      queue_.clear();
      EvictFinished();
      for (auto& [id, entry] : jobs_) {
        if (entry->job.state() == v1::JOB_STATE_RUNNING) entry->cancelled.store(true);
      }
      changed_.SignalAll();
    }
    while (running_ > 0 && absl::Now() < deadline) changed_.WaitWithDeadline(&mu_, deadline);
    if (running_ > 0) {
      // A job blocked where no cancellation check reaches (a hung read):
      // joining would wait for it without bound.
      LogError("shutdown_grace_expired", {{"running_jobs", running_},
                                          {"grace_seconds", absl::ToDoubleSeconds(grace)}});
      return false;
    }
  }
  for (std::thread& worker : workers_) {
    if (worker.joinable()) worker.join();
  }
  return true;
}

void JobManager::Touch(JobEntry* entry, bool persist) {
  if (persist) Persist(entry->job);
  ++entry->version;
  changed_.SignalAll();
}

absl::StatusOr<JobManager::JobEntry*> JobManager::Find(
    const std::string& job_id) const {
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) {
    return absl::NotFoundError(
        absl::StrCat("no job with id \"", job_id, "\"; see ListJobs"));
  }
  return it->second.get();
}

JobManager::JobEntry* JobManager::FindActive(const std::string& request_key) const {
  for (const auto& [id, entry] : jobs_) {
    if (entry->request_key == request_key && !IsTerminal(entry->job.state()) &&
        !entry->cancelled.load()) {
      return entry.get();
    }
  }
  return nullptr;
}

absl::Status JobManager::ValidateCalibration(
    const v1::WeightOnlyQuantConfig& config) const {
  if (!config.has_calibration() || !config.calibration().has_data_file()) {
    return absl::OkStatus();
  }
  // Same rules as resource ids (relative, no "..", no hidden entries), and
  // symlinks may not lead outside the data root.
  return ResolveUnderRoot(options_.data_root, config.calibration().data_file(),
                          "calibration data_file", 8)
      .status();
}

absl::StatusOr<v1::Job> JobManager::SubmitJob(const v1::SubmitJobRequest& request) {
  absl::StatusOr<std::string> model_dir = registry_.Resolve(request.model_id());
  if (absl::IsNotFound(model_dir.status())) {
    // Saying what exists saves the user a round trip.
    absl::StatusOr<std::vector<std::string>> known = registry_.List();
    return absl::NotFoundError(absl::StrCat(
        model_dir.status().message(), "; available models: ",
        known.ok() && !known->empty() ? absl::StrJoin(*known, ", ") : "(none)"));
  }
  if (!model_dir.ok()) return model_dir.status();
  ASSIGN_OR_RETURN(v1::WeightOnlyQuantConfig resolved,
                   ResolveQuantConfig(request.config()));
  RETURN_IF_ERROR(ValidateCalibration(request.config()));

  const std::string request_key = RequestKey(request.model_id(), resolved);
  auto entry = std::make_unique<JobEntry>();
  // Files are opened beneath the model root (the resolved real path is only
  // the check that the model exists).
  entry->model_dir = RootedPath(registry_.root(), request.model_id());
  entry->request_key = request_key;
  v1::Job& job = entry->job;
  job.set_job_id(NewJobId());
  job.set_model_id(request.model_id());
  *job.mutable_config() = request.config();
  job.set_state(v1::JOB_STATE_QUEUED);
  job.mutable_progress()->set_phase(v1::PHASE_QUEUED);
  job.mutable_progress()->set_eta_seconds(-1);
  SetTimestamp(absl::Now(), job.mutable_create_time());
  AppendLog(&job, absl::StrCat("config resolved to ", QuantConfigSlug(resolved)));
  if (resolved.algorithm() != v1::RTN) {
    const v1::CalibrationConfig& c = resolved.calibration();
    AppendLog(&job, absl::StrCat("calibration: up to ", c.n_samples(), " blocks x ", c.seq_len(),
                                 " tokens from ",
                                 c.has_data_file() ? c.data_file() : "the inline texts",
                                 ", fewer if the text holds less"));
  }

  absl::MutexLock lock(&mu_);
  if (stopping_) {
    return absl::UnavailableError("server is shutting down; retry elsewhere");
  }
  // Identical jobs would race to publish the same artifact; the newcomer
  // follows the queued or running one instead.
  if (JobEntry* same = FindActive(request_key)) {
    AppendLog(&same->job, "joined by an identical submission");
    Touch(same);
    LogInfo("job_joined", {{"job_id", same->job.job_id()}});
    return same->job;
  }
  v1::Job snapshot = job;
  JobEntry* raw = entry.get();
  order_.emplace(OrderKey{UnixNanos(job.create_time()), job.job_id()}, job.job_id());
  jobs_.emplace(job.job_id(), std::move(entry));
  queue_.push_back(raw);
  Touch(raw);
  LogInfo("job_submitted", {{"job_id", snapshot.job_id()},
                            {"model_id", snapshot.model_id()},
                            {"config", QuantConfigSlug(resolved)}});
  return snapshot;
}

absl::StatusOr<v1::Job> JobManager::GetJob(const std::string& job_id) const {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(JobEntry * entry, Find(job_id));
  return entry->job;
}

absl::StatusOr<v1::ListJobsResponse> JobManager::ListJobs(
    const v1::ListJobsRequest& request) const {
  if (request.page_size() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size must be >= 0 (0 = ", kDefaultPageSize, "), got ",
                     request.page_size()));
  }
  const int page_size = request.page_size() == 0 ? kDefaultPageSize
                                                 : std::min(request.page_size(), kMaxPageSize);
  // The token names the last job returned (create time and id), so pages
  // stay consistent while jobs are added or evicted, and across restarts.
  OrderKey after;
  const bool resume = !request.page_token().empty();
  if (resume) {
    const std::string& token = request.page_token();
    const size_t dot = token.find('.');
    if (dot == std::string::npos ||
        !absl::SimpleAtoi(absl::string_view(token).substr(0, dot), &after.first)) {
      return absl::InvalidArgumentError(
          "page_token is not one a ListJobs response returned; omit it to start over");
    }
    after.second = token.substr(dot + 1);
  }
  absl::MutexLock lock(&mu_);
  v1::ListJobsResponse response;
  size_t bytes = 0;
  for (auto it = resume ? order_.upper_bound(after) : order_.begin(); it != order_.end(); ++it) {
    const v1::Job& job = jobs_.at(it->second)->job;
    const size_t size = job.ByteSizeLong();
    if (response.jobs_size() == page_size ||
        (response.jobs_size() > 0 && bytes + size > kMaxPageBytes)) {
      const OrderKey& last = std::prev(it)->first;
      response.set_next_page_token(absl::StrCat(last.first, ".", last.second));
      break;
    }
    bytes += size;
    *response.add_jobs() = job;
  }
  return response;
}

absl::StatusOr<v1::Job> JobManager::CancelJob(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(JobEntry * entry, Find(job_id));
  v1::Job& job = entry->job;
  if (IsTerminal(job.state())) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", job_id, " already ended as ", v1::JobState_Name(job.state()),
        "; only queued or running jobs can be cancelled"));
  }
  entry->cancelled.store(true);
  if (job.state() == v1::JOB_STATE_QUEUED) {
    for (auto it = queue_.begin(); it != queue_.end(); ++it) {
      if (*it == entry) {
        queue_.erase(it);
        break;
      }
    }
    job.set_state(v1::JOB_STATE_CANCELLED);
    SetTimestamp(absl::Now(), job.mutable_end_time());
    AppendLog(&job, "cancelled while queued");
  } else {
    // The worker notices the flag between units of work and ends the job.
    AppendLog(&job, "cancellation requested");
  }
  Touch(entry);
  LogInfo("job_cancel", {{"job_id", job_id}});
  v1::Job snapshot = job;
  EvictFinished();  // may drop `entry`
  return snapshot;
}

absl::Status JobManager::WatchJob(const std::string& job_id,
                                  const std::function<bool(const v1::Job&)>& emit,
                                  const std::function<bool()>& stop,
                                  absl::Duration poll) const {
  int64_t seen = -1;
  while (true) {
    v1::Job snapshot;
    {
      absl::MutexLock lock(&mu_);
      ASSIGN_OR_RETURN(JobEntry * entry, Find(job_id));
      // Waking up every `poll` lets a watcher whose client left give up
      // even while the job makes no progress.
      while (entry->version == seen) {
        if (stop && stop()) return absl::CancelledError("watch cancelled");
        changed_.WaitWithTimeout(&mu_, poll);
      }
      snapshot = entry->job;
      seen = entry->version;
    }
    if (!emit(snapshot)) return absl::CancelledError("watcher went away");
    if (IsTerminal(snapshot.state())) return absl::OkStatus();
    if (stop && stop()) return absl::CancelledError("watch cancelled");
  }
}

void JobManager::WorkerLoop() {
  while (true) {
    JobEntry* entry = nullptr;
    {
      absl::MutexLock lock(&mu_);
      while (queue_.empty() && !stopping_) changed_.Wait(&mu_);
      if (queue_.empty()) return;  // stopping
      entry = queue_.front();
      queue_.pop_front();
      ++running_;
      entry->job.set_state(v1::JOB_STATE_RUNNING);
      entry->job.mutable_progress()->set_phase(v1::PHASE_LOADING);
      entry->started = absl::Now();
      SetTimestamp(entry->started, entry->job.mutable_start_time());
      Touch(entry);
    }
    RunJob(entry);
    absl::MutexLock lock(&mu_);
    --running_;
    changed_.SignalAll();
  }
}

void JobManager::RunJob(JobEntry* entry) {
  const std::string job_id = entry->job.job_id();
  LogInfo("job_started", {{"job_id", job_id}});
  QuantizeRequest request;
  {
    absl::MutexLock lock(&mu_);
    request.model_id = entry->job.model_id();
    request.config = entry->job.config();
  }
  request.model_dir = entry->model_dir;
  request.data_root = options_.data_root;
  request.cancelled = &entry->cancelled;
  request.on_progress = [this, entry, job_id](const QuantizeProgress& p) {
    absl::MutexLock lock(&mu_);
    v1::JobProgress* progress = entry->job.mutable_progress();
    const v1::JobPhase phase = PhaseOf(p.phase);
    const bool phase_changed = progress->phase() != phase;
    progress->set_phase(phase);
    progress->set_step(p.step);
    progress->set_total_steps(p.total_steps);
    // Percent never goes backwards, even if a phase re-estimates.
    const double percent = std::min(100.0, std::max(progress->percent(), 100.0 * p.fraction));
    progress->set_percent(percent);
    const double elapsed = absl::ToDoubleSeconds(absl::Now() - entry->started);
    progress->set_eta_seconds(
        p.fraction > 0 ? elapsed / p.fraction * (1 - p.fraction) : -1);
    progress->set_message(p.message);
    if (phase_changed) {
      AppendLog(&entry->job, absl::StrCat(v1::JobPhase_Name(phase), ": ", p.message));
    }
    // Progress ticks are too frequent to fsync; phases are few.
    Touch(entry, /*persist=*/phase_changed);
    LogInfo("job_progress", {{"job_id", job_id},
                             {"phase", v1::JobPhase_Name(phase)},
                             {"step", p.step},
                             {"total_steps", p.total_steps},
                             {"percent", percent},
                             {"message", p.message}});
  };

  absl::StatusOr<v1::ArtifactManifest> manifest = QuantizeModel(request, *store_);
  if (absl::IsAlreadyExists(manifest.status())) {
    // A job with another request key published the same artifact first
    // (model ids "a/b" and "a_b" of identical files, or the model's files
    // restored while one was queued); equal ids mean equal contents, so this
    // run reuses it rather than failing.
    manifest = QuantizeModel(request, *store_);
  }

  absl::MutexLock lock(&mu_);
  v1::Job& job = entry->job;
  SetTimestamp(absl::Now(), job.mutable_end_time());
  job.set_peak_memory_bytes(PeakResidentBytes());
  v1::JobProgress* progress = job.mutable_progress();
  if (manifest.ok()) {
    job.set_state(v1::JOB_STATE_SUCCEEDED);
    job.set_artifact_id(manifest->artifact_id());
    progress->set_phase(v1::PHASE_DONE);
    progress->set_percent(100);
    progress->set_eta_seconds(0);
    for (const std::string& line : manifest->log()) AppendLog(&job, line);
    AppendLog(&job, absl::StrCat("artifact ", manifest->artifact_id()));
  } else if (absl::IsCancelled(manifest.status()) || entry->cancelled.load()) {
    job.set_state(v1::JOB_STATE_CANCELLED);
    job.set_error_code(static_cast<int>(absl::StatusCode::kCancelled));
    job.set_error_message(std::string(manifest.status().message()));
  } else {
    job.set_state(v1::JOB_STATE_FAILED);
    job.set_error_code(static_cast<int>(manifest.status().code()));
    job.set_error_message(std::string(manifest.status().message()));
    AppendLog(&job, absl::StrCat("failed: ", manifest.status().ToString()));
  }
  Touch(entry);
  const double seconds = absl::ToDoubleSeconds(absl::Now() - entry->started);
  MetricsRegistry::Default()
      .AddHistogram("wq:quantize_job_duration_seconds",
                    "Run time of jobs a worker ran, by final state.", {"state"},
                    {0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400})
      .WithLabels({v1::JobState_Name(job.state())})
      ->Observe(seconds);
  Log(job.state() == v1::JOB_STATE_FAILED ? LogLevel::kError : LogLevel::kInfo, "job_finished",
      {{"job_id", job_id},
       {"state", v1::JobState_Name(job.state())},
       {"artifact_id", job.artifact_id()},
       {"error", job.error_message()},
       {"seconds", seconds},
       {"peak_memory_bytes", job.peak_memory_bytes()}});
  EvictFinished();  // may drop `entry`
}

absl::StatusOr<v1::Artifact> JobManager::ArtifactOf(
    const v1::ArtifactManifest& manifest) const {
  v1::Artifact artifact;
  artifact.set_artifact_id(manifest.artifact_id());
  artifact.set_format_version(manifest.format_version());
  artifact.set_source_model_id(manifest.source_model_id());
  artifact.set_source_checksum(manifest.source_checksum());
  *artifact.mutable_config() = manifest.config();
  ASSIGN_OR_RETURN(int64_t size, store_->SizeBytes(manifest.artifact_id()));
  artifact.set_size_bytes(size);
  artifact.set_bits_per_weight(manifest.bits_per_weight());
  artifact.set_quantized_params(manifest.quantized_params());
  artifact.set_fp32_params(manifest.fp32_params());
  ASSIGN_OR_RETURN(std::string sha,
                   Sha256File(store_->ArtifactPath(manifest.artifact_id()).Child(kManifestFile)));
  artifact.set_manifest_sha256(sha);
  *artifact.mutable_create_time() = manifest.create_time();
  return artifact;
}

std::vector<v1::Artifact> JobManager::ListArtifacts() const {
  std::vector<v1::Artifact> artifacts;
  for (const v1::ArtifactManifest& manifest : store_->List()) {
    absl::StatusOr<v1::Artifact> artifact = ArtifactOf(manifest);
    // One unreadable artifact must not hide the others.
    if (artifact.ok()) artifacts.push_back(*std::move(artifact));
  }
  return artifacts;
}

absl::StatusOr<v1::Artifact> JobManager::GetArtifact(const std::string& artifact_id) const {
  ASSIGN_OR_RETURN(v1::ArtifactManifest manifest, store_->ReadManifest(artifact_id));
  return ArtifactOf(manifest);
}

}  // namespace wq
