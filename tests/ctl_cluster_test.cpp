// procshare-ctl cluster end to end: the real procshare-ctl (its path from the
// environment) against a private redis-server per case (redis_server.hpp) and real hosts
// (forked processes running a Cluster map on a Pool, cluster_hosts.hpp). A job is held
// running by a gate file its task waits on, so a case sees it running for as long as it
// needs to, and ends it by removing the file: no sleep orders anything.
#include "../lib/detail/cluster_scripts.hpp"
#include "cluster_hosts.hpp"
#include "ctl_run.hpp"
#include "redis_server.hpp"
#include "support.hpp"

#include <procshare/cluster.hpp>
#include <procshare/cluster_report.hpp>
#include <procshare/pool.hpp>

#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <list>
#include <regex>
#include <stdexcept>
#include <string>
#include <vector>

using namespace procshare;
using procshare::detail::Engine;
using procshare::test::ctl;
using procshare::test::Hosts;
using procshare::test::PasswordEnv;
using procshare::test::RedisServer;
using procshare::test::run;
using procshare::test::SegmentName;
using namespace std::chrono_literals;

namespace {

// Waits while the file `gate` exists, then returns the item.
std::uint64_t gated(std::uint64_t i, std::string gate) {
  while (::access(gate.c_str(), F_OK) == 0) ::usleep(2000);
  return i;
}
// As gated, and items 42, 142, 242, ... throw.
std::uint64_t gated_failing(std::uint64_t i, std::string gate) {
  gated(i, gate);
  if (i % 100 == 42) throw std::runtime_error("bad item " + std::to_string(i));
  return i;
}

// A file that holds the jobs given it running while it exists (removed at the latest when
// the case ends).
class Gate {
public:
  Gate() {
    static int count = 0;
    path_ = "/tmp/procshare-ctl-cluster-gate-" + std::to_string(::getpid()) + "-" + std::to_string(++count);
    const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) throw std::runtime_error("cannot make " + path_);
    ::close(fd);
  }
  ~Gate() { open(); }
  Gate(const Gate&) = delete;
  Gate& operator=(const Gate&) = delete;
  const std::string& path() const { return path_; }
  // Lets the jobs run.
  void open() { ::unlink(path_.c_str()); }

private:
  std::string path_;
};

// Starts a host "hK" of a map of `n` items of `f` (gated by `gate`), chunks of 10, a
// lease of 2 s; it reports "ok N" or what it threw. Its pool's control segment is named
// in `pools`, which removes it even when the host was killed.
void start_host(Hosts& hosts, std::list<SegmentName>& pools, const RedisServer& server, const std::string& job,
                std::uint64_t n, const Gate& gate, std::uint64_t (*f)(std::uint64_t, std::string) = gated) {
  const std::string url = server.url(), path = gate.path(), pool_name = pools.emplace_back("pool").str();
  hosts.start([=](int me) {
    Pool pool({.workers = 1, .name = pool_name});
    Cluster cluster({.url = url, .job = job, .host = "h" + std::to_string(me), .lease = 2000ms, .flush = 50ms,
                     .chunk = 10});
    const auto got = cluster.map(pool, Range{0, n}, f, path);
    return "ok " + std::to_string(got.size());
  });
}

// Polls `condition` every 10 ms for up to `limit`; whether it came true.
bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds limit = 20s) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > until) return false;
    ::usleep(10000);
  }
  return true;
}

// The number of fields of a job's hash `key` (hosts, owner, ...).
long long fields(const RedisServer& server, const std::string& job, const std::string& key) {
  Engine engine({.url = server.url()});
  return engine.command({"HLEN", "psj:{" + job + "}:" + key}).integer;
}

// Until `hosts` hosts joined `job` and each holds its two chunks (one running, one
// claimed ahead): they are inside get(), renewing their leases.
bool all_working(const RedisServer& server, const std::string& job, int hosts) {
  return eventually([&] { return fields(server, job, "hosts") == hosts && fields(server, job, "owner") == 2 * hosts; });
}

