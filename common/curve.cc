#include "common/curve.h"

#include <chrono>
#include <sstream>
#include <vector>

#include <prometheus/counter.h>

#include "common/file_util.h"
#include "common/fl_wire.h"
#include "common/logging.h"
#include "common/shutdown.h"

namespace cleave {
namespace {

constexpr char kZapEndpoint[] = "inproc://zeromq.zap.01";
constexpr size_t kZ85KeyChars = 40;

Result<std::string> KeyAfter(const std::string& text, const std::string& label) {
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream words(line);
    std::string first, key;
    if (words >> first >> key && first == label) {
      if (!IsCurveKey(key)) {
        return Status::InvalidArgument("the " + label + " key is not 40 Z85 characters");
      }
      return key;
    }
  }
  return Status::NotFound("no '" + label + " <z85>' line");
}

// Multi-part receive of one ZAP request; empty when interrupted.
std::vector<std::string> ReceiveParts(zmq::socket_t& socket) {
  std::vector<std::string> parts;
  for (;;) {
    zmq::message_t part;
    if (!socket.recv(part, zmq::recv_flags::dontwait)) return {};
    parts.emplace_back(static_cast<const char*>(part.data()), part.size());
    if (!part.more()) return parts;
  }
}

}  // namespace

Result<CurveKeyPair> GenerateCurveKeyPair() {
  char pub[kZ85KeyChars + 1] = {}, sec[kZ85KeyChars + 1] = {};
  if (zmq_curve_keypair(pub, sec) != 0) {
    return Status::Unimplemented(std::string("this libzmq cannot make CURVE keys: ") +
                                 zmq_strerror(zmq_errno()));
  }
  return CurveKeyPair{pub, sec};
}

bool IsCurveKey(const std::string& z85) {
  if (z85.size() != kZ85KeyChars) return false;
  uint8_t raw[32];
  return zmq_z85_decode(raw, z85.c_str()) != nullptr;
}

Result<std::string> CurvePublicFromSecret(const std::string& secret_z85) {
  if (!IsCurveKey(secret_z85)) {
    return Status::InvalidArgument("a CURVE secret key is 40 Z85 characters");
  }
  char pub[kZ85KeyChars + 1] = {};
  if (zmq_curve_public(pub, secret_z85.c_str()) != 0) {
    return Status::InvalidArgument(std::string("not a CURVE secret key: ") +
                                   zmq_strerror(zmq_errno()));
  }
  return std::string(pub);
}

Status WriteCurveKeyFiles(const CurveKeyPair& pair, const std::filesystem::path& prefix,
                          bool overwrite) {
  const std::string header = "# cleave CURVE key (ZeroMQ CurveZMQ, Z85)\n";
  return WriteKeyPairFiles(
      prefix, header + "public " + pair.public_z85 + "\nsecret " + pair.secret_z85 + "\n",
      header + "public " + pair.public_z85 + "\n", overwrite);
}

Result<CurveKeyPair> ReadCurveKeyFile(const std::filesystem::path& path, bool secret) {
  const std::string where = "CURVE key file " + path.string();
  Result<std::string> text = secret ? ReadPrivateFile(path) : ReadFileToString(path);
  if (!text.ok()) return text.status().WithContext(where);
  CurveKeyPair pair;
  if (secret) {
    Result<std::string> sec = KeyAfter(*text, "secret");
    if (!sec.ok()) return sec.status().WithContext(where);
    pair.secret_z85 = *sec;
    CLEAVE_ASSIGN_OR_RETURN(pair.public_z85, CurvePublicFromSecret(pair.secret_z85));
    Result<std::string> listed = KeyAfter(*text, "public");
    if (listed.ok() && *listed != pair.public_z85) {
      return Status::InvalidArgument(where + ": its public key does not belong to its secret key");
    }
    return pair;
  }
  Result<std::string> pub = KeyAfter(*text, "public");
  if (!pub.ok()) return pub.status().WithContext(where);
  pair.public_z85 = *pub;
  return pair;
}

