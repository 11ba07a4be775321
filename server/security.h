// Transport security and authentication of both services: TLS through gRPC's
// SSL credentials (optionally verifying client certificates), bearer tokens
// with roles checked once per call by an AuthMetadataProcessor (gRPC) and by
// the HTTP listener's pre-routing handler, and the start-up check that a
// non-loopback address is never served unprotected by accident.
#ifndef WQ_SERVER_SECURITY_H_
#define WQ_SERVER_SECURITY_H_

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/security/server_credentials.h>
#include <httplib.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace wq {

struct SecurityOptions {
  // PEM files. tls_cert and tls_key together turn TLS on; tls_client_ca
  // additionally requires client certificates signed by that CA.
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  // Bearer tokens with roles (TokenAuthenticator::Parse's format) from this
  // file or, when empty, the WQ_AUTH_TOKENS environment variable; neither:
  // no authentication.
  std::string auth_tokens_file;
  // Serve a non-loopback address without TLS or auth.
  bool insecure = false;
};

// What a token may do. kOperator includes everything kClient may.
enum class Role { kClient, kOperator };

// The role an RPC needs, by its full path ("/wq.v1.InferenceService/LoadModel").
// Loading, unloading, submitting and cancelling need kOperator; the rest
// kClient.
Role RequiredRole(absl::string_view method_path);

// Whether a call to this path is served without a token: gRPC health checks
// (probes carry no credentials).
bool IsOpenMethod(absl::string_view method_path);

class TokenAuthenticator {
 public:
  // One token per line, "ROLE TOKEN" (ROLE client or operator); blank lines
  // and lines starting with '#' are skipped; ',' also separates entries, so
  // the list fits one environment variable. INVALID_ARGUMENT for anything
  // else, an empty list included.
  static absl::StatusOr<std::shared_ptr<const TokenAuthenticator>> Parse(absl::string_view text);

  // `authorization` is the header/metadata value ("Bearer TOKEN").
  // UNAUTHENTICATED when missing or unknown, PERMISSION_DENIED when the token's
  // role is below `required`.
  absl::Status Check(absl::string_view authorization, Role required) const;

 private:
  struct Entry {
    Role role;
    std::string token;
  };
  std::vector<Entry> entries_;
};

// gRPC credentials for the listening port: SSL when a certificate is given,
// else loopback-only local credentials when tokens are (a token never crosses
// a network in the clear), else insecure; with the token check attached when
// `tokens` is non-null. INVALID_ARGUMENT for half a TLS configuration or an
// unreadable PEM file.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const SecurityOptions& options, std::shared_ptr<const TokenAuthenticator> tokens);

// The HTTP listener's pre-routing check: every path but /health needs a
// client token when `tokens` is non-null, and without `tls` a loopback peer
// too, as gRPC's local credentials require (a token never crosses a network in
// clear). Answers 401 (missing or unknown token) or 403 (non-loopback peer
// without TLS) itself and returns kHandled; kUnhandled lets routing go on.
httplib::Server::HandlerResponse CheckHttpAuthorization(const TokenAuthenticator* tokens, bool tls,
                                                        const httplib::Request& request,
                                                        httplib::Response& response);

// Whether `host` (a name or a numeric address, as a peer's) is loopback:
// 127.0.0.0/8 (also IPv4-mapped), ::1 or localhost.
bool IsLoopbackHost(absl::string_view host);

// Whether `listen` ("host:port") names a loopback host only (127.0.0.0/8,
// ::1, localhost) or a Unix domain socket ("unix:PATH").
bool IsLoopbackAddress(absl::string_view listen);

// FAILED_PRECONDITION when an address (gRPC or HTTP; empty: none) is not
// loopback and TLS or tokens are missing; the message says what to add.
absl::Status CheckExposure(const std::string& grpc_listen, const std::string& http_listen,
                           bool tls, bool tokens);

struct ServerSecurity {
  std::shared_ptr<grpc::ServerCredentials> credentials;
  std::shared_ptr<const TokenAuthenticator> tokens;  // null: authentication off
};

// All of the above for one server: the tokens read and parsed, CheckExposure
// (refusing, or with options.insecure logging a warning), the credentials.
absl::StatusOr<ServerSecurity> PrepareServerSecurity(const SecurityOptions& options,
                                                     const std::string& grpc_listen,
                                                     const std::string& http_listen);

}  // namespace wq

#endif  // WQ_SERVER_SECURITY_H_