// The job's keys in the engine, sorted.
std::vector<std::string> keys_of(const RedisServer& server, const std::string& job) {
  Engine engine({.url = server.url()});
  std::vector<std::string> out;
  for (const auto& key : engine.command({"KEYS", "psj:{" + job + "}:*"}).elements) out.push_back(key.text);
  std::sort(out.begin(), out.end());
  return out;
}

// The hosts of `job` seen at or after its end.
std::vector<std::string> hosts_seen_since_end(const RedisServer& server, const std::string& job) {
  Engine engine({.url = server.url()});
  const long long ended = std::stoll(procshare::test::meta_of(engine, job).at("ended"));
  const auto hosts = engine.command({"HGETALL", "psj:{" + job + "}:hosts"});
  std::vector<std::string> out;
  for (std::size_t i = 0; i + 1 < hosts.elements.size(); i += 2)
    if (std::stoll(hosts.elements[i + 1].text) >= ended) out.push_back(hosts.elements[i].text);
  std::sort(out.begin(), out.end());
  return out;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// SIGKILLs every host (and its pool) and reaps them; whether each died of it.
bool kill_all(Hosts& hosts) {
  for (int k = 0; k < hosts.count(); ++k) hosts.signal_group(k, SIGKILL);
  bool killed = true;
  for (const std::string& report : hosts.reports(10s)) killed = killed && report == "killed by signal 9";
  return killed;
}

// A case's private server (its password in this process's environment, which the
// procshare-ctl runs inherit), and hosts of one job held running by a gate.
struct Setup {
  RedisServer server;
  PasswordEnv env{server.password()};
  Gate gate;
  std::list<SegmentName> pools;  // the hosts' pools' control segments
  Hosts hosts;  // (destroyed first: killed and reaped before the server stops)

  // Starts `count` hosts of a map of `n` items of `f` named `job`; whether each then works
  // on it within 20 s.
  bool start_held(const std::string& job, int count = 2, std::uint64_t n = 200,
                  std::uint64_t (*f)(std::uint64_t, std::string) = gated) {
    for (int k = 0; k < count; ++k) start_host(hosts, pools, server, job, n, gate, f);
    return all_working(server, job, count);
  }
};

// Writes the engine's state of a running map `job` of 300 items that no host runs any more,
// as the scripts leave it: 3 chunks made, the first done, the second held by h0 (a lease
// far ahead), the third free (the part of an option its host did not keep: deadline 0, no
// owner). Nothing will claim from it.
void write_unattended_job(Engine& engine, const std::string& job) {
  const std::string k = "psj:{" + job + "}:";
  engine.command({"HSET", k + "meta", "epoch", "e1", "kind", "map", "n", "300", "chunk", "0", "state", "running",
                  "stop", "", "next", "300", "made", "3", "best", "300", "fence", "2", "done_items", "50",
                  "failed_items", "0", "skipped_items", "0", "done_chunks", "1", "redelivered", "0", "fenced", "0",
                  "lease", "10000", "keep", "60000", "created", "1"});
  engine.command({"HSET", k + "chunks", "0", "0 50", "1", "50 120", "2", "120 300"});
  engine.command({"SETBIT", k + "done", "0", "1"});
  engine.command({"HSET", k + "owner", "1", "2:h0:n1"});
  engine.command({"ZADD", k + "leases", "99999999999999", "1", "0", "2"});
  engine.command({"HSET", k + "hosts", "h0", "1"});
}

std::uint64_t twice(std::uint64_t i) { return 2 * i; }

}  // namespace