Result<AllowList> ParseAllowList(const std::string& text) {
  AllowList list;
  std::map<std::string, int> id_line;  // client id -> the line that gave it
  std::istringstream lines(text);
  int number = 0;
  for (std::string line; std::getline(lines, line);) {
    ++number;
    const std::string where = "line " + std::to_string(number) + ": ";
    std::istringstream words(line);
    std::string key;
    if (!(words >> key) || key[0] == '#') continue;
    if (key == "public") words >> key;  // a .pub file's line pasted as is
    if (!IsCurveKey(key)) {
      return Status::InvalidArgument(where + "not a CURVE public key (40 Z85 characters)");
    }
    std::string id;
    for (std::string word; words >> word && word[0] != '#';) {
      if (word.rfind("id=", 0) != 0) continue;  // free text
      if (!id.empty()) return Status::InvalidArgument(where + "more than one id= token");
      id = word.substr(3);
      if (Status valid = wire::fl::ValidateClientId(id); !valid.ok()) {
        return Status::InvalidArgument(where + "id=: " + valid.message());
      }
    }
    list.keys.insert(key);
    if (id.empty()) continue;
    auto [bound, fresh_key] = list.client_id_of_key.emplace(key, id);
    if (!fresh_key && bound->second != id) {
      return Status::InvalidArgument(where + "this key is already bound to client id '" +
                                     bound->second + "' on line " +
                                     std::to_string(id_line[bound->second]));
    }
    auto [owner, fresh_id] = list.key_of_client_id.emplace(id, key);
    if (!fresh_id && owner->second != key) {
      return Status::InvalidArgument(where + "client id '" + id +
                                     "' is already bound to another key on line " +
                                     std::to_string(id_line[id]));
    }
    id_line.emplace(id, number);
  }
  return list;
}

// ---------------------------------------------------------------------------------------
// ZapHandler

Result<std::unique_ptr<ZapHandler>> ZapHandler::Start(TransportContext& context,
                                                      std::filesystem::path allow_list,
                                                      std::string domain,
                                                      prometheus::Counter* refused_counter) {
  Result<std::string> text = ReadFileToString(allow_list);
  if (!text.ok()) return text.status().WithContext("CURVE allow list");
  Result<AllowList> list = ParseAllowList(*text);
  if (!list.ok()) return list.status().WithContext("CURVE allow list " + allow_list.string());
  try {
    zmq::socket_t socket(context.raw(), zmq::socket_type::rep);
    socket.set(zmq::sockopt::linger, 0);
    socket.bind(kZapEndpoint);
    std::unique_ptr<ZapHandler> handler(
        new ZapHandler(std::move(socket), std::move(allow_list), std::move(domain), *list));
    handler->refused_counter_ = refused_counter;
    handler->thread_ = std::thread([h = handler.get()] { h->Run(); });
    return handler;
  } catch (const zmq::error_t& e) {
    return ZmqErrorToStatus(e, "cannot start the ZAP handler (is one already running?)");
  }
}

ZapHandler::ZapHandler(zmq::socket_t socket, std::filesystem::path allow_list, std::string domain,
                       AllowList list)
    : socket_(std::move(socket)),
      allow_list_(std::move(allow_list)),
      domain_(std::move(domain)),
      list_(std::move(list)) {
  std::error_code ec;
  mtime_ = std::filesystem::last_write_time(allow_list_, ec);
  size_ = std::filesystem::file_size(allow_list_, ec);
}

ZapHandler::~ZapHandler() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
  socket_.close();
}

size_t ZapHandler::allowed_keys() const {
  MutexLock lock(&mu_);
  return list_.keys.size();
}

std::optional<std::string> ZapHandler::ClientIdFor(const std::string& key_z85) const {
  MutexLock lock(&mu_);
  auto it = list_.client_id_of_key.find(key_z85);
  if (it == list_.client_id_of_key.end()) return std::nullopt;
  return it->second;
}

std::optional<std::string> ZapHandler::KeyForClientId(const std::string& client_id) const {
  MutexLock lock(&mu_);
  auto it = list_.key_of_client_id.find(client_id);
  if (it == list_.key_of_client_id.end()) return std::nullopt;
  return it->second;
}

CurveClientIds ZapHandler::ClientIds() const {
  CurveClientIds ids;
  ids.client_id_of_key = [this](const std::string& key) { return ClientIdFor(key); };
  ids.key_of_client_id = [this](const std::string& id) { return KeyForClientId(id); };
  return ids;
}

