// The client side of SecurityOptions, for wqctl and the tests: a channel that
// speaks TLS (optionally with a client certificate) and sends a bearer token.
#ifndef WQ_SERVER_CLIENT_CHANNEL_H_
#define WQ_SERVER_CLIENT_CHANNEL_H_

#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"

namespace wq {

struct ClientSecurity {
  // Sent as "authorization: Bearer TOKEN" on every call; empty: none.
  std::string token;
  // PEM file of the CA that signed the server's certificate; non-empty turns
  // TLS on.
  std::string tls_ca;
  // PEM client certificate and key, for servers started with --tls_client_ca.
  std::string tls_cert;
  std::string tls_key;
};

// INVALID_ARGUMENT when a PEM file cannot be read or only one of
// tls_cert/tls_key is given.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeClientChannel(
    const std::string& address, const ClientSecurity& security,
    const grpc::ChannelArguments& arguments = grpc::ChannelArguments());

}  // namespace wq

#endif  // WQ_SERVER_CLIENT_CHANNEL_H_
