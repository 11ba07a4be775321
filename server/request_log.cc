#include "server/request_log.h"

#include <cstdint>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/io/logging.h"
#include "common/io/metrics.h"
#include "google/protobuf/descriptor.h"

namespace wq {
namespace {

constexpr size_t kMaxRequestIdLength = 128;

MetricFamily<Counter>& RequestsTotal() {
  static MetricFamily<Counter>& family = MetricsRegistry::Default().AddCounter(
      "wq:requests_total",
      "Requests ended, by gRPC method or HTTP route and by gRPC code or HTTP status.",
      {"method", "code"});
  return family;
}

// One line and one count per request; server faults log as errors.
void RecordRequest(nlohmann::json line, const std::string& method, const std::string& code,
                   bool server_fault) {
  RequestsTotal().WithLabels({method, code})->Inc();
  Log(server_fault ? LogLevel::kError : LogLevel::kInfo, "request", line);
}

double MillisecondsSince(absl::Time start) {
  return absl::ToDoubleMilliseconds(absl::Now() - start);
}

class RequestLogInterceptor;

// Calls in flight by their context, so that handlers can reach their own.
absl::Mutex g_calls_mu;
absl::flat_hash_map<const grpc::ServerContextBase*, RequestLogInterceptor*>& Calls()
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(g_calls_mu) {
  static auto* calls =
      new absl::flat_hash_map<const grpc::ServerContextBase*, RequestLogInterceptor*>();
  return *calls;
}

class RequestLogInterceptor : public grpc::experimental::Interceptor {
 public:
  RequestLogInterceptor(grpc::experimental::ServerRpcInfo* info, bool known_method)
      : context_(info->server_context()),
        method_(info->method()),
        method_label_(known_method ? method_ : "(unknown)"),
        start_(absl::Now()) {
    absl::MutexLock lock(&g_calls_mu);
    Calls()[context_] = this;
  }

  ~RequestLogInterceptor() override {
    // A call that sent no status (none does today) still gets its line; the
    // context is being destroyed, so nothing is read from it.
    if (!recorded_) Record(grpc::Status(grpc::StatusCode::CANCELLED, "ended without a status"));
    absl::MutexLock lock(&g_calls_mu);
    Calls().erase(context_);
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using Hook = grpc::experimental::InterceptionHookPoints;
    if (methods->QueryInterceptionHookPoint(Hook::POST_RECV_INITIAL_METADATA)) {
      std::string client_value;
      const auto* metadata = methods->GetRecvInitialMetadata();
      if (auto it = metadata->find(kRequestIdHeader); it != metadata->end()) {
        client_value.assign(it->second.data(), it->second.size());
      }
      peer_ = context_->peer();
      absl::MutexLock lock(&g_calls_mu);
      request_id_ = RequestIdOrNew(client_value);
    }
    if (methods->QueryInterceptionHookPoint(Hook::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->emplace(kRequestIdHeader, id());
    }
    if (methods->QueryInterceptionHookPoint(Hook::PRE_SEND_STATUS)) {
      const grpc::Status status = methods->GetSendStatus();
      if (!status.ok()) methods->GetSendTrailingMetadata()->emplace(kRequestIdHeader, id());
      Record(status);
    }
    methods->Proceed();
  }

  std::string id() {
    absl::MutexLock lock(&g_calls_mu);
    if (request_id_.empty()) request_id_ = RequestIdOrNew("");
    return request_id_;
  }

  void AddFields(const nlohmann::json& fields) ABSL_EXCLUSIVE_LOCKS_REQUIRED(g_calls_mu) {
    if (fields.is_object()) fields_.update(fields);
  }

 private:
  void Record(const grpc::Status& status) {
    recorded_ = true;
    const std::string code =
        absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code()));
    nlohmann::json line = {{"protocol", "grpc"},
                           {"request_id", id()},
                           {"method", method_},
                           {"code", code},
                           {"duration_ms", MillisecondsSince(start_)},
                           {"peer", peer_}};
    if (!status.ok()) line["error"] = status.error_message();
    {
      absl::MutexLock lock(&g_calls_mu);
      line.update(fields_);
    }
    const grpc::StatusCode c = status.error_code();
    RecordRequest(std::move(line), method_label_, code,
                  c == grpc::StatusCode::INTERNAL || c == grpc::StatusCode::UNKNOWN ||
                      c == grpc::StatusCode::DATA_LOSS);
  }

