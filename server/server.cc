#include "server/server.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"
#include "common/io/logging.h"
#include "common/io/metrics.h"
#include "server/http_listener.h"
#include "server/request_log.h"
#include "server/request_validation.h"
#include "server/reflection_v1.h"

namespace wq {
namespace {

// SIGTERM and SIGINT are blocked in every thread and taken by one thread
// with sigwait, which then wakes the main thread through a pipe: no code runs
// in signal context, whichever threads gRPC or oneTBB started. (Under TSan
// a handler may never run: TSan defers it until the receiving thread enters
// one of its interceptors, which a thread in a restarted read() or in an
// uninstrumented futex wait does not.)
int g_signal_pipe[2] = {-1, -1};
// Past shutdown_deadline, in-flight calls are cancelled; past this much more,
// the process exits whatever still runs.
constexpr absl::Duration kShutdownWatchdogSlack = absl::Seconds(3);
std::atomic<int> g_signal_number{0};

sigset_t ShutdownSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  return signals;
}

}  // namespace

void TakeShutdownSignals() {
  if (g_signal_pipe[0] >= 0) return;
  if (pipe2(g_signal_pipe, O_CLOEXEC) != 0) {
    std::perror("pipe2");
    return;
  }
  // Threads inherit the mask: every thread started from here on blocks them.
  const sigset_t signals = ShutdownSignals();
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::thread([signals] {
    for (;;) {
      int signo = 0;
      if (sigwait(&signals, &signo) != 0) continue;
      g_signal_number = signo;
      const char byte = 1;
      [[maybe_unused]] ssize_t n = write(g_signal_pipe[1], &byte, 1);
    }
  }).detach();
  // A client vanishing must not kill the server.
  signal(SIGPIPE, SIG_IGN);
}

bool ShutdownSignalled() { return g_signal_number.load() != 0; }

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // The message travels in a trailer: past a client's metadata limit (8 KiB
  // by default) the client would see RESOURCE_EXHAUSTED instead of it.
  constexpr size_t kMaxMessageBytes = 1024;
  std::string message(status.message());
  if (message.size() > kMaxMessageBytes) {
    message.resize(kMaxMessageBytes);
    message += "...";
  }
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::move(message));
}

int ServeUntilShutdown(const ServerOptions& options, nlohmann::json start_fields) {
  start_fields["listen"] = options.listen;
  LogInfo("starting", start_fields);
  const absl::Status status = RunServer(options);
  if (status.ok()) return 0;
  LogError("server_failed", {{"error", status.ToString()}});
  return 1;
}

absl::Status RunServer(const ServerOptions& options) {
  TakeShutdownSignals();
  absl::StatusOr<ServerSecurity> security =
      PrepareServerSecurity(options.security, options.listen, options.http_listen);
  if (!security.ok()) return security.status();
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();

  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.listen, security->credentials, &port);
  builder.SetMaxReceiveMessageSize(kMaxRequestBytes);
  builder.AddChannelArgument(GRPC_ARG_MAX_METADATA_SIZE, kMaxMetadataBytes);
  std::vector<std::unique_ptr<grpc::Service>> validated;
  std::vector<std::string> service_names;
  for (const ServerOptions::Service& served : options.services) {
    const google::protobuf::ServiceDescriptor* descriptor =
        google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(served.name);
    if (descriptor == nullptr) {
      return absl::InternalError(absl::StrCat("no proto service named ", served.name));
    }
    validated.push_back(
        WithRequestValidation(served.service, *descriptor, served.callback_methods));
    service_names.push_back(served.name);
    builder.RegisterService(validated.back().get());
  }
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      interceptors;
  interceptors.push_back(
      NewRequestLogInterceptorFactory(KnownGrpcMethods(service_names)));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  ReflectionV1Service reflection_v1;
  builder.RegisterService(&reflection_v1);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on --listen=", options.listen,
        " (expected host:port with a free port; port 0 picks one)"));
  }
  reflection_v1.Connect(server.get());
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  if (health != nullptr) {
    health->SetServingStatus(true);
    for (const ServerOptions::Service& served : options.services) {
      health->SetServingStatus(served.name, true);
    }
  }
  // /health answers 200 while the gRPC health service says SERVING (so, for
  // the inference service, once the --preload models are loaded) and 503 from
  // the first moment of shutdown.
  std::atomic<bool> serving{true};
  std::unique_ptr<HttpListener> http;
  if (!options.http_listen.empty()) {
    HttpListenerOptions http_options;
    http_options.listen = options.http_listen;
    http_options.port_file = options.http_port_file;
    http_options.threads = options.http_threads;
    http_options.tls_cert = options.security.tls_cert;
    http_options.tls_key = options.security.tls_key;
    http_options.tls_client_ca = options.security.tls_client_ca;
    http_options.add_routes = [&](httplib::Server& routes) {
      InstallHttpRequestLog(routes, [tokens = security->tokens,
                                     tls = !options.security.tls_cert.empty()](
                                        const httplib::Request& request,
                                        httplib::Response& response) {
        return CheckHttpAuthorization(tokens.get(), tls, request, response);
      });
      routes.Get("/health", [&serving](const httplib::Request&, httplib::Response& response) {
        const bool up = serving.load();
        response.status = up ? 200 : 503;
        response.set_content(up ? R"({"status":"ok"})" : R"({"status":"shutting down"})",
                             "application/json");
      });
      routes.Get("/metrics", [](const httplib::Request&, httplib::Response& response) {
        response.set_content(MetricsRegistry::Default().Render(), kPrometheusContentType);
      });
      if (options.http_routes) options.http_routes(routes);
    };
    absl::StatusOr<std::unique_ptr<HttpListener>> started =
        HttpListener::Start(std::move(http_options));
    if (!started.ok()) {
      server->Shutdown();
      return started.status();
    }
    http = *std::move(started);
  }
  if (!options.port_file.empty()) {
    absl::Status written = WritePortFile(options.port_file, port);
    if (!written.ok()) {
      server->Shutdown();
      return written;
    }
  }
  LogInfo("server_ready", {{"listen", options.listen},
                           {"port", port},
                           {"http_port", http != nullptr ? http->port() : 0}});

  char byte;
  while (read(g_signal_pipe[0], &byte, 1) < 0 && errno == EINTR) {
  }
  LogInfo("shutdown_started", {{"signal", g_signal_number.load()}});

  // Health first, so load balancers stop routing here. The hook then drains
  // or ends the work in flight while the server still answers: a call that
  // arrives meanwhile gets the hook's UNAVAILABLE "shutting down", which
  // clients retry elsewhere, rather than the CANCELLED gRPC gives calls it
  // drops mid-shutdown. Shutdown() follows, bounded by the same deadline from
  // the signal; the HTTP listener stops last, so /health says 503 throughout.
  if (health != nullptr) health->Shutdown();
  serving = false;
  const absl::Time deadline = absl::Now() + options.shutdown_deadline;
  // A handler stuck where nothing can cancel it (a read from a hung
  // filesystem) must not keep the pod terminating until it is killed.
  std::thread([limit = options.shutdown_deadline + kShutdownWatchdogSlack] {
    absl::SleepFor(limit);
    LogError("shutdown_forced", {{"after_s", absl::ToDoubleSeconds(limit)}});
    std::_Exit(0);
  }).detach();
  if (options.on_shutdown) options.on_shutdown();
  server->Shutdown(absl::ToChronoTime(deadline));
  if (http != nullptr) http->Stop();
  server->Wait();
  LogInfo("shutdown_done");
  return absl::OkStatus();
}

}  // namespace wq