TEST_SUITE("process") {

TEST_CASE("cluster ls shows a running job with its kind, hosts and total, then done once its hosts finished") {
  Setup setup;
  auto& [server, env, gate, pools, hosts] = setup;
  REQUIRE(setup.start_held("sweep"));
  const auto running = run(ctl("cluster ls " + server.url()));
  CHECK(running.status == 0);
  CHECK(std::regex_search(running.text, std::regex(R"(\nsweep +map +running +2 +0/200 \(0%\) +- +\S+\n)")));
  const auto json = run(ctl("cluster ls " + server.url() + " --json"));
  CHECK(json.status == 0);
  CHECK(contains(json.text, R"([{"name":"sweep","kind":"map","state":"running","abandoned":false,"stopped_by":"",)"
                            R"("hosts":2,"total":200,"settled":0,)"));
  gate.open();
  for (const std::string& report : hosts.reports(60s)) CHECK(report == "ok 200");
  const auto done = run(ctl("cluster ls " + server.url()));
  CHECK(done.status == 0);
  CHECK(std::regex_search(done.text, std::regex(R"(\nsweep +map +done +2 +200/200 \(100%\) +- +\S+\n)")));
}

TEST_CASE("cluster show lists each host with its chunks and items, the leases, and the lowest failures") {
  Setup setup;
  auto& [server, env, gate, pools, hosts] = setup;
  REQUIRE(setup.start_held("faulty", 2, 300, gated_failing));
  const auto running = run(ctl("cluster show " + server.url() + " faulty --json"));
  CHECK(running.status == 0);
  for (const char* host : {"h0", "h1"})
    CHECK(std::regex_search(running.text, std::regex(std::string(R"(\{"name":")") + host +
                                                     R"(","last_seen_ms":\d+,"chunks_held":2,"items_completed":0,)")));
  CHECK(std::regex_search(running.text, std::regex(R"("leases":\[(\{"chunk":\d,"first":\d+,"end":\d+,"partial":0,)"
                                                   R"("holder":"h[01]","left_ms":\d+,"free":false\},?){4}\])")));
  const auto text = run(ctl("cluster show " + server.url() + " faulty"));
  CHECK(contains(text.text, "cluster job 'faulty' on " + server.url() + ": map running, made "));
  CHECK(contains(text.text, "\nhosts: 2\n"));
  CHECK(contains(text.text, "\nleases: 4\n"));

  gate.open();
  for (const std::string& report : hosts.reports(60s))
    CHECK(contains(report, "threw TaskError: cluster job 'faulty' on " + server.url()));
  const auto done = run(ctl("cluster show " + server.url() + " faulty"));
  CHECK(done.status == 0);
  CHECK(contains(done.text, "  items: 300/300 (100%): 297 done, 3 failed, 0 skipped, 0 in running chunks\n"));
  CHECK(contains(done.text, "\nfailures: 3 (lowest first)\n"));
  CHECK(std::regex_search(done.text, std::regex(R"(\n  item 42 on host h[01]: std::runtime_error: bad item 42 \(worker pid \d+\)\n)"
                                                R"(  item 142 on host h[01]: std::runtime_error: bad item 142 \(worker pid \d+\)\n)"
                                                R"(  item 242 on host h[01]: std::runtime_error: bad item 242 \(worker pid \d+\)\n)")));
  CHECK(std::regex_search(done.text, std::regex(R"(\n  h0 +\S+ ago +0 +\d+ +[\d.]+\n  h1 +\S+ ago +0 +\d+ +[\d.]+\n)")));
  // The items each host completed add up to the job's (from the chunks each completed).
  const auto json = run(ctl("cluster show " + server.url() + " faulty --json")).text;
  const std::regex items(R"("items_completed":(\d+))");
  std::uint64_t sum = 0;
  int count = 0;
  for (auto it = std::sregex_iterator(json.begin(), json.end(), items); it != std::sregex_iterator(); ++it, ++count)
    sum += std::stoull((*it)[1]);
  CHECK(count == 2);
  CHECK(sum == 300);
  CHECK(contains(json, R"("failures_total":3,)"));
  CHECK(contains(json, R"("type":"std::runtime_error","message":"bad item 42"})"));
}

TEST_CASE("cluster show names a chunk held by nobody free, not an expired lease") {
  // (the engine's state of a running job with one held chunk and one free one, the part of
  // an option its host did not keep, as the scripts leave it: in the leases with deadline
  // 0, no owner; written here, with no host to claim it)
  RedisServer server;
  PasswordEnv env(server.password());
  Engine engine({.url = server.url()});
  write_unattended_job(engine, "freed");
  const std::string k = "psj:{freed}:";
  const auto text = run(ctl("cluster show " + server.url() + " freed"));
  CHECK(text.status == 0);
  INFO(text.text);
  CHECK(contains(text.text, "\nleases: 2\n"));
  CHECK(std::regex_search(text.text, std::regex(R"(\n +1 +50-120 +0 +h0 +\S+\n)")));
  CHECK(std::regex_search(text.text, std::regex(R"(\n +2 +120-300 +0 +\(free: the next claim takes it\) +-\n)")));
  CHECK(!contains(text.text, "expired"));
  const auto json = run(ctl("cluster show " + server.url() + " freed --json"));
  CHECK(json.status == 0);
  CHECK(contains(json.text, R"({"chunk":2,"first":120,"end":300,"partial":0,"holder":"","left_ms":0,"free":true})"));
  CHECK(contains(json.text, R"("holder":"h0",)"));
  // A chunk whose owner is not there (read before a claim that made it) but whose
  // deadline is ahead is held, not free: its holder is unknown.
  engine.command({"HDEL", k + "owner", "1"});
  const auto racing = run(ctl("cluster show " + server.url() + " freed --json"));
  CHECK(std::regex_search(racing.text,
                          std::regex(R"(\{"chunk":1,"first":50,"end":120,"partial":0,"holder":"","left_ms":\d+,"free":false\})")));
  engine.command({"DEL", k + "meta", k + "chunks", k + "done", k + "owner", k + "leases", k + "hosts"});
}

TEST_CASE("a stopped job's keys expire: by the stop's second call with no host left, or by a later join") {
  RedisServer server;
  PasswordEnv env(server.password());
  Engine engine({.url = server.url()});
  const auto ttl = [&](const std::string& job) { return engine.command({"PTTL", "psj:{" + job + "}:meta"}).integer; };
  // (no host: neither an agent's acknowledgement nor a host's call can make them expire)
  write_unattended_job(engine, "lone");
  const ClusterStopResult stop = stop_cluster_job({.url = server.url()}, "lone", {.origin = "the test", .wait = false});
  CHECK(stop.stopped);
  CHECK(ttl("lone") > 0);
  CHECK(procshare::test::keys_kept_for_ever(engine).empty());
  // The stop script alone (its caller died before the second call) leaves them without an
  // expiry; a host that joins under the job's name makes them expire.
  write_unattended_job(engine, "orphan");
  const auto reply = engine.eval(procshare::detail::script(procshare::detail::scripts::stop),
                                 procshare::detail::job_keys("orphan"), {"", "a stop script alone"});
  REQUIRE(!reply.elements.empty());
  CHECK(reply.elements[0].text == "ok");
  CHECK(ttl("orphan") == -1);
  Pool pool({.workers = 1});
  Cluster cluster({.url = server.url(), .job = "orphan", .host = "late"});
  CHECK_THROWS_AS(cluster.map(pool, Range{0, 300}, twice), JobMismatch);  // (not the job written above)
  CHECK(ttl("orphan") > 0);
  CHECK(procshare::test::keys_kept_for_ever(engine).empty());
}

TEST_CASE("cluster stop ends a running job on every host, naming procshare-ctl, once each host acknowledged") {
  Setup setup;
  auto& [server, env, gate, pools, hosts] = setup;
  REQUIRE(setup.start_held("halt"));
  const auto stop = run(ctl("cluster stop " + server.url() + " halt"));
  CHECK(stop.status == 0);
  CHECK(std::regex_search(stop.text, std::regex("^stopped cluster job 'halt' on " + server.url() +
                                                "; acknowledged within \\S+ by 2 hosts: h0, h1\n$")));
  // Both hosts had learned of it when stop returned (before their items could end).
  CHECK(hosts_seen_since_end(server, "halt") == std::vector<std::string>{"h0", "h1"});
  gate.open();
  for (const std::string& report : hosts.reports(60s)) {
    CHECK(contains(report, "threw Stopped: cluster job 'halt' on " + server.url()));
    CHECK(contains(report, ": the job was stopped by procshare-ctl cluster stop ("));
  }
  Engine engine({.url = server.url()});
  const auto meta = procshare::test::meta_of(engine, "halt");
  CHECK(meta.at("state") == "stopped");
  CHECK(std::regex_match(meta.at("stop"), std::regex(R"(procshare-ctl cluster stop \(\S+@\S+ pid \d+\))")));
  // Stopping it again changes nothing, and says why.
  const auto again = run(ctl("cluster stop " + server.url() + " halt"));
  CHECK(again.status == 1);
  CHECK(again.text == "procshare-ctl: cluster job 'halt' on " + server.url() + ": not running: it is stopped (by " +
                          meta.at("stop") + "); nothing changed\n");
  CHECK(procshare::test::meta_of(engine, "halt") == meta);
}

TEST_CASE("cluster stop --no-wait returns before any host has learned of the stop") {
  Setup setup;
  auto& [server, env, gate, pools, hosts] = setup;
  REQUIRE(setup.start_held("quick"));
  for (int k = 0; k < 2; ++k) hosts.signal_group(k, SIGSTOP);  // (they cannot learn of it now)
  const auto stop = run(ctl("cluster stop " + server.url() + " quick --no-wait"));
  CHECK(stop.status == 0);
  CHECK(stop.text == "stopped cluster job 'quick' on " + server.url() + " (not waiting for its hosts to learn of it)\n");
  CHECK(hosts_seen_since_end(server, "quick").empty());
  for (int k = 0; k < 2; ++k) hosts.signal_group(k, SIGCONT);
  gate.open();
  for (const std::string& report : hosts.reports(60s))
    CHECK(contains(report, ": the job was stopped by procshare-ctl cluster stop ("));
  CHECK(hosts_seen_since_end(server, "quick") == std::vector<std::string>{"h0", "h1"});
}

TEST_CASE("cluster stop of a job whose hosts were killed names them as not acknowledged and exits 1") {
  Setup setup;
  auto& [server, env, gate, pools, hosts] = setup;
  REQUIRE(setup.start_held("dead"));
  CHECK(kill_all(hosts));
  const auto start = std::chrono::steady_clock::now();
  const auto stop = run(ctl("cluster stop " + server.url() + " dead"));
  const auto took = std::chrono::steady_clock::now() - start;
  CHECK(stop.status == 1);
  CHECK(std::regex_match(stop.text, std::regex("procshare-ctl: cluster job 'dead' on " + server.url() +
                                               ": stopped, but 2 hosts seen within a lease before the stop did not "
                                               "acknowledge it within \\S+ \\(presumed dead\\): h0, h1; "
                                               "acknowledged by 0\n")));
  CHECK(took >= 4s);  // (the default wait: the lease, 2 s, plus 2 s)
  CHECK(took < 15s);
  Engine engine({.url = server.url()});
  CHECK(procshare::test::meta_of(engine, "dead").at("state") == "stopped");
}

TEST_CASE("cluster watch under a pipe prints progress lines and ends when the job ends") {
  Setup setup;
  auto& [server, env, gate, pools, hosts] = setup;
  REQUIRE(setup.start_held("watched"));
  FILE* watch = ::popen(("timeout 60 " + ctl("cluster watch " + server.url() + " watched --interval 50") + " 2>&1").c_str(), "r");
  REQUIRE(watch != nullptr);
  char line[1024] = {};
  const bool first = std::fgets(line, sizeof line, watch) != nullptr;
  gate.open();  // (after its first line: the job was running when watch looked)
  std::string rest;
  for (char more[1024]; std::fgets(more, sizeof more, watch) != nullptr;) rest += more;
  const int status = ::pclose(watch);
  CHECK(first);
  CHECK(std::regex_match(std::string(line), std::regex(R"(0% 0/200 items, 2 hosts, 0 items/s, ETA \?\n)")));
  CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  const std::string last = "cluster job 'watched' on " + server.url() +
                           ": done: 200/200 items settled (200 done, 0 failed, 0 skipped)\n";
  CHECK(rest.size() >= last.size());
  CHECK(rest.substr(rest.size() - std::min(rest.size(), last.size())) == last);
  for (const std::string& report : hosts.reports(60s)) CHECK(report == "ok 200");
}

TEST_CASE("cluster watch says abandoned and exits 1 once every host of a running job died; stop then waits for none") {
  Setup setup;
  auto& [server, env, gate, pools, hosts] = setup;
  REQUIRE(setup.start_held("orphan"));
  CHECK(kill_all(hosts));
  const auto watch = run("timeout 60 " + ctl("cluster watch " + server.url() + " orphan --interval 50"));
  CHECK(watch.status == 1);
  CHECK(std::regex_search(watch.text, std::regex("(^|\n)cluster job 'orphan' on " + server.url() +
                                                 ": abandoned: no host seen for \\S+ and no lease alive "
                                                 "\\(lease 2.0s\\); 0/200 items settled\n$")));
  const auto ls = run(ctl("cluster ls " + server.url()));
  CHECK(std::regex_search(ls.text, std::regex(R"(\norphan +map +abandoned +2 +0/200)")));
  const auto stop = run(ctl("cluster stop " + server.url() + " orphan"));
  CHECK(stop.status == 0);
  CHECK(stop.text == "stopped cluster job 'orphan' on " + server.url() +
                         "; no host had been seen within a lease before the stop: none to wait for\n");
}

TEST_CASE("cluster clean lists ended and abandoned jobs, deletes nothing without --yes, and never a running job") {
  RedisServer server;
  PasswordEnv env(server.password());
  Gate open_gate, deserted_gate, busy_gate;
  open_gate.open();
  std::list<SegmentName> pools;
  Hosts finished, deserted, busy;
  start_host(finished, pools, server, "finished", 50, open_gate);
  for (const std::string& report : finished.reports(60s)) CHECK(report == "ok 50");
  start_host(deserted, pools, server, "deserted", 50, deserted_gate);
  REQUIRE(all_working(server, "deserted", 1));
  CHECK(kill_all(deserted));
  const EngineOptions engine{.url = server.url()};
  REQUIRE(eventually([&] { return summarize_cluster_job(engine, "deserted").abandoned; }));
  start_host(busy, pools, server, "busy", 50, busy_gate);
  REQUIRE(all_working(server, "busy", 1));
  const auto finished_keys = keys_of(server, "finished"), deserted_keys = keys_of(server, "deserted");
  CHECK(finished_keys.size() >= 6);  // (meta, done, doneby, hosts, chunks, claims at least)
  CHECK(deserted_keys.size() >= 5);

  const auto dry = run(ctl("cluster clean " + server.url()));
  CHECK(dry.status == 0);
  CHECK(std::regex_match(dry.text, std::regex("would delete cluster job 'deserted' \\(abandoned: no host seen for \\S+\\)\n"
                                              "would delete cluster job 'finished' \\(done \\S+ ago\\)\n"
                                              "\\(a dry run: --yes deletes them\\)\n")));
  const auto young = run(ctl("cluster clean " + server.url() + " --older-than 1d --yes"));
  CHECK(young.status == 0);
  CHECK(young.text == "");
  CHECK(keys_of(server, "finished") == finished_keys);
  CHECK(keys_of(server, "deserted") == deserted_keys);

  const auto yes = run(ctl("cluster clean " + server.url() + " --yes"));
  CHECK(yes.status == 0);
  CHECK(std::regex_match(yes.text, std::regex("deleted cluster job 'deserted' \\(abandoned: no host seen for \\S+\\)\n"
                                              "deleted cluster job 'finished' \\(done \\S+ ago\\)\n")));
  CHECK(keys_of(server, "finished").empty());
  CHECK(keys_of(server, "deserted").empty());
  CHECK(summarize_cluster_job(engine, "busy").state == "running");
  busy_gate.open();
  for (const std::string& report : busy.reports(60s)) CHECK(report == "ok 50");
}

TEST_CASE("bad input: a clear message naming the URL and the job, exit 1 or 2, never a password, nothing changed") {
  RedisServer server;
  PasswordEnv env(server.password());
  Gate open_gate;
  open_gate.open();
  std::list<SegmentName> pools;
  Hosts hosts;
  start_host(hosts, pools, server, "kept", 20, open_gate);
  for (const std::string& report : hosts.reports(60s)) CHECK(report == "ok 20");
  Engine engine({.url = server.url()});
  const auto before = keys_of(server, "kept");
  const auto meta = procshare::test::meta_of(engine, "kept");
  const std::string url = server.url(), port = std::to_string(server.port());
  struct Row {
    std::string command;
    int status;
    std::string says;
  };
  const std::vector<Row> rows{
      {"cluster ls http://127.0.0.1:" + port, 1,
       "procshare-ctl: engine 'http://127.0.0.1:" + port + "': the URL must start with redis://\n"},
      {"cluster show redis://psr:pw-in-url@127.0.0.1:" + port + " kept", 1,
       "procshare-ctl: cluster job 'kept' on redis://psr:***@127.0.0.1:" + port +
           ": the URL holds a password: give it in PROCSHARE_REDIS_PASSWORD or EngineOptions::password_file, never "
           "in the URL\n"},
      {"cluster show " + url + " nosuch", 1,
       "procshare-ctl: cluster job 'nosuch' on " + url +
           ": no such job (never made, or its keys expired `keep` after its end, or were cleaned)\n"},
      {"cluster stop " + url + " nosuch", 1,
       "procshare-ctl: cluster job 'nosuch' on " + url +
           ": no such job (never made, or its keys expired `keep` after its end, or were cleaned)\n"},
      {"cluster watch " + url + " nosuch", 1,
       "procshare-ctl: cluster job 'nosuch' on " + url +
           ": no such job (never made, or its keys expired `keep` after its end, or were cleaned)\n"},
      {"cluster stop " + url + " kept", 1,
       "procshare-ctl: cluster job 'kept' on " + url + ": not running: it is done; nothing changed\n"},
      {"cluster show " + url + " 'a{b'", 1,
       "procshare-ctl: cluster job 'a{b' on " + url +
           ": a job name is 1 to 200 printable characters without space, '{' or '}'\n"},
      {"cluster ls redis://127.0.0.1:1", 1,
       "procshare-ctl: engine 'redis://127.0.0.1:1': cannot connect within 1000 ms: Connection refused\n"},
      {"cluster show " + url, 2, "JOB is required\nRun with --help for more information.\n"},
      {"cluster ls", 2, "URL is required\nRun with --help for more information.\n"},
      {"cluster", 2, "A subcommand is required\nRun with --help for more information.\n"},
      {"cluster clean " + url + " --older-than 3weeks", 2,
       "procshare-ctl: --older-than '3weeks': give a number and a unit: ms, s, m, h or d (1d)\n"},
  };
  for (const Row& row : rows) {
    CAPTURE(row.command);
    const auto out = run(ctl(row.command));
    CHECK(out.status == row.status);
    CHECK(out.text == row.says);
    CHECK(!contains(out.text, server.password()));
    CHECK(!contains(out.text, "pw-in-url"));
  }
  // A wrong password, or none: AuthFailed's text naming the URL, never the password.
  const auto wrong = run("PROCSHARE_REDIS_PASSWORD=wrong-one " + ctl("cluster ls " + url));
  CHECK(wrong.status == 1);
  CHECK(std::regex_match(wrong.text, std::regex("procshare-ctl: engine '" + url + "': AUTH: WRONGPASS .*\n")));
  CHECK(!contains(wrong.text, "wrong-one"));
  const auto none = run("env -u PROCSHARE_REDIS_PASSWORD " + ctl("cluster show " + url + " kept"));
  CHECK(none.status == 1);
  CHECK(std::regex_match(none.text, std::regex("procshare-ctl: cluster job 'kept' on " + url + ": PING: NOAUTH .*\n")));
  // The password from --password-file, when the environment has none.
  struct PasswordFile {
    std::string path = "/tmp/procshare-ctl-cluster-pw-" + std::to_string(::getpid());
    ~PasswordFile() { std::remove(path.c_str()); }
  } file;
  {
    const int fd = ::open(file.path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    REQUIRE(fd >= 0);
    const std::string line = server.password() + "\n";
    CHECK(::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()));
    ::close(fd);
  }
  const auto from_file = run("env -u PROCSHARE_REDIS_PASSWORD " +
                             ctl("cluster ls " + url + " --password-file " + file.path));
  CHECK(from_file.status == 0);
  CHECK(std::regex_search(from_file.text, std::regex(R"(\nkept +map +done +1 +20/20 \(100%\))")));
  CHECK(keys_of(server, "kept") == before);
  CHECK(procshare::test::meta_of(engine, "kept") == meta);
}

}  // TEST_SUITE
