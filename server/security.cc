#include "server/security.h"

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <utility>

#include <grpcpp/security/auth_metadata_processor.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/io/logging.h"
#include "nlohmann/json.hpp"

namespace wq {
namespace {

constexpr absl::string_view kOperatorMethods[] = {
    "/wq.v1.InferenceService/LoadModel",
    "/wq.v1.InferenceService/UnloadModel",
    "/wq.v1.QuantizerService/SubmitJob",
    "/wq.v1.QuantizerService/CancelJob",
};

// Compares in time independent of where the strings differ, so that response
// times do not reveal how much of a guessed token was right.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= a[i] ^ b[i];
  return diff == 0;
}

absl::StatusOr<std::string> ReadPemFile(const char* flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream contents;
  contents << in.rdbuf();
  if (!in || contents.str().empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, "=", path, " cannot be read"));
  }
  return contents.str();
}

class TokenAuthMetadataProcessor : public grpc::AuthMetadataProcessor {
 public:
  explicit TokenAuthMetadataProcessor(std::shared_ptr<const TokenAuthenticator> tokens)
      : tokens_(std::move(tokens)) {}

  // A few string compares: cheap enough for the call's own thread.
  bool IsBlocking() const override { return false; }

  grpc::Status Process(const InputMetadata& auth_metadata, grpc::AuthContext* /*context*/,
                       OutputMetadata* /*consumed*/, OutputMetadata* /*response*/) override {
    const auto path = auth_metadata.find(":path");
    const absl::string_view method =
        path == auth_metadata.end() ? ""
                                    : absl::string_view(path->second.data(), path->second.size());
    if (IsOpenMethod(method)) return grpc::Status::OK;
    const auto authorization = auth_metadata.find("authorization");
    const absl::Status checked = tokens_->Check(
        authorization == auth_metadata.end()
            ? ""
            : absl::string_view(authorization->second.data(), authorization->second.size()),
        RequiredRole(method));
    if (checked.ok()) return grpc::Status::OK;
    return grpc::Status(static_cast<grpc::StatusCode>(checked.code()),
                        std::string(checked.message()));
  }

 private:
  std::shared_ptr<const TokenAuthenticator> tokens_;
};

}  // namespace

Role RequiredRole(absl::string_view method_path) {
  for (absl::string_view method : kOperatorMethods) {
    if (method_path == method) return Role::kOperator;
  }
  return Role::kClient;
}

bool IsOpenMethod(absl::string_view method_path) {
  return absl::StartsWith(method_path, "/grpc.health.v1.Health/");
}

absl::StatusOr<std::shared_ptr<const TokenAuthenticator>> TokenAuthenticator::Parse(
    absl::string_view text) {
  auto tokens = std::shared_ptr<TokenAuthenticator>(new TokenAuthenticator());
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, absl::ByAnyChar("\n,"))) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (fields.size() != 2 || (fields[0] != "client" && fields[0] != "operator")) {
      // The entry holds a secret: name its place, never its text.
      return absl::InvalidArgumentError(absl::StrCat(
          "auth tokens entry ", line_number, " is not \"client TOKEN\" or \"operator TOKEN\""));
    }
    tokens->entries_.push_back(
        {fields[0] == "operator" ? Role::kOperator : Role::kClient, std::string(fields[1])});
  }
  if (tokens->entries_.empty()) return absl::InvalidArgumentError("auth tokens list is empty");
  return tokens;
}

