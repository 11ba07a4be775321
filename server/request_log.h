// Request ids, one structured log line per request and wq:requests_total, for
// every gRPC call (a server interceptor) and every HTTP request (httplib's
// pre-routing handler and logger) of both services.
//
// The id is the client's `x-request-id` (gRPC metadata or HTTP header) when it
// is 1-128 visible ASCII characters, else a new random one. It goes back in
// the response: gRPC initial metadata (and trailing metadata of a failed
// call, which may end before initial metadata is sent), the HTTP response
// header. Handlers read it as the response's x-request-id header (HTTP) or
// with RequestId (gRPC).
//
// At the end of a request:
//   {"event":"request","protocol":"grpc","request_id":"...",
//    "method":"/wq.v1.InferenceService/Generate","code":"OK",
//    "duration_ms":12.5,"peer":"ipv4:127.0.0.1:5555",...fields a handler added}
#ifndef WQ_SERVER_REQUEST_LOG_H_
#define WQ_SERVER_REQUEST_LOG_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/server_interceptor.h>
#include <httplib.h>

#include "absl/container/flat_hash_set.h"
#include "nlohmann/json.hpp"

namespace wq {

inline constexpr char kRequestIdHeader[] = "x-request-id";

// `client_value` if it is a usable id, else a new random one (32 hex digits).
std::string RequestIdOrNew(std::string_view client_value);

// The full names ("/wq.v1.InferenceService/Generate") of the methods of
// these services (full names, "wq.v1.InferenceService"), as protobuf's
// generated pool describes them, plus gRPC's health and reflection methods.
absl::flat_hash_set<std::string> KnownGrpcMethods(const std::vector<std::string>& services);

// Creates the interceptor that gives each gRPC call its id, log line and count.
// wq:requests_total labels a method outside `known_methods` (a client may
// call any name; gRPC answers UNIMPLEMENTED) "(unknown)", so that clients
// cannot grow the label set; the log line keeps the name.
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
NewRequestLogInterceptorFactory(absl::flat_hash_set<std::string> known_methods);

// The id of a call in flight on a server built with that interceptor; empty
// otherwise.
std::string RequestId(const grpc::ServerContextBase& context);

// Adds fields (a JSON object: token counts, the model) to the call's log line.
// No effect on a call the interceptor does not know.
void AddRequestLogFields(const grpc::ServerContextBase& context, const nlohmann::json& fields);

// Sets x-request-id on every response before routing, and logs and counts
// each request once its response is written. Takes the server's pre-routing
// handler (httplib has one) and logger; `then`, when set, runs next in the
// pre-routing step (e.g. the token check) and may answer the request itself.
void InstallHttpRequestLog(httplib::Server& server,
                           httplib::Server::HandlerWithResponse then = nullptr);

}  // namespace wq

#endif  // WQ_SERVER_REQUEST_LOG_H_