std::string ZapHandler::last_error() const {
  MutexLock lock(&mu_);
  return last_error_;
}

void ZapHandler::MaybeReload(bool force) {
  std::error_code ec;
  const auto mtime = std::filesystem::last_write_time(allow_list_, ec);
  const uintmax_t size = ec ? 0 : std::filesystem::file_size(allow_list_, ec);
  if (!force && !ec && mtime == mtime_ && size == size_) return;
  Result<std::string> text = ReadFileToString(allow_list_);
  Result<AllowList> list = text.ok() ? ParseAllowList(*text) : Result<AllowList>(text.status());
  MutexLock lock(&mu_);
  mtime_ = mtime;
  size_ = size;
  if (!list.ok()) {
    last_error_ = list.status().ToString();
    GetLogger("curve")->error("CURVE allow list {} not reloaded (the previous one stays): {}",
                              allow_list_.string(), last_error_);
    return;
  }
  list_ = std::move(*list);
  last_error_.clear();
  reloads_.fetch_add(1);
  GetLogger("curve")->info("CURVE allow list {} reloaded: {} keys, {} bound to client ids",
                           allow_list_.string(), list_.keys.size(), list_.client_id_of_key.size());
}

void ZapHandler::Run() {
  auto last_check = std::chrono::steady_clock::now();
  unsigned long generation = ReloadGeneration();
  while (!stop_.load()) {
    zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
    try {
      zmq::poll(&item, 1, std::chrono::milliseconds(100));
    } catch (const zmq::error_t&) {
      continue;  // EINTR
    }
    const auto now = std::chrono::steady_clock::now();
    const unsigned long now_generation = ReloadGeneration();  // SIGHUP
    const bool forced = reload_.exchange(false) || now_generation != generation;
    generation = now_generation;
    if (forced || now - last_check > std::chrono::seconds(1)) {
      MaybeReload(forced);
      last_check = now;
    }
    if (!(item.revents & ZMQ_POLLIN)) continue;
    std::vector<std::string> request;
    try {
      request = ReceiveParts(socket_);
    } catch (const zmq::error_t&) {
      continue;
    }
    if (request.empty()) continue;
    // version, request id, domain, address, identity, mechanism, credentials...
    const bool well_formed = request.size() >= 6 && request[0] == "1.0";
    std::string status = "400", text = "malformed ZAP request", client_key;
    if (well_formed) {
      const std::string& zap_domain = request[2];
      const std::string& mechanism = request[5];
      if (zap_domain != domain_) {
        text = "unknown ZAP domain";
      } else if (mechanism != "CURVE" || request.size() < 7 || request[6].size() != 32) {
        text = "CURVE required";
      } else {
        char z85[kZ85KeyChars + 1] = {};
        zmq_z85_encode(z85, reinterpret_cast<const uint8_t*>(request[6].data()), 32);
        MutexLock lock(&mu_);
        if (list_.keys.count(z85)) {
          status = "200";
          text = "OK";
          client_key = z85;
        } else {
          text = "client key not allowed";
          GetLogger("curve")->warn("refused CURVE client {} from {}: key not in the allow list",
                                   z85, request[3]);
        }
      }
    }
    if (status == "200") {
      accepted_.fetch_add(1);
    } else {
      refused_.fetch_add(1);
      if (refused_counter_ != nullptr) refused_counter_->Increment();
    }
    const std::string request_id = request.size() > 1 ? request[1] : "";
    // The user id becomes the connection's "User-Id" property: the client's key is who it is
    // (common/transport.h Envelope::identity).
    const std::string user = status == "200" ? client_key : "";
    try {
      socket_.send(zmq::buffer(std::string("1.0")), zmq::send_flags::sndmore);
      socket_.send(zmq::buffer(request_id), zmq::send_flags::sndmore);
      socket_.send(zmq::buffer(status), zmq::send_flags::sndmore);
      socket_.send(zmq::buffer(text), zmq::send_flags::sndmore);
      socket_.send(zmq::buffer(user), zmq::send_flags::sndmore);
      socket_.send(zmq::message_t(), zmq::send_flags::none);
    } catch (const zmq::error_t&) {
      // The REP socket is in a bad state only if the context is ending; the loop ends too.
    }
  }
}

