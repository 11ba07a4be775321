// wq.v1.QuantizerService over a JobManager: request/response mapping only.
#ifndef WQ_QUANTIZER_SERVICE_QUANTIZER_SERVICE_H_
#define WQ_QUANTIZER_SERVICE_QUANTIZER_SERVICE_H_

#include "wq/v1/quantizer.grpc.pb.h"
#include "quantizer_service/job_manager.h"

namespace wq {

class QuantizerServiceImpl final : public v1::QuantizerService::Service {
 public:
  explicit QuantizerServiceImpl(JobManager* jobs) : jobs_(jobs) {}

  grpc::Status SubmitJob(grpc::ServerContext* context,
                         const v1::SubmitJobRequest* request,
                         v1::Job* response) override;
  grpc::Status GetJob(grpc::ServerContext* context, const v1::GetJobRequest* request,
                      v1::Job* response) override;
  grpc::Status WatchJob(grpc::ServerContext* context,
                        const v1::WatchJobRequest* request,
                        grpc::ServerWriter<v1::Job>* writer) override;
  grpc::Status CancelJob(grpc::ServerContext* context,
                         const v1::CancelJobRequest* request,
                         v1::Job* response) override;
  grpc::Status ListJobs(grpc::ServerContext* context,
                        const v1::ListJobsRequest* request,
                        v1::ListJobsResponse* response) override;
  grpc::Status ListArtifacts(grpc::ServerContext* context,
                             const v1::ListArtifactsRequest* request,
                             v1::ListArtifactsResponse* response) override;
  grpc::Status GetArtifact(grpc::ServerContext* context,
                           const v1::GetArtifactRequest* request,
                           v1::Artifact* response) override;

 private:
  JobManager* jobs_;  // not owned
};

}  // namespace wq

#endif  // WQ_QUANTIZER_SERVICE_QUANTIZER_SERVICE_H_
