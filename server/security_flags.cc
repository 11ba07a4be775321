#include "server/security_flags.h"

#include <string>

#include "absl/flags/flag.h"

ABSL_FLAG(std::string, tls_cert, "",
          "PEM server certificate (chain); with --tls_key serves gRPC and HTTP over TLS");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle: require client certificates signed by it (mutual TLS)");
ABSL_FLAG(std::string, auth_tokens_file, "",
          "bearer tokens, one \"client TOKEN\" or \"operator TOKEN\" per line; empty: the "
          "WQ_AUTH_TOKENS environment variable (same format, ',' also separates); neither: no "
          "authentication");
ABSL_FLAG(bool, insecure, false,
          "serve a non-loopback --listen/--http_listen without TLS or tokens (logged as a "
          "warning); without it such a start is refused");

namespace wq {

SecurityOptions SecurityOptionsFromFlags() {
  SecurityOptions options;
  options.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key = absl::GetFlag(FLAGS_tls_key);
  options.tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  options.auth_tokens_file = absl::GetFlag(FLAGS_auth_tokens_file);
  options.insecure = absl::GetFlag(FLAGS_insecure);
  return options;
}

}  // namespace wq
