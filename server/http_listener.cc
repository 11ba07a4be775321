#include "server/http_listener.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace wq {

absl::Status WritePortFile(const std::string& path, int port) {
  const std::string tmp = absl::StrCat(path, ".tmp.", getpid());
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr) {
    return absl::InternalError(
        absl::StrCat("cannot write port file ", tmp, ": ", std::strerror(errno)));
  }
  std::fprintf(f, "%d\n", port);
  const bool ok = std::fflush(f) == 0 && fsync(fileno(f)) == 0;
  std::fclose(f);
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return absl::InternalError(
        absl::StrCat("cannot write port file ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<HttpListener>> HttpListener::Start(HttpListenerOptions options) {
  const size_t colon = options.listen.rfind(':');
  int requested_port = -1;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(options.listen.substr(colon + 1), &requested_port) ||
      requested_port < 0 || requested_port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--http_listen=", options.listen, " is not host:port (port 0 picks a free one)"));
  }
  std::string host = options.listen.substr(0, colon);
  // "[::1]:8080" names an IPv6 host in brackets; the socket API wants it bare.
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (options.threads < 1) {
    return absl::InvalidArgumentError("HTTP listener needs at least one thread");
  }

  std::unique_ptr<HttpListener> listener(new HttpListener());
  if (options.tls_cert.empty()) {
    listener->server_ = std::make_unique<httplib::Server>();
  } else {
    auto https = std::make_unique<httplib::SSLServer>(
        options.tls_cert.c_str(), options.tls_key.c_str(),
        options.tls_client_ca.empty() ? nullptr : options.tls_client_ca.c_str());
    if (!https->is_valid()) {
      return absl::InvalidArgumentError(
          "the HTTP listener cannot use --tls_cert/--tls_key/--tls_client_ca");
    }
    listener->server_ = std::move(https);
  }
  httplib::Server& server = *listener->server_;
  const int threads = options.threads;
  server.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  if (options.add_routes) options.add_routes(server);

  listener->port_ = requested_port == 0
                        ? server.bind_to_any_port(host)
                        : (server.bind_to_port(host, requested_port) ? requested_port : -1);
  if (listener->port_ <= 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on --http_listen=", options.listen, " (is the port free?)"));
  }
  if (!options.port_file.empty()) {
    if (absl::Status written = WritePortFile(options.port_file, listener->port_);
        !written.ok()) {
      return written;
    }
  }
  HttpListener* raw = listener.get();
  listener->thread_ = std::thread([raw] { raw->server_->listen_after_bind(); });
  return listener;
}

void HttpListener::Stop() {
  if (!thread_.joinable()) return;
  server_->stop();
  thread_.join();
}

HttpListener::~HttpListener() { Stop(); }

}  // namespace wq
