// Authenticated, encrypted transport: ZeroMQ CURVE (CurveZMQ, RFC 26) with a ZAP (RFC 27)
// handler that admits only client public keys listed in an allow-list file.
//
// Keys are Z85 text (40 characters for 32 bytes). A key file holds "public <z85>" and, for
// a secret key file (mode 0600, refused when group or others can read it), "secret <z85>";
// `cleave keys generate --type curve` writes both.
//
// An allow list has one client public key per line (or "public <key>" as in a .pub file),
// optionally followed by free text; blank lines and lines starting with '#' are ignored. A
// word "id=<client-id>" after the key binds the key to the client id it speaks for (the id as
// the fl wire requires, common/fl_wire.h ValidateClientId); from a word starting with '#' on,
// the line is a comment, and other words stay free text (so older lists keep their meaning
// unless their free text had a word starting "id="):
//     <z85 key> gateway-3                   # admitted; at the aggregator its id is first come
//     <z85 key> id=gateway-17   # rack 3    # admitted, and it is client gateway-17 for good
// A key names at most one id and an id at most one key (listing a key again without an id
// keeps its id). Anything malformed - a bad key, a malformed id, two ids on one line or for
// one key, one id for two keys - is an error naming the line. The transport only admits
// keys; the aggregator serves a bound key only as its id and reserves the id for that key,
// across its restarts (federated/aggregator_identity.h); other services ignore the ids.
//
// Pitfall (docs/design.md, "Pitfalls"): a CURVE server without a running ZAP handler accepts every
// client - encryption without authentication. So CurveServer() needs a started ZapHandler of the
// same context; the handler binds inproc://zeromq.zap.01 before any server socket exists,
// answers every request of its domain (and refuses other domains), and ZMQ_ZAP_ENFORCE_DOMAIN
// is set on server sockets where this libzmq supports it.
//
// An accepted handshake gets the client's Z85 public key as its ZAP user id, so every message
// of that connection carries it ("User-Id"; RouterServer reports "curve:<key>" as the
// sender's Envelope::identity): services know who a peer is from the transport, never from
// what a message claims.
//
// The allow list is re-read when its modification time or size changes (checked at most
// once a second), when ReloadAllowList() is called, and on SIGHUP (common/shutdown.h). A list
// that fails to parse keeps the previous one (keys and ids) in force and is reported in
// last_error(). ClientIdFor()/KeyForClientId() answer from the list in force.
#pragma once

#include <atomic>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include <zmq.hpp>

#include "common/mutex.h"
#include "common/status.h"
#include "common/transport.h"

namespace prometheus {
class Counter;
}

namespace cleave {

struct CurveKeyPair {
  std::string public_z85;  // 40 characters
  std::string secret_z85;  // 40 characters ("" for a public-only key)
};

// A fresh pair from libzmq (which uses libsodium's or tweetnacl's CSPRNG).
Result<CurveKeyPair> GenerateCurveKeyPair();
// The public key of a secret key. InvalidArgument when it is not 40 Z85 characters.
Result<std::string> CurvePublicFromSecret(const std::string& secret_z85);
// True for 40 characters of the Z85 alphabet that decode to 32 bytes.
bool IsCurveKey(const std::string& z85);

// Writes `<prefix>.key` (public and secret, mode 0600) and `<prefix>.pub` (public) atomically;
// AlreadyExists when either exists and `overwrite` is false.
Status WriteCurveKeyFiles(const CurveKeyPair& pair, const std::filesystem::path& prefix,
                          bool overwrite);
// Reads a key file. With `secret`, the file must hold the secret key (and be private);
// otherwise the public key is enough (a .key file also works).
Result<CurveKeyPair> ReadCurveKeyFile(const std::filesystem::path& path, bool secret);
// A parsed allow list: the admitted keys and the client ids the list binds them to.
struct AllowList {
  std::set<std::string> keys;                           // Z85 public keys
  std::map<std::string, std::string> client_id_of_key;  // key -> client id ("id=" lines)
  std::map<std::string, std::string> key_of_client_id;  // client id -> key (the inverse)
};

// Parses an allow list (see file comment). InvalidArgument naming the line.
Result<AllowList> ParseAllowList(const std::string& text);

// The allow list's key <-> client id bindings, looked up in the list in force at each call
// (so they follow reloads). Both are thread-safe; null functions (CURVE off) bind nothing.
struct CurveClientIds {
  // The client id the list binds `key_z85` to; nullopt when it names none.
  std::function<std::optional<std::string>(const std::string& key_z85)> client_id_of_key;
  // The key the list binds `client_id` to; nullopt when none.
  std::function<std::optional<std::string>(const std::string& client_id)> key_of_client_id;
};

// The ZAP handler of one TransportContext (at most one per context). Thread-safe.
class ZapHandler {
 public:
  // Reads the allow list (errors name the file and line), binds the ZAP endpoint and starts
  // the handler thread. `domain` is the ZAP domain server sockets will use. A non-null
  // `refused_counter` (cleave_curve_refused_total, common/metrics.h) is incremented, from the
  // handler thread, with every refusal; it must outlive the handler.
  static Result<std::unique_ptr<ZapHandler>> Start(TransportContext& context,
                                                   std::filesystem::path allow_list,
                                                   std::string domain = "cleave",
                                                   prometheus::Counter* refused_counter = nullptr);
  ~ZapHandler();  // stops the thread and closes its socket (before the context ends)
  ZapHandler(const ZapHandler&) = delete;
  ZapHandler& operator=(const ZapHandler&) = delete;

