// The HTTP/1.1 listener beside each service's gRPC port (OpenAI-compatible
// API, /health, /metrics), over cpp-httplib.
//
// cpp-httplib serves each connection on a pool thread. wq bounds concurrent
// generations by the scheduler's capacity (max_running + max_queued per model,
// tens of streams), so a pool sized to that serves every SSE stream that can
// make progress, with a library small enough to read in an afternoon; see the
// README's "OpenAI API" section for the choice against Boost.Beast.
#ifndef WQ_SERVER_HTTP_LISTENER_H_
#define WQ_SERVER_HTTP_LISTENER_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include <httplib.h>

#include "absl/status/statusor.h"

namespace wq {

struct HttpListenerOptions {
  // "host:port"; port 0 picks a free port.
  std::string listen;
  // When non-empty, the bound port is written here (atomically) once serving.
  std::string port_file;
  // Connections served at once; more wait in the kernel's accept queue.
  int threads = 128;
  // PEM files: with a certificate and key the listener speaks HTTPS; with a
  // client CA too it requires client certificates signed by it.
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  // Registers the routes; runs before the socket is bound.
  std::function<void(httplib::Server&)> add_routes;
};

class HttpListener {
 public:
  // Binds, then serves on a background thread. UNAVAILABLE when the address
  // cannot be bound, INVALID_ARGUMENT when it is not host:port.
  static absl::StatusOr<std::unique_ptr<HttpListener>> Start(HttpListenerOptions options);

  HttpListener(const HttpListener&) = delete;
  HttpListener& operator=(const HttpListener&) = delete;
  // Stops if still running.
  ~HttpListener();

  int port() const { return port_; }

  // Stops accepting connections and waits for the handlers in flight, which
  // the caller makes finish first (e.g. by shutting the schedulers down).
  void Stop();

 private:
  HttpListener() = default;

  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
};

// Writes `port` to `path` through a temporary file and rename(), so readers
// never see a partial number.
absl::Status WritePortFile(const std::string& path, int port);

}  // namespace wq

#endif  // WQ_SERVER_HTTP_LISTENER_H_
