#include "quantizer_service/quantizer_service.h"

#include "server/server.h"

namespace wq {
namespace {

// Copies an OK StatusOr into the response, or maps the error.
template <typename T>
grpc::Status Reply(absl::StatusOr<T> result, T* response) {
  if (!result.ok()) return ToGrpcStatus(result.status());
  *response = *std::move(result);
  return grpc::Status::OK;
}

}  // namespace

grpc::Status QuantizerServiceImpl::SubmitJob(grpc::ServerContext*,
                                             const v1::SubmitJobRequest* request,
                                             v1::Job* response) {
  return Reply(jobs_->SubmitJob(*request), response);
}

grpc::Status QuantizerServiceImpl::GetJob(grpc::ServerContext*,
                                          const v1::GetJobRequest* request,
                                          v1::Job* response) {
  return Reply(jobs_->GetJob(request->job_id()), response);
}

grpc::Status QuantizerServiceImpl::WatchJob(grpc::ServerContext* context,
                                            const v1::WatchJobRequest* request,
                                            grpc::ServerWriter<v1::Job>* writer) {
  absl::Status status = jobs_->WatchJob(
      request->job_id(), [writer](const v1::Job& job) { return writer->Write(job); },
      [context] { return context->IsCancelled(); });
  return ToGrpcStatus(status);
}

grpc::Status QuantizerServiceImpl::CancelJob(grpc::ServerContext*,
                                             const v1::CancelJobRequest* request,
                                             v1::Job* response) {
  return Reply(jobs_->CancelJob(request->job_id()), response);
}

grpc::Status QuantizerServiceImpl::ListJobs(grpc::ServerContext*,
                                            const v1::ListJobsRequest* request,
                                            v1::ListJobsResponse* response) {
  return Reply(jobs_->ListJobs(*request), response);
}

grpc::Status QuantizerServiceImpl::ListArtifacts(grpc::ServerContext*,
                                                 const v1::ListArtifactsRequest*,
                                                 v1::ListArtifactsResponse* response) {
  for (v1::Artifact& artifact : jobs_->ListArtifacts()) {
    *response->add_artifacts() = std::move(artifact);
  }
  return grpc::Status::OK;
}

grpc::Status QuantizerServiceImpl::GetArtifact(grpc::ServerContext*,
                                               const v1::GetArtifactRequest* request,
                                               v1::Artifact* response) {
  return Reply(jobs_->GetArtifact(request->artifact_id()), response);
}

}  // namespace wq