  const std::string& domain() const { return domain_; }
  // Re-read the allow list at the next request or within a second.
  void ReloadAllowList() { reload_.store(true); }
  size_t allowed_keys() const EXCLUDES(mu_);
  // The client id the allow list in force binds `key_z85` to; nullopt when none.
  std::optional<std::string> ClientIdFor(const std::string& key_z85) const EXCLUDES(mu_);
  // The key the allow list in force binds `client_id` to; nullopt when none.
  std::optional<std::string> KeyForClientId(const std::string& client_id) const EXCLUDES(mu_);
  // Both lookups as functions; they borrow this handler, which must outlive their callers.
  CurveClientIds ClientIds() const;
  uint64_t accepted() const { return accepted_.load(); }
  // Refused handshakes: unknown keys, other mechanisms or domains.
  uint64_t refused() const { return refused_.load(); }
  uint64_t reloads() const { return reloads_.load(); }
  std::string last_error() const EXCLUDES(mu_);

 private:
  ZapHandler(zmq::socket_t socket, std::filesystem::path allow_list, std::string domain,
             AllowList list);
  void Run() EXCLUDES(mu_);
  void MaybeReload(bool force) EXCLUDES(mu_);

  zmq::socket_t socket_;
  std::filesystem::path allow_list_;
  std::string domain_;
  mutable Mutex mu_;
  AllowList list_ GUARDED_BY(mu_);  // the list in force
  std::string last_error_ GUARDED_BY(mu_);
  // The allow list file as last read; the handler thread only (after the constructor).
  std::filesystem::file_time_type mtime_{};
  uintmax_t size_ = 0;
  std::atomic<bool> stop_{false}, reload_{false};
  std::atomic<uint64_t> accepted_{0}, refused_{0}, reloads_{0};
  prometheus::Counter* refused_counter_ = nullptr;  // set before the thread starts
  std::thread thread_;
};

// SocketOptions::configure for a CURVE server socket: server role, its secret key, the ZAP
// domain of `zap` (required: FailedPrecondition when null - never CURVE without a handler).
std::function<Status(zmq::socket_t&)> CurveServer(const CurveKeyPair& server,
                                                  const ZapHandler* zap);
// SocketOptions::configure for a CURVE client socket: its own key pair and the server's
// public key.
std::function<Status(zmq::socket_t&)> CurveClient(const CurveKeyPair& client,
                                                  const std::string& server_public_z85);

// Daemon wiring from config values (file paths; "" = off).
// Server: secret key and allow list together or neither (a key without a list is
// FailedPrecondition: no CURVE without authentication). Starts the context's ZAP handler and
// sets `options.configure`; the handler is null when CURVE is off. Keep it alive as long as
// the server socket, and destroy it before the context. `refused_counter` as for
// ZapHandler::Start.
Result<std::unique_ptr<ZapHandler>> SetUpCurveServer(
    TransportContext& context, const std::string& secret_key_file,
    const std::string& allow_list_file, SocketOptions& options,
    prometheus::Counter* refused_counter = nullptr);
// Client: with the server's public key, CURVE with this side's secret key (required then);
// without it the link is plain. Sets `options.configure`.
Status SetUpCurveClient(const std::string& secret_key_file,
                        const std::string& server_public_key_file, SocketOptions& options);

}  // namespace cleave
