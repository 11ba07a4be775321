// gRPC server plumbing shared by quantizer_service and inference_service:
// binding, health checking (gRPC and HTTP /health), GET /metrics, request ids
// and one log line per request (server/request_log.h), reflection (v1alpha and
// v1), port file,
// the optional HTTP listener, signal-driven graceful
// shutdown and the absl::Status -> grpc::Status mapping.
#ifndef WQ_SERVER_SERVER_H_
#define WQ_SERVER_SERVER_H_

#include <functional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "server/security.h"

namespace wq {

struct ServerOptions {
  // "host:port"; port 0 picks a free port (written to port_file).
  std::string listen;
  // When non-empty, the bound port is written here (atomically, by rename)
  // once the server accepts calls: tests and scripts wait for this file.
  std::string port_file;
  // "host:port" of the HTTP listener (GET /health plus http_routes); empty:
  // none. http_port_file as port_file.
  std::string http_listen;
  std::string http_port_file;
  // Connections the HTTP listener serves at once (a streamed response holds
  // one for its whole length); more wait in the kernel's accept queue.
  int http_threads = 128;
  std::function<void(httplib::Server&)> http_routes;
  // TLS (gRPC and HTTP), bearer tokens and the non-loopback check.
  SecurityOptions security;
  struct Service {
    grpc::Service* service;  // not owned; must outlive RunServer
    // Its full proto name ("wq.v1.QuantizerService"): reported SERVING by the
    // health service once ready (alongside ""); its descriptor validates
    // every request (server/request_validation.h).
    std::string name;
    // Its methods implemented on gRPC's callback API (the others are
    // synchronous).
    std::vector<std::string> callback_methods;
  };
  std::vector<Service> services;
  // Runs on SIGTERM/SIGINT once health says NOT_SERVING, while the server
  // still answers calls: refuses new work with UNAVAILABLE and drains,
  // finishes or cancels the work handlers wait on, so that they return.
  std::function<void()> on_shutdown;
  // In-flight calls still running after this are cancelled; a few seconds
  // later the process exits (status 0) even if a handler never returns.
  absl::Duration shutdown_deadline = absl::Seconds(5);
};

// Takes SIGTERM/SIGINT from here on: blocks them in the calling thread (so
// in every thread it starts later) and starts the one thread that waits for
// them. Call first thing in main(), before any thread is started: a thread
// started earlier would still get the default action (exit). Idempotent.
void TakeShutdownSignals();
// True once SIGTERM or SIGINT arrived (for work run without RunServer).
bool ShutdownSignalled();

// Builds and starts the server, then blocks until SIGTERM or SIGINT and
// shuts down gracefully (health NOT_SERVING, on_shutdown, Shutdown with the
// deadline). OK after a clean shutdown; UNAVAILABLE when the address cannot
// be bound; INTERNAL when the port file cannot be written; the errors of
// PrepareServerSecurity (e.g. FAILED_PRECONDITION for an unprotected
// non-loopback address).
absl::Status RunServer(const ServerOptions& options);

// The tail of a service's main(): logs "starting" with `start_fields` (a JSON
// object; "listen" is added), runs the server and returns the process exit
// code (0 after a clean shutdown, 1 with a "server_failed" log line).
int ServeUntilShutdown(const ServerOptions& options, nlohmann::json start_fields);

// Codes map 1:1 (both follow google.rpc.Code); messages past 1 KiB are cut.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace wq

#endif  // WQ_SERVER_SERVER_H_
