// End-to-end tests of the security options (server/security.h) on the real
// inference_service binary: TLS and mutual TLS with certificates made by the
// openssl CLI at test time, bearer tokens with roles over gRPC and HTTP, and
// the refusal to serve a non-loopback address unprotected.
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include "gtest/gtest.h"
#include "server/client_channel.h"
#include "tests/e2e_support.h"
#include "tests/server_process.h"
#include "tests/grpc_health.grpc.pb.h"
#include "wq/v1/inference.grpc.pb.h"

namespace wq::e2e {
namespace {

constexpr char kClientToken[] = "client-secret-1";
constexpr char kOperatorToken[] = "operator-secret-2";

std::string Scratch(const std::string& name) {
  const std::string dir = GetServers().dir + "/security." + name;
  std::filesystem::create_directories(dir);
  return dir;
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

std::string TokensFile() {
  const std::string path = Scratch("tokens") + "/tokens";
  WriteFile(path, std::string("# role token\nclient ") + kClientToken + "\noperator " +
                      kOperatorToken + "\n");
  return path;
}

// A CA, a server certificate for 127.0.0.1/localhost and a client
// certificate, all signed by the CA, in `dir`.
void MakeCertificates(const std::string& dir) {
  const std::string key = " -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes ";
  const std::string quiet = " 2>>" + dir + "/openssl.log";
  const std::string script =
      "cd " + dir + " && openssl req -x509" + key +
      "-days 1 -subj /CN=wq-test-ca -keyout ca.key -out ca.pem" + quiet + " && " +
      "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > server.ext && " +
      "openssl req" + key + "-subj /CN=localhost -keyout server.key -out server.csr" + quiet +
      " && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 "
      "-extfile server.ext -out server.pem" + quiet + " && " +
      "openssl req" + key + "-subj /CN=wq-test-client -keyout client.key -out client.csr" +
      quiet +
      " && openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 "
      "-out client.pem" + quiet;
  ASSERT_EQ(std::system(script.c_str()), 0) << "openssl failed; see " << dir << "/openssl.log";
}

// An IPv4 address of this machine outside 127.0.0.0/8 ("" when it has none):
// connecting to it from here makes the server see a non-loopback peer.
std::string NonLoopbackIpv4() {
  ifaddrs* interfaces = nullptr;
  if (getifaddrs(&interfaces) != 0) return "";
  std::string found;
  for (const ifaddrs* i = interfaces; i != nullptr && found.empty(); i = i->ifa_next) {
    if (i->ifa_addr == nullptr || i->ifa_addr->sa_family != AF_INET) continue;
    const in_addr address = reinterpret_cast<const sockaddr_in*>(i->ifa_addr)->sin_addr;
    if ((ntohl(address.s_addr) >> 24) == 127) continue;
    char text[INET_ADDRSTRLEN] = {};
    if (inet_ntop(AF_INET, &address, text, sizeof(text)) != nullptr) found = text;
  }
  freeifaddrs(interfaces);
  return found;
}

int ReadPort(const std::string& port_file) {
  int port = 0;
  std::ifstream(port_file) >> port;
  return port;
}

struct Started {
  std::unique_ptr<ServerProcess> process;
  std::string address;
};

Started StartInference(const std::string& name, std::vector<std::string> args) {
  args.push_back("--model_root=" + GetServers().model_root);
  args.push_back("--artifact_root=" + GetServers().artifact_root);
  args.push_back("--threads=1");
  Started started;
  started.process = std::make_unique<ServerProcess>(name, GetServers().inference_binary,
                                                    std::move(args), Scratch(name));
  const int port = started.process->WaitForPort(std::chrono::seconds(30));
  started.address = "127.0.0.1:" + std::to_string(port);
  return started;
}

std::unique_ptr<v1::InferenceService::Stub> Stub(const std::string& address,
                                                 const ClientSecurity& security) {
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = MakeClientChannel(address, security);
  EXPECT_TRUE(channel.ok()) << channel.status();
  return v1::InferenceService::NewStub(*channel);
}

grpc::Status ListModels(const std::string& address, const ClientSecurity& security) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::ListModelsResponse response;
  return Stub(address, security)->ListModels(&context, v1::ListModelsRequest(), &response);
}

grpc::Status LoadModel(const std::string& address, const ClientSecurity& security) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  v1::LoadModelRequest request;
  request.set_model("stories260K");
  v1::ModelInfo info;
  return Stub(address, security)->LoadModel(&context, request, &info);
}

ClientSecurity WithToken(const char* token) {
  ClientSecurity security;
  security.token = token;
  return security;
}

TEST(E2eSecurityTest, TokensAndRolesOverGrpc) {
  Started server = StartInference("auth", {"--auth_tokens_file=" + TokensFile()});
  ASSERT_NE(server.address, "127.0.0.1:0");

  grpc::Status status = ListModels(server.address, ClientSecurity());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << status.error_message();
  status = ListModels(server.address, WithToken("not-a-token"));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << status.error_message();
  status = ListModels(server.address, WithToken(kClientToken));
  EXPECT_TRUE(status.ok()) << status.error_message();

  status = LoadModel(server.address, WithToken(kClientToken));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
  status = LoadModel(server.address, WithToken(kOperatorToken));
  EXPECT_TRUE(status.ok()) << status.error_message();

  // Probes carry no token: health stays open.
  auto health = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel(server.address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  grpc::health::v1::HealthCheckResponse response;
  status = health->Check(&context, grpc::health::v1::HealthCheckRequest(), &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(server.process->Stop(std::chrono::seconds(10)), 0);
}

TEST(E2eSecurityTest, TokensOverHttp) {
  const std::string dir = Scratch("http");
  Started server = StartInference(
      "http", {"--auth_tokens_file=" + TokensFile(), "--http_listen=127.0.0.1:0",
               "--http_port_file=" + dir + "/http_listener.port"});
  const int http_port = ReadPort(dir + "/http_listener.port");
  ASSERT_GT(http_port, 0);
  httplib::Client client("127.0.0.1", http_port);

  httplib::Result health = client.Get("/health");
  ASSERT_TRUE(health) << httplib::to_string(health.error());
  EXPECT_EQ(health->status, 200);
  httplib::Result anonymous = client.Get("/v1/models");
  ASSERT_TRUE(anonymous);
  EXPECT_EQ(anonymous->status, 401);
  EXPECT_EQ(anonymous->get_header_value("WWW-Authenticate"), "Bearer");
  httplib::Result wrong = client.Get("/v1/models", {{"Authorization", "Bearer nope"}});
  ASSERT_TRUE(wrong);
  EXPECT_EQ(wrong->status, 401);
  httplib::Result authorized =
      client.Get("/v1/models", {{"Authorization", std::string("Bearer ") + kClientToken}});
  ASSERT_TRUE(authorized);
  EXPECT_NE(authorized->status, 401);
  EXPECT_EQ(server.process->Stop(std::chrono::seconds(10)), 0);
}

TEST(E2eSecurityTest, TlsRefusesPlaintextAndMutualTlsRefusesMissingCertificate) {
  const std::string certs = Scratch("certs");
  ASSERT_NO_FATAL_FAILURE(MakeCertificates(certs));
  ClientSecurity tls;
  tls.tls_ca = certs + "/ca.pem";

  const std::string http_port_file = Scratch("tls") + "/http_listener.port";
  Started server = StartInference(
      "tls", {"--tls_cert=" + certs + "/server.pem", "--tls_key=" + certs + "/server.key",
              "--http_listen=127.0.0.1:0", "--http_port_file=" + http_port_file});
  grpc::Status status = ListModels(server.address, tls);
  EXPECT_TRUE(status.ok()) << status.error_message();
  status = ListModels(server.address, ClientSecurity());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  // The HTTP listener speaks HTTPS with the same certificate.
  const int http_port = ReadPort(http_port_file);
  httplib::SSLClient https("127.0.0.1", http_port);
  https.set_ca_cert_path((certs + "/ca.pem").c_str());
  httplib::Result health = https.Get("/health");
  ASSERT_TRUE(health) << httplib::to_string(health.error());
  EXPECT_EQ(health->status, 200);
  httplib::Result plain = httplib::Client("127.0.0.1", http_port).Get("/health");
  EXPECT_FALSE(plain && plain->status == 200);
  EXPECT_EQ(server.process->Stop(std::chrono::seconds(10)), 0);

  Started mutual = StartInference(
      "mtls", {"--tls_cert=" + certs + "/server.pem", "--tls_key=" + certs + "/server.key",
               "--tls_client_ca=" + certs + "/ca.pem"});
  status = ListModels(mutual.address, tls);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  ClientSecurity with_certificate = tls;
  with_certificate.tls_cert = certs + "/client.pem";
  with_certificate.tls_key = certs + "/client.key";
  status = ListModels(mutual.address, with_certificate);
  EXPECT_TRUE(status.ok()) << status.error_message();
  status = ListModels(mutual.address, ClientSecurity());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_EQ(mutual.process->Stop(std::chrono::seconds(10)), 0);
}

TEST(E2eSecurityTest, NonLoopbackNeedsTlsAndTokensOrInsecure) {
  const std::string dir = Scratch("exposed");
  // Runs to its exit: the refusal comes before anything is bound.
  const std::string binary = GetServers().inference_binary;
  const std::string refused_log = dir + "/refused.log";
  const std::string roots = " --model_root=" + GetServers().model_root +
                            " --artifact_root=" + GetServers().artifact_root;
  const int refused =
      std::system((binary + " --listen=0.0.0.0:0" + roots + " 2>" + refused_log).c_str());
  EXPECT_NE(refused, 0);
  std::ifstream in(refused_log);
  const std::string log((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(log.find("refusing to serve 0.0.0.0:0"), std::string::npos) << log;
  EXPECT_NE(log.find("--insecure"), std::string::npos) << log;

  // Tokens alone are not enough either: they would cross the network in clear.
  const int tokens_only = std::system((binary + " --listen=0.0.0.0:0" + roots +
                                       " --auth_tokens_file=" + TokensFile() + " 2>>" +
                                       refused_log)
                                          .c_str());
  EXPECT_NE(tokens_only, 0);

  Started insecure = StartInference("insecure", {"--listen=0.0.0.0:0", "--insecure"});
  EXPECT_TRUE(ListModels(insecure.address, ClientSecurity()).ok());
  EXPECT_EQ(insecure.process->Stop(std::chrono::seconds(10)), 0);
  EXPECT_NE(insecure.process->Log().find("\"insecure\""), std::string::npos)
      << insecure.process->Log();
}

TEST(E2eSecurityTest, MutualTlsOnTheHttpListener) {
  const std::string certs = Scratch("http_mtls_certs");
  const std::string strangers = Scratch("http_mtls_strangers");  // another CA's client
  ASSERT_NO_FATAL_FAILURE(MakeCertificates(certs));
  ASSERT_NO_FATAL_FAILURE(MakeCertificates(strangers));
  const std::string port_file = Scratch("http_mtls") + "/http_listener.port";
  Started server = StartInference(
      "http_mtls", {"--tls_cert=" + certs + "/server.pem", "--tls_key=" + certs + "/server.key",
                    "--tls_client_ca=" + certs + "/ca.pem", "--http_listen=127.0.0.1:0",
                    "--http_port_file=" + port_file});
  const int http_port = ReadPort(port_file);
  ASSERT_GT(http_port, 0);
  const std::string ca = certs + "/ca.pem";

  httplib::SSLClient with_certificate("127.0.0.1", http_port, certs + "/client.pem",
                                      certs + "/client.key");
  with_certificate.set_ca_cert_path(ca.c_str());
  for (const char* path : {"/health", "/v1/models"}) {
    httplib::Result result = with_certificate.Get(path);
    ASSERT_TRUE(result) << path << ": " << httplib::to_string(result.error());
    EXPECT_EQ(result->status, 200) << path << ": " << result->body;
  }

  httplib::SSLClient without_certificate("127.0.0.1", http_port);
  without_certificate.set_ca_cert_path(ca.c_str());
  httplib::SSLClient foreign_certificate("127.0.0.1", http_port, strangers + "/client.pem",
                                         strangers + "/client.key");
  foreign_certificate.set_ca_cert_path(ca.c_str());
  for (httplib::SSLClient* refused : {&without_certificate, &foreign_certificate}) {
    httplib::Result result = refused->Get("/health");
    EXPECT_FALSE(result) << "answered " << result->status;
  }
  EXPECT_EQ(server.process->Stop(std::chrono::seconds(10)), 0);
}

// Tokens without TLS on this machine's own non-loopback address: refused at
// start; with --insecure served, but a token is accepted from a loopback
// peer only, over gRPC and HTTP alike (it would cross a network in clear).
TEST(E2eSecurityTest, TokensWithoutTlsStayOnLoopback) {
  const std::string ip = NonLoopbackIpv4();
  if (ip.empty()) GTEST_SKIP() << "this machine has no non-loopback IPv4 address";
  const std::string dir = Scratch("remote");
  const std::vector<std::string> base = {
      GetServers().inference_binary, "--model_root=" + GetServers().model_root,
      "--artifact_root=" + GetServers().artifact_root, "--auth_tokens_file=" + TokensFile()};
  for (const std::string& listen : {"--listen=" + ip + ":0", "--http_listen=" + ip + ":0"}) {
    std::vector<std::string> argv = base;
    argv.push_back(listen);
    const CommandResult refused = RunCommand(argv, dir);
    EXPECT_EQ(refused.exit_code, 1) << listen;
    EXPECT_NE(refused.err.find("refusing to serve " + ip + ":0 (not loopback) without TLS"),
              std::string::npos)
        << refused.err;
  }

  const std::string port_file = dir + "/http_listener.port";
  Started server = StartInference(
      "remote", {"--listen=0.0.0.0:0", "--http_listen=0.0.0.0:0", "--http_port_file=" + port_file,
                 "--auth_tokens_file=" + TokensFile(), "--insecure"});
  const std::string port = server.address.substr(server.address.rfind(':') + 1);
  const int http_port = ReadPort(port_file);
  ASSERT_GT(http_port, 0);

  grpc::Status status = ListModels("127.0.0.1:" + port, WithToken(kClientToken));
  EXPECT_TRUE(status.ok()) << status.error_message();
  status = ListModels(ip + ":" + port, WithToken(kClientToken));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();

  const httplib::Headers token = {{"Authorization", std::string("Bearer ") + kClientToken}};
  httplib::Result local = httplib::Client("127.0.0.1", http_port).Get("/v1/models", token);
  ASSERT_TRUE(local) << httplib::to_string(local.error());
  EXPECT_EQ(local->status, 200) << local->body;
  httplib::Client remote_client(ip, http_port);
  httplib::Result remote = remote_client.Get("/v1/models", token);
  ASSERT_TRUE(remote) << httplib::to_string(remote.error());
  EXPECT_EQ(remote->status, 403) << remote->body;
  // Probes carry no token and come from other machines: /health stays open.
  httplib::Result probe = remote_client.Get("/health");
  ASSERT_TRUE(probe) << httplib::to_string(probe.error());
  EXPECT_EQ(probe->status, 200);
  EXPECT_EQ(server.process->Stop(std::chrono::seconds(10)), 0);
}

}  // namespace
}  // namespace wq::e2e
