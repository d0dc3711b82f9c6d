#include "common/transport.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace cleave {
namespace {

// Generous: only reached when something is broken; nothing here measures time.
constexpr int kWaitMs = 5000;

std::string UniqueInproc(const std::string& name) {
  static int counter = 0;
  return "inproc://transport-test-" + name + "-" + std::to_string(counter++);
}

// Sends `request` from the client and answers it on the server; returns the reply text.
std::string RoundTrip(RouterServer& server, DealerClient& client, const std::string& request) {
  EXPECT_TRUE(client.Send(request, kWaitMs).ok());
  auto received = server.Receive(kWaitMs);
  EXPECT_TRUE(received.ok()) << received.status().ToString();
  if (!received.ok() || !received->has_value()) return "<nothing received>";
  const Envelope& envelope = **received;
  EXPECT_EQ(envelope.body, request);
  EXPECT_TRUE(server.Send(envelope.peer, "re:" + envelope.body).ok());
  auto reply = client.Receive(kWaitMs);
  EXPECT_TRUE(reply.ok()) << reply.status().ToString();
  if (!reply.ok() || !reply->has_value()) return "<no reply>";
  return **reply;
}

TEST(TransportTest, TcpRoundTripOnEphemeralPort) {
  TransportContext context;
  auto server = RouterServer::Bind(context, "tcp://127.0.0.1:0");
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  const std::string endpoint = (*server)->endpoint();
  EXPECT_EQ(endpoint.rfind("tcp://127.0.0.1:", 0), 0u) << endpoint;
  EXPECT_NE(endpoint, "tcp://127.0.0.1:0");

  auto client = DealerClient::Connect(context, endpoint);
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  EXPECT_EQ(RoundTrip(**server, **client, "hello"), "re:hello");
  EXPECT_TRUE((*client)->connected());
  EXPECT_EQ((*server)->bytes_received(), 5u);
  EXPECT_EQ((*server)->bytes_sent(), 8u);
  EXPECT_EQ((*client)->bytes_sent(), 5u);
  EXPECT_EQ((*client)->bytes_received(), 8u);
}

TEST(TransportTest, InprocRoundTripIncludingEmptyAndBinaryBodies) {
  TransportContext context;
  const std::string endpoint = UniqueInproc("roundtrip");
  auto server = RouterServer::Bind(context, endpoint);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  EXPECT_EQ((*server)->endpoint(), endpoint);
  auto client = DealerClient::Connect(context, endpoint);
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  EXPECT_TRUE((*client)->connected());

  EXPECT_EQ(RoundTrip(**server, **client, "ping"), "re:ping");
  EXPECT_EQ(RoundTrip(**server, **client, ""), "re:");
  const std::string binary("\0\x01\xff\0", 4);
  EXPECT_EQ(RoundTrip(**server, **client, binary), "re:" + binary);
}

TEST(TransportTest, ServerTellsPeersApart) {
  TransportContext context;
  const std::string endpoint = UniqueInproc("peers");
  auto server = RouterServer::Bind(context, endpoint);
  ASSERT_TRUE(server.ok());
  auto first = DealerClient::Connect(context, endpoint);
  auto second = DealerClient::Connect(context, endpoint);
  ASSERT_TRUE(first.ok() && second.ok());
  ASSERT_TRUE((*first)->Send("from-first", kWaitMs).ok());
  ASSERT_TRUE((*second)->Send("from-second", kWaitMs).ok());

  std::vector<Envelope> received;
  for (int i = 0; i < 2; ++i) {
    auto envelope = (*server)->Receive(kWaitMs);
    ASSERT_TRUE(envelope.ok() && envelope->has_value());
    received.push_back(**envelope);
  }
  EXPECT_NE(received[0].peer, received[1].peer);
  for (const Envelope& envelope : received) {
    ASSERT_TRUE((*server)->Send(envelope.peer, "to:" + envelope.body).ok());
  }
  auto first_reply = (*first)->Receive(kWaitMs);
  auto second_reply = (*second)->Receive(kWaitMs);
  ASSERT_TRUE(first_reply.ok() && first_reply->has_value());
  ASSERT_TRUE(second_reply.ok() && second_reply->has_value());
  EXPECT_EQ(**first_reply, "to:from-first");
  EXPECT_EQ(**second_reply, "to:from-second");
}

// Without CURVE a sender is its connection: the identity is derived from the routing id the
// ROUTER gave it, the same for every message of that connection, different for another one.
TEST(TransportTest, EnvelopeNamesTheSendersConnection) {
  TransportContext context;
  auto server = RouterServer::Bind(context, "tcp://127.0.0.1:0");
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  auto first = DealerClient::Connect(context, (*server)->endpoint());
  auto second = DealerClient::Connect(context, (*server)->endpoint());
  ASSERT_TRUE(first.ok() && second.ok());
  std::vector<Envelope> received;
  for (DealerClient* client : {first->get(), first->get(), second->get()}) {
    ASSERT_TRUE(client->Send("hi", kWaitMs).ok());
    auto envelope = (*server)->Receive(kWaitMs);
    ASSERT_TRUE(envelope.ok() && envelope->has_value());
    received.push_back(**envelope);
  }
  EXPECT_EQ(received[0].identity, TransportIdentity(nullptr, received[0].peer));
  EXPECT_EQ(received[0].identity.rfind("conn:", 0), 0u) << received[0].identity;
  EXPECT_GT(received[0].identity.size(), std::string("conn:").size());
  EXPECT_EQ(received[0].identity, received[1].identity);
  EXPECT_NE(received[0].identity, received[2].identity);
  EXPECT_EQ(received[2].identity, TransportIdentity("", received[2].peer));
}

TEST(TransportTest, TransportIdentityPrefersTheAuthenticatedUser) {
  EXPECT_EQ(TransportIdentity("KEY", std::string("\x00\x01\xff", 3)), "curve:KEY");
  EXPECT_EQ(TransportIdentity(nullptr, std::string("\x00\x01\xff", 3)), "conn:0001ff");
  EXPECT_EQ(TransportIdentity("", "AB"), "conn:4142");
}

TEST(TransportTest, ReplyToUnknownPeerIsUnavailableAndCounted) {
  TransportContext context;
  auto server = RouterServer::Bind(context, UniqueInproc("unknown"));
  ASSERT_TRUE(server.ok());
  const Status status = (*server)->Send(std::string("\0nobody", 7), "lost?");
  EXPECT_EQ(status.code(), StatusCode::kUnavailable) << status.ToString();
  EXPECT_NE(status.message().find("unknown or disconnected peer"), std::string::npos);
  EXPECT_NE(status.message().find("0x006e6f626f6479"), std::string::npos) << status.message();
  EXPECT_EQ((*server)->unroutable(), 1u);
  EXPECT_EQ((*server)->bytes_sent(), 0u);
}

TEST(TransportTest, ReplyToFullPipeIsResourceExhaustedAndCounted) {
  TransportContext context;
  const std::string endpoint = UniqueInproc("full");
  SocketOptions tight;
  tight.send_hwm = 1;
  tight.recv_hwm = 1;
  auto server = RouterServer::Bind(context, endpoint, tight);
  auto client = DealerClient::Connect(context, endpoint, tight);
  ASSERT_TRUE(server.ok() && client.ok());
  ASSERT_TRUE((*client)->Send("hi", kWaitMs).ok());
  auto envelope = (*server)->Receive(kWaitMs);
  ASSERT_TRUE(envelope.ok() && envelope->has_value());

  // The client never reads, so an inproc pipe (capacity send_hwm + recv_hwm) fills up.
  Status status;
  int accepted = 0;
  for (int i = 0; i < 100 && status.ok(); ++i) {
    status = (*server)->Send((*envelope)->peer, "reply");
    if (status.ok()) ++accepted;
  }
  EXPECT_EQ(status.code(), StatusCode::kResourceExhausted) << status.ToString();
  EXPECT_GE(accepted, 1);
  EXPECT_EQ((*server)->pipe_full(), 1u);
  EXPECT_EQ((*server)->unroutable(), 0u);
  EXPECT_EQ((*server)->bytes_sent(), 5u * accepted);
}

TEST(TransportTest, ReceiveTimeoutReturnsNullopt) {
  TransportContext context;
  const std::string endpoint = UniqueInproc("timeout");
  auto server = RouterServer::Bind(context, endpoint);
  auto client = DealerClient::Connect(context, endpoint);
  ASSERT_TRUE(server.ok() && client.ok());

  auto polled = (*server)->Receive(0);
  ASSERT_TRUE(polled.ok());
  EXPECT_FALSE(polled->has_value());
  auto waited = (*server)->Receive(20);
  ASSERT_TRUE(waited.ok());
  EXPECT_FALSE(waited->has_value());
  auto client_waited = (*client)->Receive(20);
  ASSERT_TRUE(client_waited.ok());
  EXPECT_FALSE(client_waited->has_value());
}

TEST(TransportTest, BindToPortInUseIsClearError) {
  TransportContext context;
  auto first = RouterServer::Bind(context, "tcp://127.0.0.1:0");
  ASSERT_TRUE(first.ok());
  auto second = RouterServer::Bind(context, (*first)->endpoint());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kIoError);
  EXPECT_EQ(second.status().message(),
            "cannot bind " + (*first)->endpoint() + ": Address already in use");
}

