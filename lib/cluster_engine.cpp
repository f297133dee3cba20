// Cluster, the engine connection: URL parsing, the password, a hiredis context with
// connect and command timeouts, and the mapping of its failures to procshare errors.
// Writes nothing in shared memory.
#include <procshare/cluster.hpp>

#include <fmt/format.h>
#include <hiredis/hiredis.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/time.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <charconv>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

namespace procshare::detail {

namespace {

[[noreturn]] void bad_url(std::string_view url, std::string_view why) {
  throw InvalidArgument("", fmt::format("engine '{}'", url), why);
}

timeval to_timeval(std::chrono::milliseconds ms) {
  return timeval{static_cast<time_t>(ms.count() / 1000),
                 static_cast<suseconds_t>(ms.count() % 1000 * 1000)};
}

// The password the options name, or "" if none.
std::string password_of(const EngineOptions& options, const std::string& url) {
  if (!options.password_env.empty())
    if (const char* value = std::getenv(options.password_env.c_str()); value != nullptr && *value)
      return value;
  if (options.password_file.empty()) return {};
  std::ifstream in(options.password_file);
  std::string line;
  if (!in || !std::getline(in, line))
    throw InvalidArgument("", fmt::format("engine '{}'", url),
                          fmt::format("cannot read the password file '{}'", options.password_file));
  while (!line.empty() && (line.back() == '\r' || line.back() == '\n')) line.pop_back();
  return line;
}

EngineReply convert(const redisReply& r) {
  EngineReply out;
  switch (r.type) {
    case REDIS_REPLY_STRING:
      out.kind = EngineReply::Kind::string;
      out.text.assign(r.str, r.len);
      break;
    case REDIS_REPLY_STATUS:
      out.kind = EngineReply::Kind::status;
      out.text.assign(r.str, r.len);
      break;
    case REDIS_REPLY_INTEGER:
      out.kind = EngineReply::Kind::integer;
      out.integer = r.integer;
      break;
    case REDIS_REPLY_ARRAY:
      out.kind = EngineReply::Kind::array;
      for (std::size_t i = 0; i < r.elements; ++i) out.elements.push_back(convert(*r.element[i]));
      break;
    default:
      out.kind = EngineReply::Kind::nil;
  }
  return out;
}

}  // namespace

bool is_loopback(std::string_view host) {
  if (host == "localhost") return true;
  const std::string text(host);
  in_addr v4{};
  if (::inet_pton(AF_INET, text.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  return ::inet_pton(AF_INET6, text.c_str(), &v6) == 1 && IN6_IS_ADDR_LOOPBACK(&v6);
}

EngineUrl parse_engine_url(std::string_view url) {
  constexpr std::string_view scheme = "redis://";
  if (url.rfind(scheme, 0) != 0) bad_url(url, "the URL must start with redis://");
  std::string_view rest = url.substr(scheme.size());
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  if (rest.find('/') != std::string_view::npos) bad_url(url, "the URL has a path; give redis://[user@]host[:port]");
  EngineUrl out;
  if (const auto at = rest.rfind('@'); at != std::string_view::npos) {
    const std::string_view user = rest.substr(0, at);
    if (user.find(':') != std::string_view::npos)
      throw InvalidArgument("", "engine 'redis://" + std::string(rest.substr(at + 1)) + "'",
                            "the URL holds a password: give it in PROCSHARE_REDIS_PASSWORD or "
                            "EngineOptions::password_file, never in the URL");
    if (user.empty()) bad_url(url, "the user before '@' is empty");
    out.user = user;
    rest = rest.substr(at + 1);
  }
  std::string_view port;
  bool has_port = false;
  if (!rest.empty() && rest.front() == '[') {  // [IPv6]:port
    const auto close = rest.find(']');
    if (close == std::string_view::npos) bad_url(url, "an IPv6 host needs its closing ']'");
    out.host = rest.substr(1, close - 1);
    rest = rest.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') bad_url(url, "expected ':port' after the IPv6 host");
      has_port = true;
      port = rest.substr(1);
    }
  } else {
    const auto colon = rest.find(':');
    out.host = rest.substr(0, colon);
    if (colon != std::string_view::npos) {
      has_port = true;
      port = rest.substr(colon + 1);
    }
  }
  if (out.host.empty()) bad_url(url, "the URL has no host");
  for (const char c : out.host)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != ':' && c != '_')
      bad_url(url, fmt::format("the host '{}' holds a character that cannot be in a host name", out.host));
  if (has_port) {
    int value = 0;
    const auto [end, error] = std::from_chars(port.data(), port.data() + port.size(), value);
    if (port.empty() || error != std::errc{} || end != port.data() + port.size() || value < 1 ||
        value > 65535)
      bad_url(url, fmt::format("the port '{}' is not a number from 1 to 65535", port));
    out.port = value;
  }
  const bool ipv6 = out.host.find(':') != std::string::npos;
  out.text = fmt::format("redis://{}{}{}{}{}:{}", out.user, out.user.empty() ? "" : "@", ipv6 ? "[" : "", out.host,
                         ipv6 ? "]" : "", out.port);
  return out;
}

namespace {

// Connections an Engine of this process left open and healthy, for the next Engine with
// the same server, user, password and timeouts: a program that runs one cluster job after
// another connects and authenticates once. A connection is never shared (an Engine takes
// it, and gives it back when it is destroyed), never used by another process (a forked
// child makes its own), and looked at before it is used again: one the server closed is
// dropped. At most 8 are kept.
class IdleConnections {
public:
  redisContext* take(const std::string& key) {
    std::lock_guard guard(mutex_);
    const pid_t me = ::getpid();
    for (std::size_t i = entries_.size(); i-- > 0;) {
      Entry e = entries_[i];
      if (e.pid != me) {  // (a parent's: its sockets are not this process's to use)
        redisFree(e.context);  // (closes this process's copy of the socket; sends nothing)
        entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(i));
        continue;
      }
      if (e.key != key) continue;
      entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(i));
      pollfd p{e.context->fd, POLLIN | POLLRDHUP, 0};
      if (::poll(&p, 1, 0) != 0) {  // closed by the server (EOF), or bytes nobody asked for
        redisFree(e.context);
        continue;
      }
      return e.context;
    }
    return nullptr;
  }
  void give(std::string key, redisContext* context) {
    std::lock_guard guard(mutex_);
    if (entries_.size() >= 8) {
      redisFree(entries_.front().context);
      entries_.erase(entries_.begin());
    }
    entries_.push_back(Entry{std::move(key), ::getpid(), context});
  }

private:
  struct Entry {
    std::string key;
    pid_t pid;
    redisContext* context;
  };
  std::mutex mutex_;
  std::vector<Entry> entries_;

public:
  std::mutex& mutex() { return mutex_; }  // (for fork: see lock_caches)
};
IdleConnections& idle_connections() {
  static auto* idle = new IdleConnections;  // (never destroyed: no order to keep at exit)
  return *idle;
}

}  // namespace

