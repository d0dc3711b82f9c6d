// Integration: hostile peers against every listening socket of the real daemons. The ZeroMQ
// service sockets (cleave-cloud's tail, cleave-edge's application socket, cleave-aggregator)
// get garbage, truncated, empty and multi-part frames, frames over the configured size limit,
// and raw bytes that are not ZMTP at all; the admin HTTP ports get garbage and an oversized
// request. Each gets an error reply or a disconnect, never a crash, and the service goes on
// answering well-formed requests.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>

#include "common/child_process.h"
#include "common/edge_api.h"
#include "common/fl_wire.h"
#include "common/inference_wire.h"
#include "common/png_image.h"
#include "common/transport.h"
#include "testing/bin_dir.h"
#include "testing/tiny_bundle.h"
#include "tools/daemon_launcher.h"

namespace cleave::edge {
namespace {

namespace fs = std::filesystem;
using tools::LaunchDaemon;
using tools::LaunchedDaemon;

constexpr int64_t kLimit = 65536;  // max_message_bytes given to the daemons that take it

// "tcp://127.0.0.1:5555" or "http://127.0.0.1:5555" -> 5555.
int PortOfEndpoint(const std::string& endpoint) {
  return std::stoi(endpoint.substr(endpoint.rfind(':') + 1));
}

// A plain TCP connection to 127.0.0.1:port (no ZMTP): writes `bytes`, then reads until the
// peer closes or `timeout_ms` passes. Returns what was read and whether the peer closed.
struct RawResult {
  std::string read;
  bool closed = false;
};
RawResult RawExchange(int port, const std::string& bytes, int timeout_ms = 5000) {
  RawResult out;
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  EXPECT_GE(fd, 0);
  if (fd < 0) return out;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0) << port;
  size_t sent = 0;
  while (sent < bytes.size()) {
    const ssize_t n = ::send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;  // the peer may close before taking everything: that is an answer too
    sent += static_cast<size_t>(n);
  }
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  char buf[4096];
  while (std::chrono::steady_clock::now() < give_up) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 50) <= 0) continue;
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) {
      out.closed = true;
      break;
    }
    out.read.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

class HostilePeersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = cleave::testing::TempPath("hostile_it");
    fs::create_directories(dir_);
    bundle_ = dir_ / "bundle";
    ASSERT_TRUE(cleave::testing::WriteTinyBundle(bundle_).ok());
  }
  void TearDown() override {
    std::error_code ec;
    if (!HasFailure()) fs::remove_all(dir_, ec);
  }

  // The attacks on one ZeroMQ service socket. `valid` is a well-formed request and
  // `is_error_reply` recognizes the service's error answer to a bad one; `is_answer`
  // recognizes a proper answer to `valid`.
  void Attack(const LaunchedDaemon& daemon, const std::string& valid,
              const std::function<bool(const std::string&)>& is_error_reply,
              const std::function<bool(const std::string&)>& is_answer, int64_t limit) {
    auto dealer = DealerClient::Connect(context_, daemon.endpoint);
    ASSERT_TRUE(dealer.ok());
    auto exchange = [&](const std::string& bytes) -> std::optional<std::string> {
      EXPECT_TRUE((*dealer)->Send(bytes, 2000).ok());
      auto msg = (*dealer)->Receive(5000);
      if (!msg.ok() || !msg->has_value()) return std::nullopt;
      return **msg;
    };
    SCOPED_TRACE(daemon.log_path.string());
    for (const std::string& bad :
         {std::string("\x01\x02garbage\xff", 11), std::string(), valid.substr(0, valid.size() / 2),
          std::string(valid.size(), '\0'), std::string(4096, '\xff')}) {
      auto reply = exchange(bad);
      ASSERT_TRUE(reply.has_value()) << "no reply to a bad frame of " << bad.size() << " bytes";
      EXPECT_TRUE(is_error_reply(*reply)) << "for a bad frame of " << bad.size() << " bytes";
    }
    auto good = exchange(valid);
    ASSERT_TRUE(good.has_value());
    EXPECT_TRUE(is_answer(*good));

    // Multi-part messages are not part of any protocol here: dropped, service unaffected.
    zmq::socket_t& raw = (*dealer)->socket();
    ASSERT_TRUE(raw.send(zmq::buffer(std::string("part one")), zmq::send_flags::sndmore));
    ASSERT_TRUE(raw.send(zmq::buffer(valid), zmq::send_flags::none));
    good = exchange(valid);
    ASSERT_TRUE(good.has_value()) << "no answer after a multi-part message";
    EXPECT_TRUE(is_answer(*good));

    // Over the size limit: ZeroMQ drops that connection before anything is decoded.
    {
      auto big = DealerClient::Connect(context_, daemon.endpoint);
      ASSERT_TRUE(big.ok());
      ASSERT_TRUE((*big)->Send(std::string(static_cast<size_t>(limit) + 1024, 'x'), 5000).ok());
      auto none = (*big)->Receive(1000);
      ASSERT_TRUE(none.ok());
      EXPECT_FALSE(none->has_value()) << "an oversized frame was answered";
    }
    // A ZMTP 3 greeting asking for a security mechanism the socket does not speak: the
    // handshake fails and the connection is closed.
    std::string greeting("\xff\0\0\0\0\0\0\0\x01\x7f\x03\x00", 12);
    std::string mechanism = "BOGUS";
    mechanism.resize(20, '\0');
    greeting += mechanism + std::string(1 + 31, '\0');
    RawResult refused = RawExchange(PortOfEndpoint(daemon.endpoint), greeting);
    EXPECT_TRUE(refused.closed) << "a bad handshake left the connection open";
    // Bytes of no protocol at all (libzmq reads them as legacy ZMTP 1.0 frames, or waits for
    // its handshake timeout): nothing to answer, and nothing else is disturbed.
    (void)RawExchange(PortOfEndpoint(daemon.endpoint), std::string(200, '\x07'), 300);

    // Still serving, on a fresh connection too.
    auto fresh = DealerClient::Connect(context_, daemon.endpoint);
    ASSERT_TRUE(fresh.ok());
    ASSERT_TRUE((*fresh)->Send(valid, 2000).ok());
    auto after = (*fresh)->Receive(5000);
    ASSERT_TRUE(after.ok() && after->has_value()) << "the service stopped answering";
    EXPECT_TRUE(is_answer(**after));
    EXPECT_TRUE(daemon.process->Running());
  }

  // Garbage and an oversized request on an admin HTTP port: 4xx or a closed connection, and
  // /healthz still answers 200 afterwards.
  void AttackAdmin(const LaunchedDaemon& daemon) {
    ASSERT_FALSE(daemon.admin_url.empty());
    const int port = PortOfEndpoint(daemon.admin_url);
    RawResult garbage = RawExchange(port, std::string("\x16\x03\x01\x02\x00garbage\r\n\r\n", 16));
    EXPECT_TRUE(garbage.closed || garbage.read.rfind("HTTP/1.1 4", 0) == 0) << garbage.read;
    RawResult huge = RawExchange(port, "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " +
                                           std::string(1 << 20, 'a') + "\r\n\r\n");
    EXPECT_TRUE(huge.closed || huge.read.rfind("HTTP/1.1 4", 0) == 0) << huge.read.substr(0, 200);
    EXPECT_EQ(huge.read.find("HTTP/1.1 200"), std::string::npos) << "an oversized request served";
    RawResult health =
        RawExchange(port, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    EXPECT_EQ(health.read.rfind("HTTP/1.1 200", 0), 0u) << health.read;
    EXPECT_TRUE(daemon.process->Running());
  }

  fs::path dir_, bundle_;
  TransportContext context_;
};

