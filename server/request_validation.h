// Checks every request of a gRPC service before its handler runs, in one
// place for all RPCs: each string field (nested messages and repeated
// entries included) must be valid UTF-8 and within its size limit, else the
// call ends INVALID_ARGUMENT naming the field. Without it, invalid UTF-8 in a
// proto3 string field fails protobuf's parse inside gRPC and the client gets
// INTERNAL with an empty message.
#ifndef WQ_SERVER_REQUEST_VALIDATION_H_
#define WQ_SERVER_REQUEST_VALIDATION_H_

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/service_type.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace wq {

// Ids (fields named model, model_id, artifact_id, job_id) are at most this
// many bytes; every other string field (prompts, chat messages, stop
// sequences, calibration texts, ...) at most kMaxTextBytes.
inline constexpr size_t kMaxIdBytes = 256;
inline constexpr size_t kMaxTextBytes = size_t{1} << 20;
// gRPC's limits, set explicitly on the server: a request message (all its
// prompts together) and a call's metadata.
inline constexpr int kMaxRequestBytes = 4 << 20;
inline constexpr int kMaxMetadataBytes = 16 << 10;

// `bytes` is a serialized message of `type`. OK, or INVALID_ARGUMENT naming
// the first bad field ("prompts[1] is not valid UTF-8") or saying that the
// bytes are no message at all.
absl::Status ValidateRequestBytes(absl::string_view bytes,
                                  const google::protobuf::Descriptor& type);

// A service that serves `inner`'s methods (a generated service, not owned,
// `descriptor` its proto service; `callback_methods` names those `inner`
// implements on the callback API, the rest are synchronous) with
// ValidateRequestBytes run on each request before `inner`'s handler.
// Register it instead of `inner`.
std::unique_ptr<grpc::Service> WithRequestValidation(
    grpc::Service* inner, const google::protobuf::ServiceDescriptor& descriptor,
    const std::vector<std::string>& callback_methods = {});

// gRPC's callback handlers answer a request that fails to deserialize with
// UNIMPLEMENTED and no message. So a callback method is handed instead an
// empty request carrying the refusal in a reserved field number (which
// clients may not use), and must first answer with RequestRefusal(*request)
// when it is set.
std::optional<grpc::Status> RequestRefusal(const google::protobuf::Message& request);

}  // namespace wq

#endif  // WQ_SERVER_REQUEST_VALIDATION_H_