  grpc::ServerContextBase* const context_;
  const std::string method_, method_label_;
  const absl::Time start_;
  std::string peer_;
  std::string request_id_ ABSL_GUARDED_BY(g_calls_mu);
  nlohmann::json fields_ ABSL_GUARDED_BY(g_calls_mu) = nlohmann::json::object();
  bool recorded_ = false;
};

class RequestLogInterceptorFactory
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit RequestLogInterceptorFactory(absl::flat_hash_set<std::string> known_methods)
      : known_methods_(std::move(known_methods)) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new RequestLogInterceptor(info, known_methods_.contains(info->method()));
  }

 private:
  const absl::flat_hash_set<std::string> known_methods_;
};

// The HTTP request a pool thread serves: httplib runs pre-routing, the
// handler, the response write and the logger of one request on one thread.
// A request it rejects before routing (malformed, URI too long) reaches the
// logger without pre-routing, with `routed` false.
struct HttpRequestInFlight {
  bool routed = false;
  absl::Time start;
};
thread_local HttpRequestInFlight t_http_request;

// The route as registered, not the raw path, so that the label set stays
// bounded: capture groups read "*", unmatched paths "(unmatched)".
std::string HttpRouteLabel(const httplib::Request& request) {
  if (request.matches.empty()) return absl::StrCat(request.method, " (unmatched)");
  std::string path = request.path;
  for (size_t i = request.matches.size(); i-- > 1;) {
    if (request.matches[i].matched) {
      path.replace(request.matches.position(i), request.matches.length(i), "*");
    }
  }
  return absl::StrCat(request.method, " ", path);
}

}  // namespace

std::string RequestIdOrNew(std::string_view client_value) {
  bool usable = !client_value.empty() && client_value.size() <= kMaxRequestIdLength;
  for (char c : client_value) usable = usable && c > ' ' && c <= '~';
  if (usable) return std::string(client_value);
  thread_local absl::BitGen bits;
  return absl::StrFormat("%016x%016x", absl::Uniform<uint64_t>(bits),
                         absl::Uniform<uint64_t>(bits));
}

absl::flat_hash_set<std::string> KnownGrpcMethods(const std::vector<std::string>& services) {
  // Served by gRPC itself, from descriptors outside protobuf's pool.
  absl::flat_hash_set<std::string> methods = {
      "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
      "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
      "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"};
  for (const std::string& name : services) {
    const google::protobuf::ServiceDescriptor* service =
        google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(name);
    if (service == nullptr) continue;
    for (int i = 0; i < service->method_count(); ++i) {
      methods.insert(absl::StrCat("/", name, "/", service->method(i)->name()));
    }
  }
  return methods;
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
NewRequestLogInterceptorFactory(absl::flat_hash_set<std::string> known_methods) {
  return std::make_unique<RequestLogInterceptorFactory>(std::move(known_methods));
}

std::string RequestId(const grpc::ServerContextBase& context) {
  RequestLogInterceptor* call = nullptr;
  {
    absl::MutexLock lock(&g_calls_mu);
    auto it = Calls().find(&context);
    if (it == Calls().end()) return "";
    call = it->second;
  }
  // The call is in flight (its handler asks), so its interceptor lives.
  return call->id();
}

void AddRequestLogFields(const grpc::ServerContextBase& context, const nlohmann::json& fields) {
  absl::MutexLock lock(&g_calls_mu);
  auto it = Calls().find(&context);
  if (it != Calls().end()) it->second->AddFields(fields);
}

void InstallHttpRequestLog(httplib::Server& server, httplib::Server::HandlerWithResponse then) {
  server.set_pre_routing_handler([then = std::move(then)](const httplib::Request& request,
                                                          httplib::Response& response) {
    t_http_request = {true, absl::Now()};
    response.set_header(kRequestIdHeader,
                        RequestIdOrNew(request.get_header_value(kRequestIdHeader)));
    return then ? then(request, response) : httplib::Server::HandlerResponse::Unhandled;
  });
  server.set_logger([](const httplib::Request& request, const httplib::Response& response) {
    const HttpRequestInFlight in_flight = std::exchange(t_http_request, {});
    std::string id = response.get_header_value(kRequestIdHeader);
    if (id.empty()) id = RequestIdOrNew("");
    const std::string route =
        in_flight.routed ? HttpRouteLabel(request) : std::string("(rejected before routing)");
    nlohmann::json line = {
        {"protocol", "http"},
        {"request_id", id},
        {"method", request.method},
        {"path", request.path},
        {"route", route},
        {"status", response.status},
        {"duration_ms", in_flight.routed ? MillisecondsSince(in_flight.start) : 0.0}};
    // Unset on a request rejected before its connection details were filled.
    if (!request.remote_addr.empty()) {
      line["peer"] = absl::StrCat(request.remote_addr, ":", request.remote_port);
    }
    RecordRequest(std::move(line), route, std::to_string(response.status),
                  response.status >= 500);
  });
}

}  // namespace wq