std::function<Status(zmq::socket_t&)> CurveServer(const CurveKeyPair& server,
                                                  const ZapHandler* zap) {
  const std::string secret = server.secret_z85;
  const std::string domain = zap ? zap->domain() : "";
  return [secret, domain, zap](zmq::socket_t& socket) -> Status {
    if (zap == nullptr) {
      return Status::FailedPrecondition(
          "CURVE server without a ZAP handler would accept any client: start one (an allow "
          "list) first");
    }
    if (!IsCurveKey(secret)) return Status::InvalidArgument("CURVE server secret key missing");
    try {
      socket.set(zmq::sockopt::curve_server, 1);
      socket.set(zmq::sockopt::curve_secretkey, secret);
      socket.set(zmq::sockopt::zap_domain, domain);
#ifdef ZMQ_ZAP_ENFORCE_DOMAIN
      try {
        socket.set(zmq::sockopt::zap_enforce_domain, 1);
      } catch (const zmq::error_t&) {
        // A libzmq built without draft options: the handler refuses other domains itself.
      }
#endif
    } catch (const zmq::error_t& e) {
      return ZmqErrorToStatus(e, "cannot configure CURVE (server)");
    }
    return Status::Ok();
  };
}

std::function<Status(zmq::socket_t&)> CurveClient(const CurveKeyPair& client,
                                                  const std::string& server_public_z85) {
  return [client, server_public_z85](zmq::socket_t& socket) -> Status {
    if (!IsCurveKey(client.public_z85) || !IsCurveKey(client.secret_z85)) {
      return Status::InvalidArgument("CURVE client key pair missing");
    }
    if (!IsCurveKey(server_public_z85)) {
      return Status::InvalidArgument("CURVE server public key missing or malformed");
    }
    try {
      socket.set(zmq::sockopt::curve_serverkey, server_public_z85);
      socket.set(zmq::sockopt::curve_publickey, client.public_z85);
      socket.set(zmq::sockopt::curve_secretkey, client.secret_z85);
    } catch (const zmq::error_t& e) {
      return ZmqErrorToStatus(e, "cannot configure CURVE (client)");
    }
    return Status::Ok();
  };
}

Result<std::unique_ptr<ZapHandler>> SetUpCurveServer(TransportContext& context,
                                                     const std::string& secret_key_file,
                                                     const std::string& allow_list_file,
                                                     SocketOptions& options,
                                                     prometheus::Counter* refused_counter) {
  if (secret_key_file.empty() && allow_list_file.empty()) return std::unique_ptr<ZapHandler>();
  if (secret_key_file.empty() || allow_list_file.empty()) {
    return Status::FailedPrecondition(
        "CURVE needs both the server's secret key and an allow list of client keys: "
        "encryption without authentication would admit any client");
  }
  CLEAVE_ASSIGN_OR_RETURN(CurveKeyPair keys, ReadCurveKeyFile(secret_key_file, /*secret=*/true));
  CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<ZapHandler> zap,
                          ZapHandler::Start(context, allow_list_file, "cleave", refused_counter));
  options.configure = CurveServer(keys, zap.get());
  GetLogger("curve")->info("CURVE on: server key {}, {} client keys allowed", keys.public_z85,
                           zap->allowed_keys());
  return zap;
}

Status SetUpCurveClient(const std::string& secret_key_file,
                        const std::string& server_public_key_file, SocketOptions& options) {
  if (server_public_key_file.empty()) return Status::Ok();  // this link is plain
  if (secret_key_file.empty()) {
    return Status::FailedPrecondition("a CURVE server public key needs this side's secret key too");
  }
  CLEAVE_ASSIGN_OR_RETURN(CurveKeyPair keys, ReadCurveKeyFile(secret_key_file, /*secret=*/true));
  CLEAVE_ASSIGN_OR_RETURN(CurveKeyPair server, ReadCurveKeyFile(server_public_key_file, false));
  options.configure = CurveClient(keys, server.public_z85);
  return Status::Ok();
}

}  // namespace cleave