TEST_F(HostilePeersTest, CloudTailSocketAndAdminPort) {
  auto cloud = LaunchDaemon(
      kBin / "cleave-cloud",
      {"--cloud.bundle", bundle_.string(), "--cloud.listen", "tcp://127.0.0.1:0",
       "--cloud.admin_listen", "127.0.0.1:0", "--cloud.max_message_bytes", std::to_string(kLimit)},
      "cloud.ready_file", dir_, "cloud");
  ASSERT_TRUE(cloud.ok()) << cloud.status().ToString();
  GrayImage image;
  image.width = image.height = 28;
  image.pixels.assign(28 * 28, 90);
  wire::InferRequest request;
  request.request_id = 42;
  request.model = "fmnist";
  request.input = wire::InputKind::kPng;
  request.png = *EncodePngGray8(image);
  Attack(
      *cloud, wire::EncodeInferRequest(request),
      [](const std::string& bytes) {
        auto reply = wire::DecodeInferReply(bytes);
        return reply.ok() && reply->status == wire::ReplyStatus::kError && !reply->error.empty();
      },
      [](const std::string& bytes) {
        auto reply = wire::DecodeInferReply(bytes);
        return reply.ok() && reply->status == wire::ReplyStatus::kOk && reply->request_id == 42 &&
               reply->scores.size() == 10;
      },
      kLimit);
  AttackAdmin(*cloud);
}

TEST_F(HostilePeersTest, EdgeApplicationSocketAndAdminPort) {
  // Edge only (no cloud): every answer comes from the head.
  auto edge = LaunchDaemon(
      kBin / "cleave-edge",
      {"serve", "--edge.bundle", bundle_.string(), "--edge.listen", "tcp://127.0.0.1:0",
       "--edge.cloud", "", "--edge.admin_listen", "127.0.0.1:0", "--edge.int8_engine", "reference"},
      "edge.ready_file", dir_, "edge");
  ASSERT_TRUE(edge.ok()) << edge.status().ToString();
  edge_api::ClassifyRequest request;
  request.request_id = 42;
  request.width = request.height = 28;
  request.pixels.assign(28 * 28, static_cast<char>(90));
  // The edge's socket keeps the transport default limit (16 MiB).
  Attack(
      *edge, edge_api::EncodeClassifyRequest(request),
      [](const std::string& bytes) {
        auto reply = edge_api::DecodeClassifyReply(bytes);
        return reply.ok() && reply->source == edge_api::AnswerSource::kError &&
               !reply->error.empty();
      },
      [](const std::string& bytes) {
        auto reply = edge_api::DecodeClassifyReply(bytes);
        return reply.ok() && reply->request_id == 42 &&
               reply->source != edge_api::AnswerSource::kError && reply->scores.size() == 10;
      },
      SocketOptions{}.max_message_bytes);
  AttackAdmin(*edge);
}

TEST_F(HostilePeersTest, AggregatorSocketAndAdminPort) {
  auto aggregator = LaunchDaemon(
      kBin / "cleave-aggregator",
      {"--aggregator.bundle", bundle_.string(), "--aggregator.listen", "tcp://127.0.0.1:0",
       "--aggregator.admin_listen", "127.0.0.1:0", "--aggregator.rounds", "1",
       "--aggregator.wait_for_clients", "5", "--aggregator.checkpoint",
       (dir_ / "agg.ckpt").string(), "--aggregator.max_message_bytes", std::to_string(kLimit),
       "--aggregator.eval_limit", "100"},
      "aggregator.ready_file", dir_, "aggregator");
  ASSERT_TRUE(aggregator.ok()) << aggregator.status().ToString();
  namespace fl = wire::fl;
  fl::Register reg;
  reg.client_id = "probe";
  reg.model_name = "fmnist";
  reg.layout_sha256 = std::string(64, '0');  // not the served layout: refused, with a reason
  Attack(
      *aggregator, fl::EncodeMessage(fl::Message(reg)),
      [](const std::string& bytes) {
        auto message = fl::DecodeMessage(bytes);
        if (!message.ok()) return false;
        const auto* ack = std::get_if<fl::UpdateAck>(&message->body);
        return ack != nullptr && ack->reason == fl::AckReason::kMalformed && !ack->message.empty();
      },
      [](const std::string& bytes) {
        auto message = fl::DecodeMessage(bytes);
        if (!message.ok()) return false;
        const auto* reply = std::get_if<fl::RegisterReply>(&message->body);
        return reply != nullptr && !reply->accepted && !reply->error.empty();
      },
      kLimit);
  AttackAdmin(*aggregator);
}

}  // namespace
}  // namespace cleave::edge
