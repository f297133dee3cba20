// Running procshare-ctl from a test: its path from the environment (tests/meson.build
// sets PROCSHARE_CTL), run through the shell with what it prints captured.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace procshare::test {

// The path an environment variable gives ("" if unset).
inline std::string program(const char* variable) {
  const char* path = std::getenv(variable);
  return path ? path : "";
}

struct Output {
  int status;        // exit status (-1 if killed)
  std::string text;  // stdout and stderr together
};

// Runs `command` through the shell, capturing what it prints.
inline Output run(const std::string& command) {
  Output out{-1, ""};
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return out;
  char buffer[4096];
  while (std::size_t n = std::fread(buffer, 1, sizeof buffer, pipe)) out.text.append(buffer, n);
  const int status = ::pclose(pipe);
  out.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

// The procshare-ctl command line with `arguments`.
inline std::string ctl(const std::string& arguments) { return program("PROCSHARE_CTL") + " " + arguments; }

}  // namespace procshare::test
