// procshare-ctl end to end: against the running flagship demo, stale and live segments,
// and bad input. The programs' paths come from the environment (tests/meson.build).
#include "ctl_run.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <fcntl.h>
#include <semaphore.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>

using namespace procshare;
using procshare::test::PipeSignal;
using procshare::test::run_child;
using procshare::test::SegmentName;
using procshare::test::wait_child;
using procshare::test::ctl;
using procshare::test::Output;
using procshare::test::program;
using procshare::test::run;
using namespace std::chrono_literals;

extern char** environ;

namespace {

// The demo running in the background, its stdout readable line by line.
struct Demo {
  pid_t pid = -1;
  FILE* out = nullptr;
  std::string pool, segment;

  std::string header;  // what it printed up to the stop command

  // Starts the demo with `arguments`, in `folder` if given.
  explicit Demo(const std::vector<std::string>& arguments, const std::string& folder = "") {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
    posix_spawn_file_actions_addclose(&actions, fds[0]);
    if (!folder.empty()) posix_spawn_file_actions_addchdir_np(&actions, folder.c_str());
    std::vector<std::string> args{program("PROCSHARE_DEMO")};
    args.insert(args.end(), arguments.begin(), arguments.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    REQUIRE(::posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ) == 0);
    posix_spawn_file_actions_destroy(&actions);
    ::close(fds[1]);
    out = ::fdopen(fds[0], "r");
    const std::regex stop_line(R"(procshare-ctl stop (\S+))"), set_line(R"(procshare-ctl set (\S+) rounds)");
    for (std::string line; (line = read_line()) != "";) {
      header += line;
      std::smatch m;
      if (std::regex_search(line, m, set_line)) segment = m[1];
      if (std::regex_search(line, m, stop_line)) {
        pool = m[1];
        break;
      }
    }
  }
  std::string read_line() {
    char buffer[1024];
    return std::fgets(buffer, sizeof buffer, out) ? std::string(buffer) : std::string();
  }
  std::string rest() {
    std::string text;
    for (std::string line; (line = read_line()) != "";) text += line;
    return text;
  }
  ~Demo() {
    if (pid > 0 && ::waitpid(pid, nullptr, WNOHANG) == 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
    if (out) std::fclose(out);
  }
};

}  // namespace

TEST_SUITE("ctl") {

TEST_CASE("show and get read a running job; set changes what it does; stop ends it early") {
  Demo demo({"--records", "400000000", "--rounds", "50", "--workers", "2"});
  REQUIRE(!demo.pool.empty());
  REQUIRE(!demo.segment.empty());
  auto show = run(ctl("show " + demo.pool));
  CHECK(show.status == 0);
  CHECK(show.text.find("pool: running") != std::string::npos);
  CHECK(show.text.find("job 1    map") != std::string::npos);
  auto json = run(ctl("show " + demo.pool + " --json"));
  CHECK(json.text.find("\"jobs\":[{\"id\":1,\"kind\":\"map\"") != std::string::npos);
  CHECK(run(ctl("get " + demo.segment + " rounds")).text == "50\n");
  CHECK(run(ctl("get " + demo.segment + " found --json")).text.find("\"type\":\"atomic<int64>\"") != std::string::npos);
  // Progress moves between two looks.
  const std::regex done(R"(job 1\s+map\s+(\d+) done)");
  std::smatch first, second;
  const std::string a = run(ctl("show " + demo.pool)).text;
  std::this_thread::sleep_for(300ms);
  const std::string b = run(ctl("show " + demo.pool)).text;
  REQUIRE(std::regex_search(a, first, done));
  REQUIRE(std::regex_search(b, second, done));
  CHECK(std::stoull(second[1]) > std::stoull(first[1]));
  // A value the job reads while it runs (kept large, so the job is still running to stop).
  const auto set = run(ctl("set " + demo.segment + " rounds 45"));
  CHECK(set.status == 0);
  CHECK(run(ctl("get " + demo.segment + " rounds")).text == "45\n");
  const auto stop = run(ctl("stop " + demo.pool));
  CHECK(stop.status == 0);
  CHECK(stop.text == "stop requested for 1 job\n");
  const std::string summary = demo.rest();
  CHECK(summary.find("stopped by controller: searched") != std::string::npos);
  int status = 0;
  REQUIRE(::waitpid(demo.pid, &status, 0) == demo.pid);
  demo.pid = -1;
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK_FALSE(procshare::test::shm_exists(demo.pool));
}

TEST_CASE("watch prints plain lines under a pipe") {
  Demo demo({"--records", "200000000", "--rounds", "20", "--workers", "2"});
  REQUIRE(!demo.pool.empty());
  Output watched;
  std::thread watcher([&] { watched = run(ctl("watch " + demo.pool + " --interval 50 | cat")); });
  std::this_thread::sleep_for(1500ms);
  run(ctl("stop " + demo.pool));
  watcher.join();
  CHECK(watched.status == 0);
  CHECK(watched.text.find('\r') == std::string::npos);
  CHECK(std::regex_search(watched.text, std::regex(R"(\d+% \d+/\d+ items, \d+ items/s, ETA)")));
  CHECK(watched.text.find("pool ") != std::string::npos);
}

TEST_CASE("watch draws a progress bar in a real terminal (tmux)") {
  if (run("command -v tmux").status != 0) {
    MESSAGE("tmux is not installed: skipped");
    return;
  }
  Demo demo({"--records", "400000000", "--rounds", "20", "--workers", "2"});
  REQUIRE(!demo.pool.empty());
  const std::string session = "procshare-test-" + std::to_string(::getpid());
  REQUIRE(run("tmux new-session -d -s " + session + " -x 160 -y 10 '" + ctl("watch " + demo.pool) +
              "; sleep 30'").status == 0);
  std::string pane;
  for (int i = 0; i < 100 && pane.find("items/s") == std::string::npos; ++i) {
    std::this_thread::sleep_for(50ms);
    pane = run("tmux capture-pane -p -t " + session).text;
  }
  run("tmux kill-session -t " + session);
  run(ctl("stop " + demo.pool));
  CHECK(std::regex_search(pane, std::regex(R"(\[#*\.*\]\s+\d+% \d+/\d+ items\s+\d+ items/s\s+ETA)")));
}

TEST_CASE("clean removes a killed job's segment, leaves live ones, and --dry-run removes nothing") {
  // A job whose every process was SIGKILLed.
  PipeSignal started;
  static std::string control;
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t owner = run_child([&] {
    Pool pool({.workers = 2});
    auto job = pool.map_async(std::vector<int>(100000, 1), [](int x) {
      std::this_thread::sleep_for(1ms);
      return x;
    });
    const std::string name = pool.control_segment();
    if (::write(fds[1], name.c_str(), name.size() + 1) < 0) ::_exit(3);
    started.notify();
    for (;;) ::pause();
  });
  REQUIRE(started.wait());
  char name[256] = {};
  REQUIRE(::read(fds[0], name, sizeof name - 1) > 0);
  control = name;
  ::kill(owner, SIGKILL);
  wait_child(owner);
  // A live segment whose creator died, still mapped by a process it forked.
  SegmentName live_name("clean-live");
  PipeSignal mapped;
  const pid_t creator = run_child([&] {
    auto segment = Segment::create(live_name, 1 << 16);
    segment.keep();
    const pid_t holder = ::fork();
    if (holder == 0) {
      mapped.notify();
      for (;;) ::pause();
    }
    std::FILE* f = std::fopen(("/tmp/procshare-holder-" + live_name.str()).c_str(), "w");
    std::fprintf(f, "%d", holder);
    std::fclose(f);
    ::_exit(0);
  });
  REQUIRE(mapped.wait());
  CHECK(wait_child(creator).ok());
  int holder = 0;
  std::ifstream(("/tmp/procshare-holder-" + live_name.str())) >> holder;
  std::remove(("/tmp/procshare-holder-" + live_name.str()).c_str());
  // The killed job's processes die within a moment; then nobody maps its segment.
  auto in_use = [](const std::string& segment) {
    for (const auto& s : Segment::list())
      if (s.name == segment) return s.in_use;
    return false;
  };
  for (int i = 0; i < 200 && in_use(control); ++i) std::this_thread::sleep_for(10ms);
  CHECK_FALSE(in_use(control));
  const auto dry = run(ctl("clean --dry-run"));
  CHECK(dry.status == 0);
  CHECK(dry.text.find("would remove " + control) != std::string::npos);
  CHECK(dry.text.find(live_name.str()) == std::string::npos);
  CHECK(procshare::test::shm_exists(control));
  const auto cleaned = run(ctl("clean"));
  CHECK(cleaned.text.find("removed " + control) != std::string::npos);
  CHECK_FALSE(procshare::test::shm_exists(control));
  CHECK(procshare::test::shm_exists(live_name));
  const auto listed = run(ctl("ls"));
  CHECK(std::regex_search(listed.text, std::regex(live_name.str() + R"(\s+\S+\s+\S+\s+\S+\s+\d+\s+live)")));
  ::kill(holder, SIGKILL);
  for (int i = 0; i < 200 && procshare::test::shm_exists(live_name); ++i) {
    run(ctl("clean"));
    std::this_thread::sleep_for(10ms);
  }
  CHECK_FALSE(procshare::test::shm_exists(live_name));
}

TEST_CASE("bad input: a clear error, a non-zero exit, and nothing changed") {
  SegmentName name("ctlbad");
  auto segment = Segment::create(name, 1 << 16);
  auto small = segment.create_value<std::int8_t>("small", 5);
  auto big = segment.create_atomic<std::uint64_t>("big", 7);
  segment.create_mutex("m");
  auto bad_int = run(ctl("set " + name.str() + " small abc"));
  CHECK(bad_int.status == 1);
  CHECK(bad_int.text.find("value 'small': 'abc' is not a valid int8: not an integer; nothing was written") != std::string::npos);
  auto range = run(ctl("set " + name.str() + " small 300"));
  CHECK(range.status == 1);
  CHECK(range.text.find("out of range") != std::string::npos);
  CHECK(run(ctl("set " + name.str() + " big -1")).status == 1);
  CHECK(run(ctl("set " + name.str() + " m 1")).text.find("a mutex cannot be set from text") != std::string::npos);
  CHECK(small.load() == 5);
  CHECK(big.load() == 7);
  CHECK(run(ctl("set " + name.str() + " small -128")).status == 0);
  CHECK(small.load() == -128);
  auto missing = run(ctl("show no-such-segment-" + std::to_string(::getpid())));
  CHECK(missing.status == 1);
  CHECK(missing.text.find("no such segment") != std::string::npos);
  CHECK(run(ctl("get " + name.str() + " nothing")).status == 1);
  // Garbage and empty files in /dev/shm.
  SegmentName garbage("ctlgarbage"), empty("ctlempty");
  { std::ofstream(("/dev/shm/" + garbage.str()).c_str()) << std::string(5000, 'x'); }
  { std::ofstream(("/dev/shm/" + empty.str()).c_str()); }
  auto shown = run(ctl("show " + garbage.str()));
  CHECK(shown.status == 1);
  CHECK(shown.text.find("not a procshare segment (bad magic number)") != std::string::npos);
  CHECK(run(ctl("show " + empty.str())).text.find("the file is empty") != std::string::npos);
  const auto listed = run(ctl("ls"));
  CHECK(listed.status == 0);
  CHECK(std::regex_search(listed.text, std::regex(garbage.str() + R"(\s+\S+\s+-\s+\S+\s+-\s+foreign)")));
  CHECK(run(ctl("clean")).text.find(garbage.str()) == std::string::npos);
  std::ifstream in("/dev/shm/" + garbage.str());
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(content == std::string(5000, 'x'));
  CHECK(run(ctl("")).status == 2);
  CHECK(run(ctl("show")).status == 2);
  CHECK(run(ctl("--help")).status == 0);
  CHECK(run(ctl("rm no-such-" + std::to_string(::getpid()))).status == 1);
}

TEST_CASE("rm refuses a text file and a semaphore's file with exit 1, leaving them intact; --force, named in --help, removes them") {
  SegmentName text("ctl-rm-text");
  const std::string content(4096, 't');
  { std::ofstream(("/dev/shm/" + text.str()).c_str()) << content; }
  const std::string semaphore = "/" + text.str() + "-sem", semaphore_file = "sem." + text.str() + "-sem";
  sem_t* handle = ::sem_open(semaphore.c_str(), O_CREAT | O_EXCL, 0600, 1);
  REQUIRE(handle != SEM_FAILED);
  ::sem_close(handle);
  struct RemoveSemaphore {
    std::string name;
    ~RemoveSemaphore() { ::sem_unlink(name.c_str()); }
  } remove_semaphore{semaphore};
  const auto refused = run(ctl("rm " + text.str()));
  CHECK(refused.status == 1);
  CHECK(refused.text == "procshare-ctl: segment '" + text.str() +
                            "': not removed: not a procshare segment (bad magic number) (rm --force removes any file)\n");
  std::ifstream in("/dev/shm/" + text.str());
  CHECK(std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>()) == content);
  const auto semaphore_refused = run(ctl("rm " + semaphore_file));
  CHECK(semaphore_refused.status == 1);
  CHECK(semaphore_refused.text.find("not a valid procshare segment: the file is 32 bytes") != std::string::npos);
  CHECK(procshare::test::shm_exists(semaphore_file));
  CHECK(run(ctl("rm --help")).text.find("--force") != std::string::npos);
  CHECK(run(ctl("rm --force " + text.str())).status == 0);
  CHECK_FALSE(procshare::test::shm_exists(text));
  CHECK(run(ctl("rm --force " + semaphore_file)).status == 0);
  CHECK_FALSE(procshare::test::shm_exists(semaphore_file));
  // A real segment needs no --force.
  SegmentName real("ctl-rm-real");
  Segment::create(real, 1 << 16).keep();
  CHECK(run(ctl("rm " + real.str())).status == 0);
  CHECK_FALSE(procshare::test::shm_exists(real));
}

TEST_CASE("stop and watch given a job's data segment find the pool its creator made") {
  Demo demo({"--records", "400000000", "--rounds", "50", "--workers", "2"});
  REQUIRE(!demo.segment.empty());
  REQUIRE(!demo.pool.empty());
  const std::string note = "procshare-ctl: segment '" + demo.segment + "' holds no pool; using the pool its creator (pid " +
                          std::to_string(demo.pid) + ") made: '" + demo.pool + "'\n";
  // watch first (its first line, the note, says it found the pool), then stop.
  FILE* watch = ::popen((ctl("watch " + demo.segment + " --interval 50") + " 2>&1").c_str(), "r");
  REQUIRE(watch != nullptr);
  char buffer[1024] = {};
  CHECK(std::string(std::fgets(buffer, sizeof buffer, watch) ? buffer : "") == note);
  const auto stop = run(ctl("stop " + demo.segment));
  CHECK(stop.status == 0);
  CHECK(stop.text == note + "stop requested for 1 job\n");
  std::string rest;
  while (std::fgets(buffer, sizeof buffer, watch)) rest += buffer;
  CHECK(::pclose(watch) == 0);
  CHECK(rest.find("pool ") != std::string::npos);
  CHECK(demo.rest().find("stopped by controller: searched") != std::string::npos);
}

TEST_CASE("ls and show tell the memory a pool has reserved apart from the bytes allocated to it") {
  Pool pool({.workers = 1});
  CHECK(pool.map(std::vector<int>{1, 2, 3}, [](int x) { return x + 1; }) == std::vector<int>{2, 3, 4});
  const std::string control = pool.control_segment();
  const auto listed = run(ctl("ls --json"));
  std::smatch m;
  REQUIRE(std::regex_search(listed.text, m,
                            std::regex("\"name\":\"" + control +
                                       R"(\",[^}]*\"size\":(\d+),\"used\":(\d+),\"reserved\":(\d+),[^}]*\"pool\":true)")));
  const auto size = std::stoull(m[1]), used = std::stoull(m[2]), reserved = std::stoull(m[3]);
  CHECK(used > size / 2);        // the arena is allocated to the pool object...
  CHECK(reserved < size / 16);   // ...but only what was used is reserved
  CHECK(reserved > 0);
  const auto text = run(ctl("ls")).text;
  CHECK(std::regex_search(text, std::regex(control + R"(\s+(\S+)\s+\1\s+\d+\.\dK\s+\d+\s+live .*\(pool\))")));
  const auto shown = run(ctl("show " + control)).text;
  CHECK(std::regex_search(shown, std::regex("segment '" + control +
                                            R"(': (\S+) used of \1, \d+\.\dK reserved in memory \(the rest as it is first used\), created by pid )" +
                                            std::to_string(::getpid()))));
}

TEST_CASE("watch after a stop shows a percentage that agrees with its counts, and the done, failed and skipped items") {
  SegmentName events_name("ctl-watch-events");
  auto events = Segment::create(events_name, 1 << 16);
  auto started = events.create_event("started");
  auto go = events.create_event("go");
  Pool pool({.workers = 1});
  auto job = pool.map_async(Chunk{1}, std::vector<int>(10, 1), [](int x, Event started, Event go) {
    started.set();
    go.wait_for(std::chrono::seconds(30));
    return x;
  }, started, go);
  REQUIRE(started.wait_for(30s));
  job.cancel();  // item 0 runs on; the other 9 are dropped
  // Read watch's first line while the stopped job is still in the pool's table.
  FILE* watch = ::popen((ctl("watch " + pool.control_segment() + " --interval 10") + " 2>&1").c_str(), "r");
  REQUIRE(watch != nullptr);
  char buffer[1024] = {};
  const std::string first = std::fgets(buffer, sizeof buffer, watch) ? buffer : "";
  go.set();
  CHECK_THROWS_AS(job.get(), Stopped);  // collects the job: watch then ends
  while (std::fgets(buffer, sizeof buffer, watch)) {}
  CHECK(::pclose(watch) == 0);
  INFO("watch printed: ", first);
  CHECK(first == "90% 9/10 items, 0 items/s, ETA ? (0 done, 0 failed, 9 skipped)\n");
}

TEST_CASE("an installed procshare-ctl starts without LD_LIBRARY_PATH") {
  char folder[] = "/tmp/procshare-install-XXXXXX";
  REQUIRE(::mkdtemp(folder) != nullptr);
  struct RemoveFolder {
    std::string path;
    ~RemoveFolder() { run("rm -rf '" + path + "'"); }
  } remove_folder{folder};
  const auto installed = run("'" + program("MESON") + "' install -C '" + program("PROCSHARE_BUILD_ROOT") +
                             "' --no-rebuild --quiet --destdir '" + folder + "'");
  INFO("meson install: ", installed.text);
  REQUIRE(installed.status == 0);
  const std::string ctl = run(std::string("find '") + folder + "' -name procshare-ctl -type f").text;
  REQUIRE(ctl.find(folder) == 0);
  const std::string path = ctl.substr(0, ctl.find('\n'));
  const auto help = run("env -u LD_LIBRARY_PATH '" + path + "' --help");
  INFO("installed procshare-ctl --help: ", help.text);
  CHECK(help.status == 0);
  CHECK(help.text.find("procshare-ctl: look at and steer procshare segments") != std::string::npos);
  CHECK(run("env -u LD_LIBRARY_PATH '" + path + "' ls").status == 0);
}

TEST_CASE("bash run.sh demo builds only the demo and procshare-ctl") {
  // run.sh under a stand-in meson that records what it is asked to do (so nothing builds).
  char folder[] = "/tmp/procshare-fake-meson-XXXXXX";
  REQUIRE(::mkdtemp(folder) != nullptr);
  struct RemoveFolder {
    std::string path;
    ~RemoveFolder() { run("rm -rf '" + path + "'"); }
  } remove_folder{folder};
  const std::string log = std::string(folder) + "/log";
  {
    std::ofstream fake(std::string(folder) + "/meson");
    fake << "#!/bin/sh\necho \"$@\" >> '" << log << "'\n";
  }
  REQUIRE(::chmod((std::string(folder) + "/meson").c_str(), 0755) == 0);
  run("cd '" + program("PROCSHARE_SOURCE_ROOT") + "' && CI= PATH='" + folder + "':\"$PATH\" bash run.sh demo --usage");
  std::ifstream in(log);
  const std::string asked((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  INFO("meson was asked: ", asked);
  CHECK(asked.find("compile -C build examples/pool_demo examples/ctl/procshare-ctl\n") != std::string::npos);
  CHECK(std::count(asked.begin(), asked.end(), '\n') == 2);  // configure (or setup), then compile
}

TEST_CASE("the commands the demo prints work as printed from the project folder, while its default run lasts") {
  const std::string source = program("PROCSHARE_SOURCE_ROOT");
  const std::string build = program("PROCSHARE_BUILD_ROOT");
  if (build.rfind(source + "/", 0) != 0) {
    MESSAGE("the build folder is outside the project folder: skipped");
    return;
  }
  Demo demo({"--workers", "2"}, source);  // the default number of records
  REQUIRE(!demo.pool.empty());
  INFO("the demo printed: ", demo.header);
  std::map<std::string, std::string> commands;  // by subcommand, as printed
  const std::regex line(R"(^  (\S+ (watch|show|set|stop) .*?)\s+# )");
  std::istringstream lines(demo.header);
  for (std::string text; std::getline(lines, text);) {
    std::smatch m;
    if (std::regex_search(text, m, line)) commands[m[2]] = m[1];
  }
  REQUIRE(commands.size() == 4);
  CHECK(commands["stop"].rfind(build.substr(source.size() + 1) + "/examples/ctl/procshare-ctl stop ", 0) == 0);
  // As a person would type them, in the project folder, with procshare-ctl not on PATH.
  auto as_printed = [&](const std::string& command) { return "cd '" + source + "' && PATH=/usr/bin:/bin " + command; };
  const auto shown = run(as_printed(commands["show"]));
  CHECK(shown.status == 0);
  CHECK(shown.text.find("pool: running") != std::string::npos);
  const auto set = run(as_printed(commands["set"]));
  CHECK(set.status == 0);
  CHECK(set.text == "rounds = 10\n");
  FILE* watch = ::popen((as_printed(commands["watch"]) + " 2>&1").c_str(), "r");
  REQUIRE(watch != nullptr);
  char buffer[1024] = {};
  const std::string watched = std::fgets(buffer, sizeof buffer, watch) ? buffer : "";
  CHECK(std::regex_search(watched, std::regex(R"(\d+% \d+/\d+ items, \d+ items/s, ETA)")));
  const auto stop = run(as_printed(commands["stop"]));
  CHECK(stop.status == 0);  // the default run was still going
  CHECK(stop.text == "stop requested for 1 job\n");
  while (std::fgets(buffer, sizeof buffer, watch)) {}
  CHECK(::pclose(watch) == 0);
  CHECK(demo.rest().find("stopped by controller: searched") != std::string::npos);
}

}  // TEST_SUITE
