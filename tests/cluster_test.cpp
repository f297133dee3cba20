// The cluster layer's engine connection, against a private redis-server per test case
// (redis_server.hpp): commands, the password's sources, and every way a connection
// fails, each a clear procshare error naming the URL and never the password; and the
// bad-input table of Cluster (options, passwords, ACL users), each row writing nothing.
#include "redis_server.hpp"

#include <procshare/cluster.hpp>
#include <procshare/pool.hpp>

#include <doctest/doctest.h>

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

using namespace procshare;
using procshare::detail::Engine;
using procshare::detail::EngineReply;
using procshare::test::PasswordEnv;
using procshare::test::RedisServer;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

std::uint64_t twice(std::uint64_t i) { return 2 * i; }

std::string message_of(const std::function<void()>& call) {
  try {
    call();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_SUITE("process") {

TEST_CASE("an Engine runs commands on a private server, with the password from the environment or a file") {
  RedisServer server;
  {
    PasswordEnv env(server.password());
    Engine engine({.url = server.url()});
    CHECK(engine.url() == server.url());
    CHECK(engine.command({"SET", "psj:{t}:k", "41"}).text == "OK");
    CHECK(engine.command({"INCRBY", "psj:{t}:k", "1"}).integer == 42);
    const EngineReply got = engine.command({"GET", "psj:{t}:k"});
    CHECK(got.kind == EngineReply::Kind::string);
    CHECK(got.text == "42");
    CHECK(engine.command({"GET", "psj:{t}:none"}).kind == EngineReply::Kind::nil);
    const EngineReply list = engine.command({"MGET", "psj:{t}:k", "psj:{t}:none"});
    REQUIRE(list.elements.size() == 2);
    CHECK(list.elements[0].text == "42");
  }
  struct PasswordFile {  // (removed even when a check throws)
    std::string path = "/tmp/procshare-pw-" + std::to_string(::getpid());
    ~PasswordFile() { std::remove(path.c_str()); }
  } file;
  {
    const mode_t old = ::umask(077);  // (a password file only its owner can read)
    std::ofstream(file.path) << server.password() << "\n";
    ::umask(old);
  }
  Engine from_file({.url = server.url(), .password_file = file.path});
  CHECK(from_file.command({"GET", "psj:{t}:k"}).text == "42");
}

TEST_CASE("Engines of one process take the healthy connection an earlier one left, never a closed one, nor across a fork") {
  RedisServer server;
  PasswordEnv env(server.password());
  long long first = 0;
  {
    Engine engine({.url = server.url()});
    first = engine.command({"CLIENT", "ID"}).integer;
  }
  {
    Engine again({.url = server.url()});
    CHECK(again.command({"CLIENT", "ID"}).integer == first);  // (reused: no connect, no AUTH)
    Engine second({.url = server.url()});                      // (the first is taken: a new one)
    CHECK(second.command({"CLIENT", "ID"}).integer != first);
    // A forked child never uses its parent's sockets.
    const pid_t child = ::fork();
    if (child == 0) {
      int code = 3;
      try {
        Engine mine({.url = server.url()});
        const long long id = mine.command({"CLIENT", "ID"}).integer;
        code = id != first ? 0 : 1;
      } catch (...) {
      }
      ::_exit(code);
    }
    int status = 0;
    ::waitpid(child, &status, 0);
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  }
  // The server closes an idle connection: the next Engine does not take it, and works.
  long long idle = 0;
  {
    Engine engine({.url = server.url()});
    idle = engine.command({"CLIENT", "ID"}).integer;
  }
  {
    Engine admin({.url = server.url(), .command_timeout = 1999ms});  // (other timeouts: its own connection)
    CHECK(admin.command({"CLIENT", "KILL", "ID", std::to_string(idle)}).integer == 1);
  }
  ::usleep(20000);
  Engine fresh({.url = server.url()});
  CHECK(fresh.command({"CLIENT", "ID"}).integer != idle);
  CHECK(fresh.command({"PING"}).text == "PONG");
  // A command that leaves state on its connection (another database) keeps it from the
  // next Engine.
  long long selected = 0;
  {
    Engine engine({.url = server.url()});
    CHECK(engine.command({"SELECT", "1"}).text == "OK");
    selected = engine.command({"CLIENT", "ID"}).integer;
  }
  {
    Engine next({.url = server.url()});
    CHECK(next.command({"CLIENT", "ID"}).integer != selected);
    CHECK(next.command({"CLIENT", "INFO"}).text.find(" db=0 ") != std::string::npos);
  }
  // Another password: never the connection authenticated with this one.
  PasswordEnv wrong("not-it");
  CHECK_THROWS_AS(Engine({.url = server.url()}), AuthFailed);
}

TEST_CASE("a wrong or missing password is AuthFailed, naming the URL, never the password") {
  RedisServer server;
  {
    PasswordEnv env("not-the-password");
    const std::string text = message_of([&] { Engine engine({.url = server.url()}); });
    CHECK_THROWS_AS(Engine({.url = server.url()}), AuthFailed);
    CHECK(text.find(server.url()) != std::string::npos);
    CHECK(text.find("not-the-password") == std::string::npos);
  }
  CHECK_THROWS_WITH_AS(Engine({.url = server.url()}), doctest::Contains("NOAUTH"), AuthFailed);
}

TEST_CASE("bad URLs and options are InvalidArgument saying what is wrong, before any connection") {
  struct Row {
    std::string url;
    std::string says;
  };
  const std::vector<Row> rows{
      {"http://127.0.0.1:6379", "must start with redis://"},
      {"redis://", "no host"},
      {"redis://127.0.0.1:0", "not a number from 1 to 65535"},
      {"redis://127.0.0.1:65536", "not a number from 1 to 65535"},
      {"redis://127.0.0.1:", "not a number from 1 to 65535"},
      {"redis://127.0.0.1:6x", "not a number from 1 to 65535"},
      {"redis://127.0.0.1:6379/0", "has a path"},
      {"redis://@127.0.0.1", "user before '@' is empty"},
      {"redis://bad host", "cannot be in a host name"},
      {"redis://[::1", "closing ']'"},
      {"redis://10.1.2.3:6379", "no TLS"},
  };
  for (const Row& row : rows) {
    INFO("url: ", row.url);
    CHECK_THROWS_WITH_AS(Engine({.url = row.url}), doctest::Contains(row.says.c_str()), InvalidArgument);
  }
  // A password in the URL is refused, and the message does not repeat it.
  const std::string text = message_of([] { Engine engine({.url = "redis://psr:hunter2@127.0.0.1:6379"}); });
  CHECK(text.find("never in the URL") != std::string::npos);
  CHECK(text.find("hunter2") == std::string::npos);
  CHECK_THROWS_WITH_AS(Engine({.url = "redis://127.0.0.1:6379", .connect_timeout = 0ms}),
                       doctest::Contains("must be positive"), InvalidArgument);
  CHECK_THROWS_WITH_AS(Engine({.url = "redis://127.0.0.1:6379", .password_file = "/nonexistent/pw"}),
                       doctest::Contains("cannot read the password file"), InvalidArgument);
  const auto url = procshare::detail::parse_engine_url("redis://psr@[::1]:7000");
  CHECK(url.user == "psr");
  CHECK(url.host == "::1");
  CHECK(url.port == 7000);
  CHECK(url.text == "redis://psr@[::1]:7000");
  CHECK(procshare::detail::parse_engine_url("redis://localhost").port == 6379);
}

TEST_CASE("no server, or a stopped one, is EngineUnavailable within the timeouts, never a hang") {
  RedisServer server;
  PasswordEnv env(server.password());
  Engine engine({.url = server.url(), .connect_timeout = 300ms, .command_timeout = 300ms});
  CHECK(engine.command({"PING"}).text == "PONG");
  // Stopped: the kernel still accepts connections, so only the command timeout guards.
  ::kill(server.pid(), SIGSTOP);
  auto start = Clock::now();
  CHECK_THROWS_WITH_AS(engine.command({"PING"}), doctest::Contains(server.url().c_str()), EngineUnavailable);
  const auto stalled = Clock::now() - start;
  CHECK(stalled >= 300ms);
  CHECK(stalled < 2s);  // one command timeout: about 0.3 s
  ::kill(server.pid(), SIGCONT);
  CHECK(engine.command({"PING"}).text == "PONG");  // the next call reconnects
  // Gone: refused at once.
  const int port = server.port();
  server.stop();
  start = Clock::now();
  CHECK_THROWS_WITH_AS(Engine({.url = "redis://127.0.0.1:" + std::to_string(port), .connect_timeout = 300ms}),
                       doctest::Contains("cannot connect"), EngineUnavailable);
  CHECK(Clock::now() - start < 2s);
}

TEST_CASE("an ACL user without the rights is PermissionDenied with the server's text") {
  RedisServer server;
  {
    PasswordEnv env(server.password());
    Engine admin({.url = server.url()});
    CHECK(admin.command({"ACL", "SETUSER", "reader", "on", ">reader-pw", "resetkeys", "~psj:*", "-@all", "+get", "+ping"})
              .text == "OK");
  }
  PasswordEnv env("reader-pw");
  Engine reader({.url = "redis://reader@127.0.0.1:" + std::to_string(server.port())});
  CHECK(reader.command({"GET", "psj:{t}:x"}).kind == EngineReply::Kind::nil);
  CHECK_THROWS_WITH_AS(reader.command({"SET", "psj:{t}:x", "1"}), doctest::Contains("NOPERM"), PermissionDenied);
  CHECK_THROWS_WITH_AS(reader.command({"GET", "other"}), doctest::Contains("NOPERM"), PermissionDenied);
}

TEST_CASE("Cluster: bad options, passwords and ACL users are clear errors naming the job and host, and write nothing") {
  RedisServer server;
  PasswordEnv env(server.password());
  Engine admin({.url = server.url()});
  const auto base = [&] {
    return ClusterOptions{.url = server.url(), .job = "bad", .host = "hb", .lease = 3000ms};
  };
  struct Row {
    std::string what;
    std::function<void(ClusterOptions&)> change;
    std::string says;
  };
  const std::vector<Row> rows{
      {"empty job", [](ClusterOptions& o) { o.job = ""; }, "job name must be 1 to 200"},
      {"job with a space", [](ClusterOptions& o) { o.job = "a b"; }, "job name must be 1 to 200"},
      {"job with a brace", [](ClusterOptions& o) { o.job = "a{b}"; }, "without space, '{' or '}'"},
      {"long job", [](ClusterOptions& o) { o.job = std::string(201, 'j'); }, "job name must be 1 to 200"},
      {"host with a space", [](ClusterOptions& o) { o.host = "my host"; }, "host name must be"},
      {"zero lease", [](ClusterOptions& o) { o.lease = 0ms; }, "lease must be positive"},
      {"slow flush", [](ClusterOptions& o) { o.flush = 1001ms; }, "at most lease / 3, so that a working host renews "
                                                                  "its leases in time (flush 1001 ms, lease 3000 ms)"},
      {"zero flush", [](ClusterOptions& o) { o.flush = 0ms; }, "flush must be positive"},
      {"zero unavailable_after", [](ClusterOptions& o) { o.unavailable_after = 0ms; }, "unavailable_after must be positive"},
      {"zero keep", [](ClusterOptions& o) { o.keep = 0ms; }, "keep must be positive"},
      {"huge prefetch", [](ClusterOptions& o) { o.prefetch = 65; }, "prefetch must be at most 64"},
      {"bad URL", [](ClusterOptions& o) { o.url = "redis:/127.0.0.1"; }, "must start with redis://"},
      {"password in the URL", [](ClusterOptions& o) { o.url = "redis://u:pw@127.0.0.1"; }, "never in the URL"},
      {"remote without opt-in", [](ClusterOptions& o) { o.url = "redis://10.9.8.7"; }, "no TLS"},
      {"a name that looks like loopback", [](ClusterOptions& o) { o.url = "redis://127.evil.example"; }, "no TLS"},
      {"zero command timeout", [](ClusterOptions& o) { o.command_timeout = 0ms; }, "must be positive"},
  };
  for (const Row& row : rows) {
    INFO("row: ", row.what);
    ClusterOptions options = base();
    row.change(options);
    const std::string text = message_of([&] { Cluster c(options); });
    CHECK_THROWS_AS(Cluster{options}, InvalidArgument);
    CHECK(text.find(row.says) != std::string::npos);
    CHECK(text.find("(host ") != std::string::npos);
    CHECK(text.find("pw@") == std::string::npos);  // (the password row: never in a message)
  }
  {
    PasswordEnv wrong("not-it");
    const std::string text = message_of([&] { Cluster c(base()); });
    CHECK_THROWS_AS(Cluster{base()}, AuthFailed);
    CHECK(text.find("cluster job 'bad' on " + server.url() + " (host hb)") != std::string::npos);
    CHECK(text.find("not-it") == std::string::npos);
  }
  // An ACL user held to other keys: PermissionDenied with the server's NOPERM text.
  CHECK(admin.command({"ACL", "SETUSER", "narrow", "on", ">narrow-pw", "resetkeys", "~other:*", "resetchannels",
                       "-@all", "+@read", "+@write", "+eval", "+evalsha", "+script|load", "+ping", "+info", "+time"})
            .text == "OK");
  Pool pool({.workers = 1});
  {
    PasswordEnv narrow("narrow-pw");
    ClusterOptions options = base();
    options.url = "redis://narrow@127.0.0.1:" + std::to_string(server.port());
    Cluster cluster(options);
    const std::string text = message_of([&] { cluster.map(pool, Range{0, 10}, twice); });
    CHECK_THROWS_AS(cluster.map(pool, Range{0, 10}, twice), PermissionDenied);
    CHECK(text.find("NOPERM") != std::string::npos);
    CHECK(text.find("cluster job 'bad'") != std::string::npos);
  }
  {
    // A pool that cannot run a chunk (closed): PoolClosed naming the pool and the job,
    // before the job is made.
    Pool closed({.workers = 1});
    closed.close();
    closed.join();
    Cluster cluster(base());
    const std::string text = message_of([&] { cluster.map(closed, Range{0, 10}, twice); });
    CHECK_THROWS_AS(cluster.map(closed, Range{0, 10}, twice), PoolClosed);
    CHECK(text.find("pool (to run cluster job 'bad' on " + server.url() + " (host hb)): the pool is closed") !=
          std::string::npos);
  }
  CHECK(admin.command({"DBSIZE"}).integer == 0);  // no row wrote anything
  // The research's rule set for a job's user is enough to run a job.
  CHECK(admin.command({"ACL", "SETUSER", "psr", "on", ">psr-pw", "resetkeys", "~psj:*", "resetchannels", "&psj:*",
                       "-@all", "+@read", "+@write", "+@pubsub", "+eval", "+evalsha", "+script|load", "+ping",
                       "+info", "+time", "-@dangerous"})
            .text == "OK");
  PasswordEnv psr("psr-pw");
  ClusterOptions options = base();
  options.url = "redis://psr@127.0.0.1:" + std::to_string(server.port());
  Cluster cluster(options);
  const auto doubled = cluster.map(pool, Range{0, 100}, twice);
  CHECK(doubled.size() == 100);
  CHECK(doubled[99] == 198);
}

}  // TEST_SUITE
