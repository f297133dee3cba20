#include "detail/names.hpp"

#include <fmt/format.h>

#include <cxxabi.h>

#include <cstdlib>
#include <cstring>

namespace procshare {

std::string_view to_string(ObjectKind kind) noexcept {
  switch (kind) {
    case ObjectKind::value: return "value";
    case ObjectKind::atomic: return "atomic";
    case ObjectKind::array: return "array";
    case ObjectKind::flag: return "flag";
    case ObjectKind::mutex: return "mutex";
    case ObjectKind::recursive_mutex: return "recursive_mutex";
    case ObjectKind::semaphore: return "semaphore";
    case ObjectKind::bounded_semaphore: return "bounded_semaphore";
    case ObjectKind::event: return "event";
    case ObjectKind::condition: return "condition";
    case ObjectKind::barrier: return "barrier";
    case ObjectKind::queue: return "queue";
    case ObjectKind::pool: return "pool";
    case ObjectKind::vector: return "vector";
    case ObjectKind::map: return "map";
    case ObjectKind::string: return "string";
  }
  return "object";
}

namespace detail {

std::string printable(std::string_view text) {
  std::string out;
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte >= 0x7f)
      out += fmt::format("\\x{:02x}", byte);
    else
      out += c;
  }
  return out;
}

std::string describe_type(ObjectKind kind, std::string_view type, std::uint64_t length) {
  switch (kind) {
    case ObjectKind::value:
    case ObjectKind::atomic:
    case ObjectKind::vector:
    case ObjectKind::map: return fmt::format("{}<{}>", to_string(kind), type);
    case ObjectKind::queue: return fmt::format("queue<{}, {}>", type, length);
    case ObjectKind::array: return fmt::format("array<{}, {}>", type, length);
    case ObjectKind::barrier: return fmt::format("barrier<{} parties>", length);
    default: return std::string(to_string(kind));
  }
}

std::string describe_object(ObjectKind kind, std::string_view name) {
  return fmt::format("{} '{}'", to_string(kind), printable(name));
}

std::string os_reason(int error) {
  char buffer[256];
  return ::strerror_r(error, buffer, sizeof buffer);
}

std::string demangle(const char* mangled) {
  if (mangled == nullptr || *mangled == '\0') return "unknown exception";
  int status = 0;
  char* text = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string name = status == 0 && text ? text : mangled;
  std::free(text);
  return name;
}

}  // namespace detail
}  // namespace procshare
