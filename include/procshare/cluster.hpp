// Cluster: one job on many hosts, on a Redis server (issue 15, in progress). This first
// part is the connection to the engine: its URL, the password (never in argv or the
// URL), connect and command timeouts, and the errors every later call reports.
//
// Built only when hiredis is found (meson option `cluster`, auto); link procshare_cluster.
// hiredis 0.14 has no TLS: a URL whose host is not a loopback address is refused unless
// EngineOptions::insecure_transport says the network is private (or an stunnel runs).
#pragma once

#include <procshare/error.hpp>

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace procshare {

// The engine could not be reached, or stopped answering (the message says for how long
// and the last error).
class PROCSHARE_API EngineUnavailable : public Error {
public:
  using Error::Error;
};
// The engine refused the password (WRONGPASS), or wants one (NOAUTH).
class PROCSHARE_API AuthFailed : public Error {
public:
  using Error::Error;
};

// How to reach the engine.
struct EngineOptions {
  // redis://[user@]host[:port]: the user is a Redis ACL user ("" is the default user);
  // the port is 6379 unless given. A password in the URL is refused.
  std::string url{};
  // The password: from this environment variable if it is set, else from
  // `password_file` (its first line) if given, else none.
  std::string password_env = "PROCSHARE_REDIS_PASSWORD";
  std::string password_file{};
  std::chrono::milliseconds connect_timeout{1000};
  std::chrono::milliseconds command_timeout{2000};
  // Allow a host that is not a loopback address without TLS (hiredis 0.14 has none).
  bool insecure_transport = false;
};

namespace detail {

// A URL taken apart; `text` is what messages name (never a password).
struct EngineUrl {
  std::string user;
  std::string host;
  int port = 6379;
  std::string text;
};
// Throws InvalidArgument naming the URL and what is wrong with it.
PROCSHARE_API EngineUrl parse_engine_url(std::string_view url);
// Whether `host` is a loopback address (localhost, 127.0.0.0/8, ::1).
PROCSHARE_API bool is_loopback(std::string_view host);

// One reply of the engine.
struct EngineReply {
  enum class Kind { string, array, integer, nil, status };
  Kind kind = Kind::nil;
  std::string text;    // string, status
  long long integer = 0;
  std::vector<EngineReply> elements;  // array
};

// A connection to the engine (one socket; not shared between processes: a fork makes
// its own). Connects, authenticates and PINGs at construction. A call whose reply did
// not come is EngineUnavailable and is not sent again (it may have run); the next call
// reconnects.
class PROCSHARE_API Engine {
public:
  // Throws InvalidArgument (bad options), EngineUnavailable, AuthFailed,
  // PermissionDenied.
  explicit Engine(const EngineOptions& options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Runs one command. An error reply throws: AuthFailed (WRONGPASS, NOAUTH),
  // PermissionDenied (NOPERM, with the server's text), Error (any other, with its text);
  // no reply within the command timeout, or a broken connection, is EngineUnavailable.
  EngineReply command(const std::vector<std::string>& args);
  // The URL as messages name it.
  const std::string& url() const noexcept;

private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace detail
}  // namespace procshare