struct Engine::State {
  EngineUrl url;
  EngineOptions options;
  std::string password;
  redisContext* context = nullptr;
  pid_t owner = ::getpid();  // the process that connected
  bool reusable = true;      // no command left state on the connection (see note_command)

  ~State() {
    // A healthy connection of this process, in its first state, goes back for the next
    // Engine.
    if (context != nullptr && context->err == 0 && reusable && owner == ::getpid()) {
      try {
        idle_connections().give(key(), context);
        context = nullptr;
      } catch (...) {  // (no memory for it: closed)
      }
    }
    drop();
  }
  // A command that leaves state on the connection (another database, a transaction, a
  // subscription, a client setting) makes it unfit for another Engine.
  void note_command(const std::vector<std::string>& args) {
    if (args.empty()) return;
    std::string name = args[0];
    for (char& c : name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    static const char* const stateful[] = {"SELECT",  "MULTI",     "WATCH",     "SUBSCRIBE", "PSUBSCRIBE",
                                           "SSUBSCRIBE", "MONITOR", "HELLO",     "AUTH",      "READONLY",
                                           "READWRITE", "RESET",    "CLIENT",    "SYNC",      "PSYNC"};
    for (const char* s : stateful)
      if (name == s) {
        if (name == "CLIENT" && args.size() > 1) {
          std::string sub = args[1];
          for (char& c : sub) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
          if (sub == "ID" || sub == "INFO" || sub == "GETNAME" || sub == "LIST") return;
        }
        reusable = false;
      }
  }
  // What an idle connection must match to be used again.
  std::string key() const {
    return fmt::format("{}\n{}\n{}\n{}\n{}\n{}", url.host, url.port, url.user, password,
                       options.connect_timeout.count(), options.command_timeout.count());
  }
  void drop() {
    if (context != nullptr) redisFree(std::exchange(context, nullptr));
  }
  [[noreturn]] void unavailable(std::string_view what) {
    throw EngineUnavailable("", fmt::format("engine '{}'", url.text), what);
  }
  // Throws what an error reply means.
  [[noreturn]] void refused(std::string_view call, std::string_view text) {
    const std::string object = fmt::format("engine '{}'", url.text);
    if (text.rfind("WRONGPASS", 0) == 0 || text.rfind("NOAUTH", 0) == 0 ||
        text.find("invalid password") != std::string_view::npos ||
        text.find("invalid username-password") != std::string_view::npos)
      throw AuthFailed("", object, fmt::format("{}: {}", call, text));
    if (text.rfind("NOPERM", 0) == 0)
      throw PermissionDenied("", object, fmt::format("{}: {}", call, text));
    // A server that cannot answer now (loading its data after a restart, a script
    // running too long, a replica without its primary): as unreachable, so retried.
    for (const char* busy : {"LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "READONLY", "CLUSTERDOWN"})
      if (text.rfind(busy, 0) == 0) unavailable(fmt::format("{}: {}", call, text));
    throw Error("", object, fmt::format("{}: {}", call, text));
  }
  // Sends one command on the open context; false (and why) if the connection failed.
  // `meanwhile` (if any) runs once the command is sent, before its reply is read: local
  // work that overlaps the round trip.
  bool send(const std::vector<std::string>& args, EngineReply& out, std::string& failure,
            const std::function<void()>& meanwhile = nullptr) {
    std::vector<const char*> argv;
    std::vector<std::size_t> lengths;
    for (const auto& a : args) {
      argv.push_back(a.data());
      lengths.push_back(a.size());
    }
    redisReply* reply = nullptr;
    if (redisAppendCommandArgv(context, static_cast<int>(argv.size()), argv.data(), lengths.data()) == REDIS_OK) {
      int written = 0;
      while (written == 0)
        if (redisBufferWrite(context, &written) != REDIS_OK) break;
      if (written != 0) {
        if (meanwhile) {
          try {
            meanwhile();
          } catch (...) {
            drop();  // (its reply is still to come: the connection is no longer in step)
            throw;
          }
        }
        void* got = nullptr;
        if (redisGetReply(context, &got) == REDIS_OK) reply = static_cast<redisReply*>(got);
      }
    }
    if (reply == nullptr) {
      failure = context->err == REDIS_ERR_IO && context->errstr[0] != '\0'
                    ? fmt::format("no reply within {} ms ({})", options.command_timeout.count(),
                                  context->errstr)
                    : std::string(context->errstr);
      drop();  // (a hiredis context that failed a call is dead)
      return false;
    }
    const std::unique_ptr<redisReply, void (*)(void*)> owned(reply, freeReplyObject);
    if (reply->type == REDIS_REPLY_ERROR) {
      out = EngineReply{EngineReply::Kind::error, std::string(reply->str, reply->len), 0, {}};
      return true;
    }
    out = convert(*reply);
    return true;
  }
  // One command on a connection opened if need be; an error reply is returned as one.
  EngineReply call(const std::vector<std::string>& args, const std::function<void()>& meanwhile = nullptr) {
    // A command whose reply did not come may have run: it is never sent again here (the
    // caller decides; the cluster's scripts are idempotent). The next call reconnects.
    if (context == nullptr) connect();
    EngineReply reply;
    std::string failure;
    if (!send(args, reply, failure, meanwhile)) unavailable(failure);
    return reply;
  }
  EngineReply checked(const std::vector<std::string>& args) {
    EngineReply reply = call(args);
    if (reply.kind == EngineReply::Kind::error) refused(args.empty() ? "" : args[0], reply.text);
    return reply;
  }
  // Opens a connection, authenticates and PINGs it.
  void connect() {
    reusable = true;  // (a new connection: no state of an earlier command)
    context = redisConnectWithTimeout(url.host.c_str(), url.port, to_timeval(options.connect_timeout));
    if (context == nullptr) unavailable("cannot allocate a connection");
    if (context->err != 0) {
      const std::string why = context->errstr;
      drop();
      unavailable(fmt::format("cannot connect within {} ms: {}", options.connect_timeout.count(), why));
    }
    if (redisSetTimeout(context, to_timeval(options.command_timeout)) != REDIS_OK) {
      drop();
      unavailable("cannot set the command timeout");
    }
    EngineReply reply;
    std::string failure;
    try {
      if (!password.empty()) {
        std::vector<std::string> auth{"AUTH"};
        if (!url.user.empty()) auth.push_back(url.user);
        auth.push_back(password);
        if (!send(auth, reply, failure)) unavailable(failure);
        if (reply.kind == EngineReply::Kind::error) refused("AUTH", reply.text);
      }
      if (password.empty()) {  // (an accepted AUTH already proved the connection)
        if (!send({"PING"}, reply, failure)) unavailable(failure);
        if (reply.kind == EngineReply::Kind::error) refused("PING", reply.text);
      }
    } catch (...) {
      drop();  // (never keep a connection that is not authenticated)
      throw;
    }
  }
};

Engine::Engine(const EngineOptions& options) : state_(std::make_unique<State>()) {
  state_->url = parse_engine_url(options.url);
  state_->options = options;
  const std::string object = fmt::format("engine '{}'", state_->url.text);
  if (options.connect_timeout.count() <= 0 || options.command_timeout.count() <= 0)
    throw InvalidArgument("", object, "connect_timeout and command_timeout must be positive");
  if (!is_loopback(state_->url.host) && !options.insecure_transport)
    throw InvalidArgument("", object,
                          fmt::format("'{}' is not a loopback address, and hiredis 0.14 has no "
                                      "TLS: use a private network or an stunnel to the server's "
                                      "tls-port, and set EngineOptions::insecure_transport",
                                      state_->url.host));
  state_->password = password_of(options, state_->url.text);
  state_->context = idle_connections().take(state_->key());
  if (state_->context == nullptr) state_->connect();
}

Engine::~Engine() = default;

const std::string& Engine::url() const noexcept { return state_->url.text; }

std::optional<EngineReply> Engine::receive(std::chrono::steady_clock::time_point deadline) {
  State& s = *state_;
  if (s.context == nullptr) s.unavailable("receive() on a connection that is closed");
  // (poll and the reply reader, not redisGetReply: a hiredis context whose read timed out
  // is dead)
  for (;;) {
    void* got = nullptr;
    if (redisGetReplyFromReader(s.context, &got) != REDIS_OK) {
      const std::string why = s.context->errstr;
      s.drop();
      s.unavailable(fmt::format("a garbled message: {}", why));
    }
    if (got != nullptr) {
      const std::unique_ptr<redisReply, void (*)(void*)> owned(static_cast<redisReply*>(got), freeReplyObject);
      return convert(*owned);
    }
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::nullopt;
    pollfd p{s.context->fd, POLLIN, 0};
    const int ready = ::poll(&p, 1, static_cast<int>(std::min<long long>(left.count(), 60000)));
    if (ready < 0 && errno != EINTR) s.unavailable(fmt::format("poll: {}", std::strerror(errno)));
    if (ready <= 0) continue;
    if (redisBufferRead(s.context) != REDIS_OK) {
      const std::string why = s.context->errstr;
      s.drop();
      s.unavailable(fmt::format("the connection broke: {}", why));
    }
  }
}

EngineReply Engine::command(const std::vector<std::string>& args) {
  state_->note_command(args);
  return state_->checked(args);
}

namespace {
// Script text (by address) -> its SHA1, as SCRIPT LOAD answered: the same on every server,
// so kept for the process (a server that does not know it answers NOSCRIPT: loaded again).
struct ShaCache {
  std::mutex mutex;
  std::unordered_map<const void*, std::string> shas;
  std::string get(const std::string& script) {
    std::lock_guard guard(mutex);
    const auto at = shas.find(script.data());
    return at == shas.end() ? std::string() : at->second;
  }
  void put(const std::string& script, const std::string& sha) {
    std::lock_guard guard(mutex);
    shas[script.data()] = sha;
  }
};
ShaCache& sha_cache() {
  static auto* cache = new ShaCache;  // (never destroyed: a fork at exit still locks it)
  return *cache;
}
// A fork (a pool's supervisor, a Process, a cluster host's agent) while another thread of
// the process holds the lock of one of the caches above would leave it held for ever in
// the child (the agent uses both): the fork waits until neither is held, and both are
// free in the parent and the child after it. Registered when the library is loaded (not
// lazily: a fork during a lazy registration would leave the child a half-made static).
void lock_caches() {
  sha_cache().mutex.lock();
  idle_connections().mutex().lock();
}
void unlock_caches() {
  idle_connections().mutex().unlock();
  sha_cache().mutex.unlock();
}
[[maybe_unused]] const bool caches_guarded_at_fork = ::pthread_atfork(lock_caches, unlock_caches, unlock_caches) == 0;
}  // namespace

std::string Engine::load(const std::string& script) {
  std::string sha = sha_cache().get(script);
  if (sha.empty()) {
    sha = state_->checked({"SCRIPT", "LOAD", script}).text;
    sha_cache().put(script, sha);
  }
  return sha;
}

EngineReply Engine::eval(const std::string& script, const std::vector<std::string>& keys,
                         const std::vector<std::string>& args, const std::function<void()>& meanwhile) {
  const std::string sha = load(script);
  std::vector<std::string> call{"EVALSHA", sha, std::to_string(keys.size())};
  call.insert(call.end(), keys.begin(), keys.end());
  call.insert(call.end(), args.begin(), args.end());
  EngineReply reply = state_->call(call, meanwhile);
  if (reply.kind == EngineReply::Kind::error && reply.text.rfind("NOSCRIPT", 0) == 0) {
    // The server does not know it (a restart, or another server): load it, and run it
    // once more (NOSCRIPT means it did not run).
    call[1] = state_->checked({"SCRIPT", "LOAD", script}).text;
    sha_cache().put(script, call[1]);
    reply = state_->call(call);
  }
  if (reply.kind == EngineReply::Kind::error) state_->refused("EVALSHA", reply.text);
  return reply;
}

}  // namespace procshare::detail
