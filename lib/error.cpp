#include <procshare/error.hpp>

#include <fmt/format.h>

#include <cstring>

namespace procshare {
namespace {

std::string compose(const std::string& segment, const std::string& object,
                    std::string_view detail) {
  std::string text;
  if (!segment.empty()) text = fmt::format("segment '{}': ", segment);
  if (!object.empty()) text += fmt::format("{}: ", object);
  text += detail;
  return text;
}

}  // namespace

Error::Error(std::string segment, std::string object, std::string_view detail)
    : std::runtime_error(compose(segment, object, detail)),
      segment_(std::move(segment)),
      object_(std::move(object)) {}

OwnerDied::OwnerDied(std::string segment, std::string object, std::string_view detail,
                     int dead_pid, std::uint32_t owner_deaths)
    : Error(std::move(segment), std::move(object), detail),
      dead_pid_(dead_pid),
      owner_deaths_(owner_deaths) {}

TaskError::TaskError(std::string segment, std::uint64_t index, std::string type,
                     std::string message, int worker_pid)
    : TaskError(std::move(segment), "pool", index, std::move(type), std::move(message), worker_pid) {}

TaskError::TaskError(std::string segment, std::string object, std::uint64_t index,
                     std::string type, std::string message, int worker_pid)
    : Error(std::move(segment), std::move(object),
            fmt::format("item {} failed in worker {}: {}: {}", index, worker_pid, type, message)),
      index_(index),
      type_(std::move(type)),
      message_(std::move(message)),
      worker_pid_(worker_pid) {}

TaskError::TaskError(std::string object, std::string type, std::string message, int pid)
    : Error("", std::move(object),
            fmt::format("the callable threw in pid {}: {}: {}", pid, type, message)),
      index_(0),
      type_(std::move(type)),
      message_(std::move(message)),
      worker_pid_(pid) {}

namespace {

std::string death_text(std::uint64_t index, int pid, int signal, int exit_status) {
  if (signal != 0)
    return fmt::format("item {}: worker {} was killed by signal {} ({})", index, pid, signal,
                       ::strsignal(signal));
  return fmt::format("item {}: worker {} exited with status {} while running it", index, pid,
                     exit_status);
}

}  // namespace

WorkerDied::WorkerDied(std::string segment, std::uint64_t index, int worker_pid, int signal,
                       int exit_status)
    : WorkerDied(std::move(segment), "pool", index, worker_pid, signal, exit_status) {}

WorkerDied::WorkerDied(std::string segment, std::string object, std::uint64_t index,
                       int worker_pid, int signal, int exit_status)
    : Error(std::move(segment), std::move(object), death_text(index, worker_pid, signal, exit_status)),
      index_(index),
      worker_pid_(worker_pid),
      signal_(signal),
      exit_status_(exit_status) {}

}  // namespace procshare
