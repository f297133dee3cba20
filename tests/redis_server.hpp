// A private redis-server for the cluster tests: on a free loopback port, with a password
// (in a config file only this user can read, never in argv), no persistence unless asked
// (append-only, fsync always, in a folder of its own). It dies with the test process
// (PR_SET_PDEATHSIG), and the destructor stops that pid and removes its files, even when
// the test failed. Never a system service.
#pragma once

#include <hiredis/hiredis.h>

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>

namespace procshare::test {

// Sets PROCSHARE_REDIS_PASSWORD (what Engine and Cluster read) for the life of the
// object, and puts back what it was.
class PasswordEnv {
public:
  explicit PasswordEnv(const std::string& value) {
    if (const char* old = std::getenv("PROCSHARE_REDIS_PASSWORD")) old_ = old;
    ::setenv("PROCSHARE_REDIS_PASSWORD", value.c_str(), 1);
  }
  ~PasswordEnv() {
    if (old_) ::setenv("PROCSHARE_REDIS_PASSWORD", old_->c_str(), 1);
    else ::unsetenv("PROCSHARE_REDIS_PASSWORD");
  }
  PasswordEnv(const PasswordEnv&) = delete;
  PasswordEnv& operator=(const PasswordEnv&) = delete;

private:
  std::optional<std::string> old_;
};

class RedisServer {
public:
  explicit RedisServer(std::string password = "test-secret", bool append_only = false)
      : password_(std::move(password)) {
    port_ = free_port();
    const std::string base = "/tmp/procshare-redis-" + std::to_string(::getpid()) + "-" + std::to_string(port_);
    config_ = base + ".conf";
    dir_ = base + ".d";
    if (::mkdir(dir_.c_str(), 0700) != 0) throw std::runtime_error("cannot make " + dir_);
    {
      const int fd = ::open(config_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      if (fd < 0) throw std::runtime_error("cannot write " + config_);
      const std::string text = "port " + std::to_string(port_) + "\nbind 127.0.0.1\nsave \"\"\n" +
                               (append_only ? "appendonly yes\nappendfsync always\n" : "appendonly no\n") +
                               "dir " + dir_ +
                               "\nprotected-mode yes\n"
                               "daemonize no\nlogfile \"\"\nloglevel warning\nrequirepass " +
                               password_ + "\n";
      const bool written = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
      ::close(fd);
      if (!written) {
        remove_files();
        throw std::runtime_error("cannot write " + config_);
      }
    }
    try {
      start();
    } catch (...) {
      remove_files();  // (the config holds the password)
      throw;
    }
  }
  ~RedisServer() {
    stop();
    remove_files();
  }
  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;

  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  const std::string& password() const { return password_; }
  std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_); }
  // The URL through another address the server listens on (see listen_also).
  std::string url_at(const std::string& address) const { return "redis://" + address + ":" + std::to_string(port_); }

  // Listens on these addresses too (space-separated; for example the root sides of a
  // test's veth pairs, see netns.hpp), besides 127.0.0.1: CONFIG SET bind. Throws
  // std::runtime_error with the server's reply if it refuses. Not kept across start().
  void listen_also(const std::string& addresses) {
    redisContext* c = redisConnectWithTimeout("127.0.0.1", port_, timeval{2, 0});
    std::string error = c == nullptr ? "cannot connect" : c->errstr;
    bool ok = false;
    if (c != nullptr && c->err == 0) {
      auto* r = static_cast<redisReply*>(redisCommand(c, "AUTH %s", password_.c_str()));
      if (r != nullptr) freeReplyObject(r);
      const std::string bind = "127.0.0.1 " + addresses;
      r = static_cast<redisReply*>(redisCommand(c, "CONFIG SET bind %s", bind.c_str()));
      ok = r != nullptr && r->type == REDIS_REPLY_STATUS;
      error = r == nullptr ? c->errstr : r->type == REDIS_REPLY_ERROR ? std::string(r->str, r->len) : "unexpected reply";
      if (r != nullptr) freeReplyObject(r);
    }
    if (c != nullptr) redisFree(c);
    if (!ok) throw std::runtime_error("redis-server would not listen on " + addresses + ": " + error);
  }

  // Kills the server at once (SIGKILL: no shutdown save), keeping its files.
  void kill() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }
  // Starts it (again) on the same port with the same configuration; waits for PING.
  void start() {
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(1);
      const int null = ::open("/dev/null", O_WRONLY);
      if (null >= 0) ::dup2(null, 1);
      ::execlp("redis-server", "redis-server", config_.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (!wait_for_ping()) {
      stop();
      throw std::runtime_error("redis-server did not answer PING within 10 s (is it installed?)");
    }
  }

  // Stops the server (SIGTERM, then SIGKILL after 5 s), keeping its files.
  void stop() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      int status = 0;
      while (::waitpid(pid_, &status, WNOHANG) == 0) {
        if (std::chrono::steady_clock::now() > until) {
          ::kill(pid_, SIGKILL);
          ::waitpid(pid_, &status, 0);
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      pid_ = -1;
    }
  }

private:
  void remove_files() {
    if (!config_.empty()) std::remove(config_.c_str());
    if (!dir_.empty()) {
      const std::string command = "rm -rf '" + dir_ + "'";
      if (std::system(command.c_str()) != 0) std::fprintf(stderr, "cannot remove %s\n", dir_.c_str());
    }
  }

  static int free_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = 0;
    socklen_t length = sizeof address;
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
      if (fd >= 0) ::close(fd);
      throw std::runtime_error("no free loopback port");
    }
    ::close(fd);
    return ntohs(address.sin_port);
  }
  bool wait_for_ping() {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < until) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
      }
      redisContext* c = redisConnectWithTimeout("127.0.0.1", port_, timeval{0, 200'000});
      if (c != nullptr && c->err == 0) {
        auto* r = static_cast<redisReply*>(redisCommand(c, "AUTH %s", password_.c_str()));
        const bool ok = r != nullptr && r->type == REDIS_REPLY_STATUS;
        if (r != nullptr) freeReplyObject(r);
        redisFree(c);
        if (ok) return true;
      } else if (c != nullptr) {
        redisFree(c);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  std::string password_;
  int port_ = 0;
  std::string config_;
  std::string dir_;
  pid_t pid_ = -1;
};

}  // namespace procshare::test
