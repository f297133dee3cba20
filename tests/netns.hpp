// Network namespaces for tests that play hosts on separate machines: N namespaces
// "psh<PID>-<k>", each joined to the root namespace by a veth pair "psv<PID>-<k>" (root
// side, 10.77.S.1/24) and "psi<PID>-<k>" (inside, 10.77.S.2/24), S = 4 × slot + k.
// A forked child enters namespace k with enter(k) (setns) before it connects anywhere;
// it then reaches the root namespace (a test's redis-server bound to root_address(k))
// through its veth only, and link_down(k) cuts it off.
//
// Subnets: a test process takes a free slot (0 to 61) by binding an abstract unix socket
//   named after it, held for the object's life (the kernel frees it when the process
//   dies, and it leaves no file behind), so two test processes running at once never use
//   the same addresses.
// Clean-up: the destructor deletes the namespaces and veths it made, even when a check
//   failed; the constructor first deletes those of a process of ours that died without
//   doing so ("psh<PID>-*" and "psv<PID>-*" whose PID no longer runs). Nothing else on
//   the machine is touched.
// link_down(k) sets the ROOT side down: a silent drop (the host's packets vanish, its
//   calls time out, and once the link is up again its TCP connection resumes). Setting the
//   namespace side down is not silent ("Network is unreachable" at once).
// Needs root with CAP_NET_ADMIN and CAP_SYS_ADMIN (`ip netns add` mounts) and the `ip`
//   program (iproute2): available() says whether this process has them. Throws
//   std::runtime_error naming the `ip` command that failed, and its output.
#pragma once

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace procshare::test {

class Namespaces {
public:
  static constexpr int max_count = 4;   // namespaces per object (one slot's subnets)
  static constexpr int slot_count = 62;  // 4 × 62 = 248 subnets 10.77.0-247.0/24

  // Whether this process can make namespaces: effective CAP_NET_ADMIN and CAP_SYS_ADMIN,
  // and `ip` found.
  static bool available() {
    std::ifstream status("/proc/self/status");
    std::string line;
    unsigned long long effective = 0;
    while (std::getline(status, line))
      if (line.rfind("CapEff:", 0) == 0) effective = std::strtoull(line.c_str() + 7, nullptr, 16);
    constexpr unsigned long long net_admin = 1ull << 12, sys_admin = 1ull << 21;
    return (effective & net_admin) && (effective & sys_admin) && !ip_program().empty();
  }

  // Makes `count` (1 to max_count) namespaces with their veth pairs, up. Throws
  // std::runtime_error (nothing left behind) if it cannot.
  explicit Namespaces(int count) : count_(count) {
    if (count < 1 || count > max_count) throw std::runtime_error("Namespaces: 1 to 4 namespaces");
    remove_stale();
    take_slot();
    try {
      for (int k = 0; k < count_; ++k) {
        made_ = k + 1;
        ip({"netns", "add", name(k)});
        ip({"link", "add", root_link(k), "type", "veth", "peer", "name", inside_link(k), "netns", name(k)});
        ip({"addr", "add", root_address(k) + "/24", "dev", root_link(k)});
        ip({"link", "set", root_link(k), "up"});
        ip({"-n", name(k), "addr", "add", inside_address(k) + "/24", "dev", inside_link(k)});
        ip({"-n", name(k), "link", "set", inside_link(k), "up"});
        ip({"-n", name(k), "link", "set", "lo", "up"});
      }
    } catch (...) {
      remove();
      throw;
    }
  }
  ~Namespaces() {
    if (::getpid() == creator_) remove();  // (a forked child that returns leaves them)
  }
  Namespaces(const Namespaces&) = delete;
  Namespaces& operator=(const Namespaces&) = delete;

  int count() const noexcept { return count_; }
  // Namespace k's name ("psh<PID>-<k>"), and its veth ends.
  std::string name(int k) const { return "psh" + std::to_string(creator_) + "-" + std::to_string(k); }
  std::string root_link(int k) const { return "psv" + std::to_string(creator_) + "-" + std::to_string(k); }
  std::string inside_link(int k) const { return "psi" + std::to_string(creator_) + "-" + std::to_string(k); }
  // The root side's address (what a host in namespace k connects to), and the inside's.
  std::string root_address(int k) const { return "10.77." + std::to_string(subnet(k)) + ".1"; }
  std::string inside_address(int k) const { return "10.77." + std::to_string(subnet(k)) + ".2"; }
  // Every root-side address, space-separated (for a server's `bind`).
  std::string root_addresses() const {
    std::string out;
    for (int k = 0; k < count_; ++k) {
      if (k > 0) out += ' ';
      out += root_address(k);
    }
    return out;
  }

  // Cuts namespace k off (its root-side link down: a silent drop), and joins it again.
  void link_down(int k) { ip({"link", "set", root_link(k), "down"}); }
  void link_up(int k) { ip({"link", "set", root_link(k), "up"}); }

  // In a forked, single-threaded child: moves this process into namespace k (its
  // children follow). Throws std::runtime_error if it cannot.
  void enter(int k) const {
    const std::string path = "/run/netns/" + name(k);
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
    const int entered = ::setns(fd, CLONE_NEWNET);
    const int error = errno;
    ::close(fd);
    if (entered != 0) throw std::runtime_error("cannot enter " + path + ": " + std::strerror(error));
  }

private:
  int subnet(int k) const { return slot_ * max_count + k; }

  static std::string ip_program() {
    std::string path = std::getenv("PATH") ? std::getenv("PATH") : "";
    path += ":/usr/sbin:/sbin:/usr/bin:/bin";
    std::size_t at = 0;
    while (at <= path.size()) {
      const std::size_t end = std::min(path.find(':', at), path.size());
      const std::string candidate = path.substr(at, end - at) + "/ip";
      if (end > at && ::access(candidate.c_str(), X_OK) == 0) return candidate;
      at = end + 1;
    }
    return "";
  }

  // Runs `ip ARGS` (no shell), at most 10 s; its exit status (-1 if it did not end),
  // its output in `output`.
  static int run_ip(const std::vector<std::string>& args, std::string& output) {
    static const std::string program = ip_program();
    int fds[2];
    if (program.empty() || ::pipe2(fds, O_CLOEXEC) != 0) return -1;
    std::vector<char*> argv{const_cast<char*>("ip")};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::dup2(fds[1], 1);
      ::dup2(fds[1], 2);
      ::execv(program.c_str(), argv.data());
      ::_exit(127);
    }
    ::close(fds[1]);
    if (pid < 0) {
      ::close(fds[0]);
      return -1;
    }
    ::fcntl(fds[0], F_SETFL, O_NONBLOCK);
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    int status = 0;
    for (;;) {
      char buffer[512];
      ssize_t n;
      while ((n = ::read(fds[0], buffer, sizeof buffer)) > 0) output.append(buffer, static_cast<std::size_t>(n));
      if (::waitpid(pid, &status, WNOHANG) == pid) break;
      if (std::chrono::steady_clock::now() > until) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &status, 0);
        ::close(fds[0]);
        return -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    ::close(fds[0]);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  static void ip(std::initializer_list<std::string> args) {
    std::string output;
    if (run_ip(args, output) != 0) {
      std::string command = "ip";
      for (const std::string& a : args) command += " " + a;
      throw std::runtime_error(command + " failed: " + output);
    }
  }
  // Deletes namespace `name` and root link `link` if they exist (errors on stderr).
  static void delete_pair(const std::string& name, const std::string& link) {
    std::string output;
    if (::access(("/sys/class/net/" + link).c_str(), F_OK) == 0 && run_ip({"link", "del", link}, output) != 0)
      std::fprintf(stderr, "Namespaces: ip link del %s: %s\n", link.c_str(), output.c_str());
    output.clear();
    if (::access(("/run/netns/" + name).c_str(), F_OK) == 0 && run_ip({"netns", "del", name}, output) != 0)
      std::fprintf(stderr, "Namespaces: ip netns del %s: %s\n", name.c_str(), output.c_str());
  }
  void remove() {
    for (int k = 0; k < made_; ++k) delete_pair(name(k), root_link(k));
    made_ = 0;
    if (slot_fd_ >= 0) ::close(slot_fd_);
    slot_fd_ = -1;
  }
  // Namespaces and root links of ours ("psh<PID>-<k>", "psv<PID>-<k>") whose PID is gone.
  static void remove_stale() {
    for (const char* folder : {"/run/netns", "/sys/class/net"}) {
      DIR* dir = ::opendir(folder);
      if (dir == nullptr) continue;
      std::vector<std::string> names;
      while (const dirent* entry = ::readdir(dir)) names.emplace_back(entry->d_name);
      ::closedir(dir);
      for (const std::string& entry : names) {
        if (entry.size() < 6 || (entry.rfind("psh", 0) != 0 && entry.rfind("psv", 0) != 0)) continue;
        const auto dash = entry.find('-', 3);
        if (dash == std::string::npos || dash == 3 || entry.find_first_not_of("0123456789", 3) != dash) continue;
        const pid_t pid = static_cast<pid_t>(std::atol(entry.c_str() + 3));
        if (::kill(pid, 0) == 0 || errno != ESRCH) continue;  // (alive, or not ours to judge)
        const std::string suffix = entry.substr(3);
        delete_pair("psh" + suffix, "psv" + suffix);
      }
    }
  }
  // Binds the abstract socket "procshare-netns-slot-S" of the first free slot S.
  void take_slot() {
    for (int s = 0; s < slot_count; ++s) {
      const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0) break;
      sockaddr_un address{};
      address.sun_family = AF_UNIX;
      const std::string label = "procshare-netns-slot-" + std::to_string(s);
      std::memcpy(address.sun_path + 1, label.data(), label.size());  // (sun_path[0] = 0: abstract)
      const auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + label.size());
      if (::bind(fd, reinterpret_cast<sockaddr*>(&address), length) == 0) {
        slot_ = s;
        slot_fd_ = fd;
        return;
      }
      ::close(fd);
    }
    throw std::runtime_error("Namespaces: no free subnet slot (62 test processes at once?)");
  }

  int count_;
  int made_ = 0;  // namespaces started (each deleted by remove())
  int slot_ = -1;
  int slot_fd_ = -1;
  pid_t creator_ = ::getpid();
};

}  // namespace procshare::test