absl::Status TokenAuthenticator::Check(absl::string_view authorization, Role required) const {
  absl::string_view token = authorization;
  if (!absl::ConsumePrefix(&token, "Bearer ") || token.empty()) {
    return absl::UnauthenticatedError("missing bearer token (authorization: Bearer TOKEN)");
  }
  const Entry* found = nullptr;
  for (const Entry& entry : entries_) {
    if (ConstantTimeEquals(entry.token, token)) found = &entry;
  }
  if (found == nullptr) return absl::UnauthenticatedError("unknown bearer token");
  if (required == Role::kOperator && found->role != Role::kOperator) {
    return absl::PermissionDeniedError("this call needs an operator token");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const SecurityOptions& options, std::shared_ptr<const TokenAuthenticator> tokens) {
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  }
  if (!options.tls_client_ca.empty() && options.tls_cert.empty()) {
    return absl::InvalidArgumentError("--tls_client_ca needs --tls_cert and --tls_key");
  }
  std::shared_ptr<grpc::ServerCredentials> credentials;
  if (!options.tls_cert.empty()) {
    absl::StatusOr<std::string> cert = ReadPemFile("tls_cert", options.tls_cert);
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadPemFile("tls_key", options.tls_key);
    if (!key.ok()) return key.status();
    grpc::SslServerCredentialsOptions ssl(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
    ssl.pem_key_cert_pairs.push_back({*std::move(key), *std::move(cert)});
    if (!options.tls_client_ca.empty()) {
      absl::StatusOr<std::string> ca = ReadPemFile("tls_client_ca", options.tls_client_ca);
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = *std::move(ca);
      ssl.client_certificate_request =
          GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    credentials = grpc::SslServerCredentials(ssl);
  } else if (tokens != nullptr) {
    credentials = grpc::experimental::LocalServerCredentials(LOCAL_TCP);
  } else {
    return grpc::InsecureServerCredentials();
  }
  if (tokens != nullptr) {
    credentials->SetAuthMetadataProcessor(
        std::make_shared<TokenAuthMetadataProcessor>(std::move(tokens)));
  }
  return credentials;
}

httplib::Server::HandlerResponse CheckHttpAuthorization(const TokenAuthenticator* tokens, bool tls,
                                                        const httplib::Request& request,
                                                        httplib::Response& response) {
  if (tokens == nullptr || request.path == "/health") {
    return httplib::Server::HandlerResponse::Unhandled;
  }
  absl::Status checked =
      tls || IsLoopbackHost(request.remote_addr)
          ? tokens->Check(request.get_header_value("Authorization"), Role::kClient)
          : absl::PermissionDeniedError(
                "bearer tokens are accepted without TLS from loopback peers only");
  if (checked.ok()) return httplib::Server::HandlerResponse::Unhandled;
  const bool unauthenticated = checked.code() == absl::StatusCode::kUnauthenticated;
  response.status = unauthenticated ? 401 : 403;
  if (unauthenticated) response.set_header("WWW-Authenticate", "Bearer");
  response.set_content(
      nlohmann::json{{"error", {{"message", std::string(checked.message())},
                                {"type", unauthenticated ? "authentication_error"
                                                         : "permission_error"}}}}
          .dump(),
      "application/json");
  return httplib::Server::HandlerResponse::Handled;
}

bool IsLoopbackHost(absl::string_view host) {
  absl::ConsumePrefix(&host, "::ffff:");  // an IPv4 address on an IPv6 socket
  return host == "localhost" || host == "::1" || absl::StartsWith(host, "127.");
}

bool IsLoopbackAddress(absl::string_view listen) {
  // A Unix domain socket is reachable from this machine only.
  if (absl::StartsWith(listen, "unix:")) return true;
  absl::string_view host = listen.substr(0, listen.rfind(':'));
  if (absl::ConsumePrefix(&host, "[")) absl::ConsumeSuffix(&host, "]");
  return IsLoopbackHost(host);
}

absl::Status CheckExposure(const std::string& grpc_listen, const std::string& http_listen,
                           bool tls, bool auth) {
  for (const std::string& listen : {grpc_listen, http_listen}) {
    if (listen.empty() || IsLoopbackAddress(listen) || (tls && auth)) continue;
    return absl::FailedPreconditionError(absl::StrCat(
        "refusing to serve ", listen, " (not loopback) without ",
        tls ? "" : "TLS (--tls_cert, --tls_key)", !tls && !auth ? " and " : "",
        auth ? "" : "bearer tokens (--auth_tokens_file or WQ_AUTH_TOKENS)",
        "; pass --insecure to serve it unprotected anyway"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ServerSecurity> PrepareServerSecurity(const SecurityOptions& options,
                                                     const std::string& grpc_listen,
                                                     const std::string& http_listen) {
  std::string tokens_text;
  if (!options.auth_tokens_file.empty()) {
    std::ifstream in(options.auth_tokens_file, std::ios::binary);
    std::stringstream contents;
    contents << in.rdbuf();
    if (!in) {
      return absl::InvalidArgumentError(
          absl::StrCat("--auth_tokens_file=", options.auth_tokens_file, " cannot be read"));
    }
    tokens_text = contents.str();
  } else if (const char* env = std::getenv("WQ_AUTH_TOKENS"); env != nullptr) {
    tokens_text = env;
  }
  ServerSecurity security;
  if (!tokens_text.empty() || !options.auth_tokens_file.empty()) {
    absl::StatusOr<std::shared_ptr<const TokenAuthenticator>> tokens =
        TokenAuthenticator::Parse(tokens_text);
    if (!tokens.ok()) return tokens.status();
    security.tokens = *std::move(tokens);
  }
  if (absl::Status exposed = CheckExposure(grpc_listen, http_listen, !options.tls_cert.empty(),
                                           security.tokens != nullptr);
      !exposed.ok()) {
    if (!options.insecure) return exposed;
    LogWarning("insecure", {{"message", "serving unprotected because --insecure was given"},
                            {"overridden", std::string(exposed.message())}});
  }
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      MakeServerCredentials(options, security.tokens);
  if (!credentials.ok()) return credentials.status();
  security.credentials = *std::move(credentials);
  return security;
}

}  // namespace wq