TEST(TransportTest, MalformedEndpointsAndOptionsAreInvalidArgument) {
  TransportContext context;
  auto bad_bind = RouterServer::Bind(context, "not-an-endpoint");
  ASSERT_FALSE(bad_bind.ok());
  EXPECT_EQ(bad_bind.status().code(), StatusCode::kInvalidArgument) << bad_bind.status().ToString();
  EXPECT_NE(bad_bind.status().message().find("not-an-endpoint"), std::string::npos);

  auto bad_protocol = DealerClient::Connect(context, "carrier-pigeon://roof");
  ASSERT_FALSE(bad_protocol.ok());
  EXPECT_EQ(bad_protocol.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad_protocol.status().message().find("expected tcp://host:port"), std::string::npos);

  SocketOptions bad_hwm;
  bad_hwm.send_hwm = -1;
  auto rejected = RouterServer::Bind(context, UniqueInproc("opts"), bad_hwm);
  ASSERT_FALSE(rejected.ok());
  EXPECT_EQ(rejected.status().code(), StatusCode::kInvalidArgument);

  SocketOptions bad_linger;
  bad_linger.linger_ms = -2;
  EXPECT_EQ(DealerClient::Connect(context, "tcp://127.0.0.1:1", bad_linger).status().code(),
            StatusCode::kInvalidArgument);
  SocketOptions bad_max;
  bad_max.max_message_bytes = -5;
  EXPECT_EQ(RouterServer::Bind(context, UniqueInproc("opts"), bad_max).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(TransportTest, ConfigureHookRunsBeforeBindAndItsErrorIsReturned) {
  TransportContext context;
  bool ran = false;
  SocketOptions hooked;
  hooked.configure = [&ran](zmq::socket_t& socket) {
    ran = true;
    EXPECT_EQ(socket.get(zmq::sockopt::linger), 0);
    return Status::FailedPrecondition("no CURVE key");
  };
  auto server = RouterServer::Bind(context, UniqueInproc("hook"), hooked);
  EXPECT_TRUE(ran);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(server.status().message().find("no CURVE key"), std::string::npos);
}

TEST(TransportTest, MalformedFrameLayoutIsCountedAndServerKeepsServing) {
  TransportContext context;
  const std::string endpoint = UniqueInproc("malformed");
  auto server = RouterServer::Bind(context, endpoint);
  ASSERT_TRUE(server.ok());

  // A raw DEALER can send layouts our DealerClient never produces.
  zmq::socket_t raw(context.raw(), zmq::socket_type::dealer);
  raw.set(zmq::sockopt::linger, 0);
  raw.connect(endpoint);
  raw.send(zmq::str_buffer(""), zmq::send_flags::sndmore);  // REQ-style empty delimiter
  raw.send(zmq::str_buffer("body"), zmq::send_flags::none);
  raw.send(zmq::str_buffer("a"), zmq::send_flags::sndmore);  // two body frames
  raw.send(zmq::str_buffer("b"), zmq::send_flags::none);
  raw.send(zmq::str_buffer("well-formed"), zmq::send_flags::none);

  auto received = (*server)->Receive(kWaitMs);
  ASSERT_TRUE(received.ok() && received->has_value());
  EXPECT_EQ((*received)->body, "well-formed");
  EXPECT_EQ((*server)->malformed_frames(), 2u);
  EXPECT_EQ((*server)->bytes_received(), 11u);

  // Replies still route to that peer, and the server serves a fresh client normally.
  ASSERT_TRUE((*server)->Send((*received)->peer, "ok").ok());
  zmq::message_t reply;
  ASSERT_TRUE(raw.recv(reply));
  EXPECT_EQ(reply.to_string(), "ok");
  auto client = DealerClient::Connect(context, endpoint);
  ASSERT_TRUE(client.ok());
  EXPECT_EQ(RoundTrip(**server, **client, "after"), "re:after");
  raw.close();
}

// Waits (without a timing assertion) until a message waits on `server`'s socket: ReceiveBurst
// itself never waits. On inproc, every message sent before is then queued too.
void WaitUntilReadable(RouterServer& server) {
  zmq_pollitem_t item{server.socket().handle(), 0, ZMQ_POLLIN, 0};
  ASSERT_EQ(zmq_poll(&item, 1, kWaitMs), 1);
}

TEST(TransportTest, ReceiveBurstTakesWhatWaitsUpToTheLimitWithoutCopying) {
  TransportContext context;
  const std::string endpoint = UniqueInproc("burst");
  auto server = RouterServer::Bind(context, endpoint);
  ASSERT_TRUE(server.ok());
  auto client = DealerClient::Connect(context, endpoint);
  ASSERT_TRUE(client.ok());
  constexpr int kMessages = 40;
  for (int i = 0; i < kMessages; ++i) {
    ASSERT_TRUE((*client)->Send("message " + std::to_string(i), kWaitMs).ok());
  }
  // Everything sent on inproc is queued at the server once Send returned.
  WaitUntilReadable(**server);
  std::vector<InboundMessage> burst;
  std::vector<std::string> bodies;
  while (bodies.size() < static_cast<size_t>(kMessages)) {
    burst.clear();
    auto got = (*server)->ReceiveBurst(16, &burst);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    ASSERT_LE(*got, 16u);
    ASSERT_GT(*got, 0u) << "messages were lost after " << bodies.size();
    ASSERT_EQ(burst.size(), *got);
    for (InboundMessage& message : burst) {
      bodies.emplace_back(message.bytes());
      EXPECT_EQ(message.identity().rfind("conn:", 0), 0u) << message.identity();
    }
  }
  for (int i = 0; i < kMessages; ++i) EXPECT_EQ(bodies[i], "message " + std::to_string(i));
  burst.clear();
  auto none = (*server)->ReceiveBurst(16, &burst);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, 0u);  // nothing waits: returns at once

  // The frame is sent back as it is (Send of a zmq message), and the client takes a burst.
  ASSERT_TRUE((*client)->Send("last", kWaitMs).ok());
  WaitUntilReadable(**server);
  ASSERT_TRUE((*server)->ReceiveBurst(16, &burst).ok());
  ASSERT_EQ(burst.size(), 1u);
  zmq::message_t echo(burst[0].bytes().data(), burst[0].bytes().size());
  ASSERT_TRUE((*server)->Send(burst[0].peer, echo).ok());
  ASSERT_TRUE((*server)->Send(burst[0].peer, burst[0].body).ok());
  EXPECT_EQ(burst[0].body.size(), 0u) << "the sent frame was handed to ZeroMQ";
  std::vector<zmq::message_t> replies;
  while (replies.size() < 2) {
    zmq_pollitem_t item{(*client)->socket().handle(), 0, ZMQ_POLLIN, 0};
    ASSERT_EQ(zmq_poll(&item, 1, kWaitMs), 1);
    ASSERT_TRUE((*client)->ReceiveBurst(8, &replies).ok());
  }
  EXPECT_EQ(replies[0].to_string(), "last");
  EXPECT_EQ(replies[1].to_string(), "last");
  EXPECT_EQ((*server)->bytes_sent(), 8u);
}

TEST(TransportTest, ReceiveBurstDiscardsMalformedLayoutsAndKeepsTheRest) {
  TransportContext context;
  const std::string endpoint = UniqueInproc("burst-malformed");
  auto server = RouterServer::Bind(context, endpoint);
  ASSERT_TRUE(server.ok());
  zmq::socket_t raw(context.raw(), zmq::socket_type::dealer);
  raw.set(zmq::sockopt::linger, 0);
  raw.connect(endpoint);
  raw.send(zmq::str_buffer("first"), zmq::send_flags::none);
  raw.send(zmq::str_buffer("a"), zmq::send_flags::sndmore);  // two body frames
  raw.send(zmq::str_buffer("b"), zmq::send_flags::none);
  raw.send(zmq::str_buffer("second"), zmq::send_flags::none);
  WaitUntilReadable(**server);
  std::vector<InboundMessage> burst;
  auto got = (*server)->ReceiveBurst(16, &burst);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ASSERT_EQ(*got, 2u);
  ASSERT_EQ(burst.size(), 2u);
  EXPECT_EQ(burst[0].bytes(), "first");
  EXPECT_EQ(burst[1].bytes(), "second");
  EXPECT_EQ((*server)->malformed_frames(), 1u);
  EXPECT_EQ((*server)->bytes_received(), 11u);
  raw.close();
}

TEST(TransportTest, ClientDiscardsMultiFrameReplies) {
  TransportContext context;
  const std::string endpoint = UniqueInproc("client-malformed");
  zmq::socket_t raw_router(context.raw(), zmq::socket_type::router);
  raw_router.set(zmq::sockopt::linger, 0);
  raw_router.bind(endpoint);
  auto client = DealerClient::Connect(context, endpoint);
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE((*client)->Send("hi", kWaitMs).ok());
  zmq::message_t peer, body;
  ASSERT_TRUE(raw_router.recv(peer));
  ASSERT_TRUE(raw_router.recv(body));

  const std::string peer_id = peer.to_string();
  raw_router.send(zmq::buffer(peer_id), zmq::send_flags::sndmore);
  raw_router.send(zmq::str_buffer("x"), zmq::send_flags::sndmore);
  raw_router.send(zmq::str_buffer("y"), zmq::send_flags::none);
  raw_router.send(zmq::buffer(peer_id), zmq::send_flags::sndmore);
  raw_router.send(zmq::str_buffer("single"), zmq::send_flags::none);

  auto reply = (*client)->Receive(kWaitMs);
  ASSERT_TRUE(reply.ok() && reply->has_value());
  EXPECT_EQ(**reply, "single");
  EXPECT_EQ((*client)->malformed_frames(), 1u);
  client->reset();
  raw_router.close();
}

TEST(TransportTest, OversizedMessageIsDroppedAndServerKeepsServing) {
  TransportContext context;
  SocketOptions small;
  small.max_message_bytes = 1024;
  auto server = RouterServer::Bind(context, "tcp://127.0.0.1:0", small);
  ASSERT_TRUE(server.ok());
  const std::string endpoint = (*server)->endpoint();

  auto abuser = DealerClient::Connect(context, endpoint);
  ASSERT_TRUE(abuser.ok());
  // Queued locally; zmq on the server side drops the connection when the frame header
  // announces more than 1024 bytes, so the body never reaches Receive.
  ASSERT_TRUE((*abuser)->Send(std::string(4096, 'x'), kWaitMs).ok());

  auto honest = DealerClient::Connect(context, endpoint);
  ASSERT_TRUE(honest.ok());
  ASSERT_TRUE((*honest)->Send(std::string(1024, 'y'), kWaitMs).ok());  // exactly the limit
  auto received = (*server)->Receive(kWaitMs);
  ASSERT_TRUE(received.ok() && received->has_value());
  EXPECT_EQ((*received)->body, std::string(1024, 'y'));
  EXPECT_EQ((*server)->bytes_received(), 1024u);
  ASSERT_TRUE((*server)->Send((*received)->peer, "fine").ok());
  auto reply = (*honest)->Receive(kWaitMs);
  ASSERT_TRUE(reply.ok() && reply->has_value());
  EXPECT_EQ(**reply, "fine");
  auto nothing_else = (*server)->Receive(0);
  ASSERT_TRUE(nothing_else.ok());
  EXPECT_FALSE(nothing_else->has_value());
  EXPECT_EQ((*server)->bytes_received(), 1024u);
}

TEST(TransportTest, SendWithoutServerIsUnavailable) {
  TransportContext context;
  // A port that is bound but not listening refuses connections, and stays ours for the
  // whole test (a closed zmq listener would linger briefly, and a free port could be taken).
  const int blocker = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(blocker, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(blocker, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  socklen_t length = sizeof(address);
  ASSERT_EQ(getsockname(blocker, reinterpret_cast<sockaddr*>(&address), &length), 0);
  const std::string endpoint = "tcp://127.0.0.1:" + std::to_string(ntohs(address.sin_port));

  auto client = DealerClient::Connect(context, endpoint);
  ASSERT_TRUE(client.ok());
  EXPECT_FALSE((*client)->connected());
  const Status immediate = (*client)->Send("anyone?", 0);
  EXPECT_EQ(immediate.code(), StatusCode::kUnavailable) << immediate.ToString();
  EXPECT_NE(immediate.message().find("no connection to " + endpoint), std::string::npos);
  const Status waited = (*client)->Send("anyone?", 30);
  EXPECT_EQ(waited.code(), StatusCode::kUnavailable) << waited.ToString();
  EXPECT_EQ((*client)->bytes_sent(), 0u);
  EXPECT_EQ((*client)->wire_bytes_sent(), 0u);
  close(blocker);
}

TEST(TransportTest, ServerGoingAwayMakesSendsUnavailable) {
  TransportContext context;
  auto server = RouterServer::Bind(context, "tcp://127.0.0.1:0");
  ASSERT_TRUE(server.ok());
  // No automatic reconnection: under a parallel ctest another test's server can bind the
  // freed port at once, and a reconnect to it would (rightly) make the client connected.
  SocketOptions options;
  options.configure = [](zmq::socket_t& socket) {
    socket.set(zmq::sockopt::reconnect_ivl, -1);
    return Status::Ok();
  };
  auto client = DealerClient::Connect(context, (*server)->endpoint(), options);
  ASSERT_TRUE(client.ok());
  EXPECT_EQ(RoundTrip(**server, **client, "up"), "re:up");
  EXPECT_TRUE((*client)->connected());

  server->reset();
  // Wait for the disconnect to be noticed (bounded; the check is on state, not on time).
  for (int i = 0; i < 1000 && (*client)->connected(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_FALSE((*client)->connected());
  const Status status = (*client)->Send("still there?", 0);
  EXPECT_EQ(status.code(), StatusCode::kUnavailable) << status.ToString();
}

TEST(TransportTest, SignalInterruptsReceiveWithNullopt) {
  TransportContext context;
  auto server = RouterServer::Bind(context, UniqueInproc("eintr"));
  ASSERT_TRUE(server.ok());
  struct sigaction action = {}, previous = {};
  action.sa_handler = [](int) {};
  sigemptyset(&action.sa_mask);
  action.sa_flags = 0;  // no SA_RESTART: the wait must see EINTR
  ASSERT_EQ(sigaction(SIGUSR1, &action, &previous), 0);

  // Keep signalling until the forever-wait returns: a signal that lands before the wait
  // starts is simply repeated.
  std::atomic<bool> returned{false};
  const pthread_t receiver = pthread_self();
  std::thread signaller([&returned, receiver] {
    while (!returned.load()) {
      pthread_kill(receiver, SIGUSR1);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  auto result = (*server)->Receive(-1);
  returned.store(true);
  signaller.join();
  sigaction(SIGUSR1, &previous, nullptr);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_FALSE(result->has_value());
}

TEST(TransportTest, SendToStalledServerIsDeadlineExceeded) {
  TransportContext context;
  SocketOptions tight;
  tight.send_hwm = 1;
  tight.recv_hwm = 1;
  const std::string endpoint = UniqueInproc("stalled");
  auto server = RouterServer::Bind(context, endpoint, tight);
  auto client = DealerClient::Connect(context, endpoint, tight);
  ASSERT_TRUE(server.ok() && client.ok());
  // The server never reads; the inproc pipe holds send_hwm + recv_hwm messages.
  Status status;
  for (int i = 0; i < 100 && status.ok(); ++i) status = (*client)->Send("work", 0);
  EXPECT_EQ(status.code(), StatusCode::kDeadlineExceeded) << status.ToString();
  EXPECT_NE(status.message().find("send_hwm 1"), std::string::npos);
  EXPECT_EQ((*client)->Send("work", 10).code(), StatusCode::kDeadlineExceeded);

  // Reading one message makes room again.
  auto drained = (*server)->Receive(kWaitMs);
  ASSERT_TRUE(drained.ok() && drained->has_value());
  EXPECT_TRUE((*client)->Send("work", kWaitMs).ok());
}

TEST(TransportTest, WireBytesShortAndLongFrameBoundary) {
  EXPECT_EQ(WireBytes(0), 2u);
  EXPECT_EQ(WireBytes(1), 3u);
  EXPECT_EQ(WireBytes(255), 257u);
  EXPECT_EQ(WireBytes(256), 265u);
  EXPECT_EQ(WireBytes(1 << 20), (1u << 20) + 9u);
}

TEST(TransportTest, WireBytesSentCountsFrameHeaders) {
  TransportContext context;
  const std::string endpoint = UniqueInproc("wire");
  auto server = RouterServer::Bind(context, endpoint);
  auto client = DealerClient::Connect(context, endpoint);
  ASSERT_TRUE(server.ok() && client.ok());
  ASSERT_TRUE((*client)->Send(std::string(10, 'a'), kWaitMs).ok());
  ASSERT_TRUE((*client)->Send(std::string(255, 'b'), kWaitMs).ok());
  ASSERT_TRUE((*client)->Send(std::string(256, 'c'), kWaitMs).ok());
  EXPECT_EQ((*client)->bytes_sent(), 10u + 255u + 256u);
  EXPECT_EQ((*client)->wire_bytes_sent(), (10u + 2) + (255u + 2) + (256u + 9));
}

TEST(TransportTest, ZmqErrorsMapToStatusCodes) {
  EXPECT_EQ(ZmqErrorToStatus(zmq::error_t(EHOSTUNREACH), "x").code(), StatusCode::kUnavailable);
  EXPECT_EQ(ZmqErrorToStatus(zmq::error_t(ETERM), "x").code(), StatusCode::kUnavailable);
  EXPECT_EQ(ZmqErrorToStatus(zmq::error_t(EAGAIN), "x").code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(ZmqErrorToStatus(zmq::error_t(EINVAL), "x").code(), StatusCode::kInvalidArgument);
  const Status in_use = ZmqErrorToStatus(zmq::error_t(EADDRINUSE), "cannot bind tcp://h:1");
  EXPECT_EQ(in_use.code(), StatusCode::kIoError);
  EXPECT_EQ(in_use.message(), "cannot bind tcp://h:1: Address already in use");
}

}  // namespace
}  // namespace cleave
