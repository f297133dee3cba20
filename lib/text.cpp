// Segment::value_text and Segment::set_value_text: objects read and written as text by
// their canonical type names (what procshare-ctl get/set/show use).
#include <procshare/procshare.hpp>

#include "detail/names.hpp"

#include <fmt/format.h>

#include <charconv>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace procshare {
namespace {

// Calls f(std::type_identity<T>{}) for the built-in type named `type`; false if none.
template <class F> bool with_builtin(std::string_view type, F&& f) {
  if (type == "bool") return f(std::type_identity<bool>{}), true;
  if (type == "char") return f(std::type_identity<char>{}), true;
  if (type == "int8") return f(std::type_identity<std::int8_t>{}), true;
  if (type == "uint8") return f(std::type_identity<std::uint8_t>{}), true;
  if (type == "int16") return f(std::type_identity<std::int16_t>{}), true;
  if (type == "uint16") return f(std::type_identity<std::uint16_t>{}), true;
  if (type == "int32") return f(std::type_identity<std::int32_t>{}), true;
  if (type == "uint32") return f(std::type_identity<std::uint32_t>{}), true;
  if (type == "int64") return f(std::type_identity<std::int64_t>{}), true;
  if (type == "uint64") return f(std::type_identity<std::uint64_t>{}), true;
  if (type == "float32") return f(std::type_identity<float>{}), true;
  if (type == "float64") return f(std::type_identity<double>{}), true;
  return false;
}

// As with_builtin, also for "string" (std::string).
template <class F> bool with_element(std::string_view type, F&& f) {
  if (type == "string") return f(std::type_identity<std::string>{}), true;
  return with_builtin(type, f);
}

// For the map key types procshare-ctl can show.
template <class F> bool with_map_key(std::string_view type, F&& f) {
  if (type == "int64") return f(std::type_identity<std::int64_t>{}), true;
  if (type == "uint64") return f(std::type_identity<std::uint64_t>{}), true;
  if (type == "int32") return f(std::type_identity<std::int32_t>{}), true;
  if (type == "uint32") return f(std::type_identity<std::uint32_t>{}), true;
  if (type == "string") return f(std::type_identity<std::string>{}), true;
  return false;
}

std::string quoted(std::string_view text, std::size_t most = 60) {
  std::string shown = detail::printable(text.substr(0, most));
  return fmt::format("\"{}\"{}", shown, text.size() > most ? "..." : "");
}

template <class T> std::string to_text_scalar(T v) {
  if constexpr (std::is_same_v<T, bool>) return v ? "true" : "false";
  else if constexpr (std::is_same_v<T, char>) return std::string(1, v);
  else if constexpr (std::is_same_v<T, std::int8_t> || std::is_same_v<T, std::uint8_t>) return fmt::format("{}", static_cast<int>(v));
  else return fmt::format("{}", v);
}

template <class T> std::string to_text(const T& v) {
  if constexpr (std::is_same_v<T, std::string>) return quoted(v);
  else return to_text_scalar(v);
}


// Reads the T stored at `where`, an element of object `object` in segment `segment`,
// without trusting its bytes: a bool that holds neither 0 nor 1 is CorruptSegment
// (loading it as a bool would be undefined). Atomic, so a concurrent writer is no race.
template <class T>
T read_stored(const void* where, const std::string& segment, const std::string& object) {
  if constexpr (std::is_same_v<T, bool>) {
    unsigned char byte = 0;
    __atomic_load(static_cast<const unsigned char*>(where), &byte, __ATOMIC_ACQUIRE);
    if (byte > 1)
      throw CorruptSegment(segment, object,
                           fmt::format("a bool holds the byte {:#04x}, not 0 or 1", byte));
    return byte != 0;
  } else {
    T value{};
    __atomic_load(static_cast<const T*>(where), &value, __ATOMIC_ACQUIRE);
    return value;
  }
}

// Parses `text` as a T; nullopt-like failure reported through `why`.
template <class T> std::optional<T> parse(std::string_view text, std::string& why) {
  if constexpr (std::is_same_v<T, bool>) {
    if (text == "true" || text == "1" || text == "set" || text == "yes") return true;
    if (text == "false" || text == "0" || text == "clear" || text == "no") return false;
    why = "expected true or false";
    return std::nullopt;
  } else if constexpr (std::is_same_v<T, char>) {
    if (text.size() == 1) return text[0];
    why = "expected one character";
    return std::nullopt;
  } else {
    T value{};
    const char* end = text.data() + text.size();
    const auto [at, error] = std::from_chars(text.data(), end, value);
    if (error == std::errc::result_out_of_range) {
      why = "out of range";
      return std::nullopt;
    }
    if (error != std::errc() || at != end || text.empty()) {
      why = std::is_integral_v<T> ? "not an integer" : "not a number";
      return std::nullopt;
    }
    return value;
  }
}

}  // namespace

std::string Segment::value_text(std::string_view name, std::size_t max_elements) {
  std::optional<ObjectInfo> found;
  for (auto& info : objects())
    if (info.name == name) found = std::move(info);
  if (!found)
    throw NotFound(this->name(), fmt::format("object '{}'", detail::printable(name)), "no object of that name");
  const ObjectInfo& info = *found;
  const std::string object = detail::describe_object(info.kind, name);
  // Every lock below is waited on until this deadline at most: a holder that never lets
  // go (a wedged process, a forged file) is a Timeout here, never a hang.
  const detail::Deadline deadline = detail::inspection_deadline();
  // Elements are read with read_stored (their bytes are not trusted) and, for
  // containers, only once the container is found to hold together (inspect).
  auto element_text = [&](const auto& stored) {
    using S = std::remove_cvref_t<decltype(stored)>;
    if constexpr (std::is_same_v<S, detail::SharedString>) return quoted(std::string_view(stored.data(), stored.size()));
    else return to_text(read_stored<S>(&stored, this->name(), object));
  };
  std::string text;
  switch (info.kind) {
    case ObjectKind::value:
      if (!with_builtin(info.type, [&](auto t) {
            using T = typename decltype(t)::type;
            auto value = open_value<T>(name);
            auto& b = value.block();
            detail::DeadlineLock held(b.lock, value.handle(), info.kind, deadline);
            text = element_text(b.value);
          }))
        text = fmt::format("({}, {} bytes)", info.type, info.bytes);
      break;
    case ObjectKind::atomic:
      if (!with_builtin(info.type, [&](auto t) {
            using T = typename decltype(t)::type;
            text = element_text(reinterpret_cast<const T&>(open_atomic<T>(name).cell()));
          }))
        text = fmt::format("({}, {} bytes)", info.type, info.bytes);
      break;
    case ObjectKind::array:
      if (!with_builtin(info.type, [&](auto t) {
            using T = typename decltype(t)::type;
            auto array = open_array<T>(name);
            auto& b = array.block();
            detail::DeadlineLock held(b.lock, array.handle(), info.kind, deadline);
            const T* elements = Array<T>::data(b);
            const std::size_t size = b.header.length;
            const std::size_t shown = std::min<std::size_t>(size, max_elements);
            text = "[";
            for (std::size_t i = 0; i < shown; ++i) text += (i ? ", " : "") + element_text(elements[i]);
            if (shown < size) text += fmt::format(", ... ({} in all)", size);
            text += "]";
          }))
        text = fmt::format("({} x {})", info.length, info.type);
      break;
    case ObjectKind::flag: text = open_flag(name).is_set() ? "set" : "clear"; break;
    case ObjectKind::event: text = open_event(name).is_set() ? "set" : "clear"; break;
    case ObjectKind::semaphore: text = fmt::format("{}", open_semaphore(name).value()); break;
    case ObjectKind::bounded_semaphore: {
      auto s = open_bounded_semaphore(name);
      text = fmt::format("{} of {}", s.value(), s.bound());
      break;
    }
    case ObjectKind::mutex:
    case ObjectKind::recursive_mutex:
      text = info.owner_deaths ? fmt::format("{} owner death(s), last pid {}", info.owner_deaths, info.last_dead_owner)
                               : std::string("no owner deaths");
      break;
    case ObjectKind::condition: text = fmt::format("on mutex '{}'", open_condition(name).mutex().name()); break;
    case ObjectKind::barrier: text = open_barrier(name).state_text(deadline); break;
    case ObjectKind::queue: text = fmt::format("(queue of {} slots)", info.length); break;
    case ObjectKind::pool: text = "(a pool's control block: see inspect_pool)"; break;
    case ObjectKind::vector:
      if (!with_element(info.type, [&](auto t) {
            using T = typename decltype(t)::type;
            text = open_vector<T>(name).handle_.inspect([&](const auto& all) {
              std::string out = "[";
              std::size_t i = 0;
              for (const auto& element : all) {
                if (i == max_elements) break;
                out += (i++ ? ", " : "") + element_text(element);
              }
              if (all.size() > max_elements) out += fmt::format(", ... ({} in all)", all.size());
              return out + "]";
            }, deadline);
          }))
        text = fmt::format("(vector of {})", info.type);
      break;
    case ObjectKind::map: {
      const auto comma = info.type.find(',');
      const std::string key = info.type.substr(0, comma), value = comma == std::string::npos ? "" : info.type.substr(comma + 1);
      bool shown = false;
      with_map_key(key, [&](auto k) {
          with_element(value, [&](auto v) {
            using K = typename decltype(k)::type;
            using V = typename decltype(v)::type;
            text = open_map<K, V>(name).handle_.inspect([&](const auto& all) {
              std::string out = "{";
              std::size_t i = 0, count = 0;
              for (const auto& [a, b] : all) {
                ++count;
                if (i == max_elements) continue;
                out += (i++ ? ", " : "") + element_text(a) + ": " + element_text(b);
              }
              if (count > max_elements) out += fmt::format(", ... ({} in all)", count);
              return out + "}";
            }, deadline);
            shown = true;
          });
        });
      if (!shown) text = fmt::format("(map of {})", info.type);
      break;
    }
    case ObjectKind::string:
      text = open_string(name).handle_.inspect([&](const auto& s) { return element_text(s); }, deadline);
      break;
  }
  return text;
}

void Segment::set_value_text(std::string_view name, std::string_view text) {
  std::optional<ObjectInfo> found;
  for (auto& info : objects())
    if (info.name == name) found = std::move(info);
  if (!found)
    throw NotFound(this->name(), fmt::format("object '{}'", detail::printable(name)), "no object of that name");
  const ObjectInfo& info = *found;
  const std::string object = detail::describe_object(info.kind, name);
  auto bad = [&](std::string_view type, std::string_view why) {
    throw InvalidArgument(this->name(), object,
                          fmt::format("'{}' is not a valid {}: {}; nothing was written",
                                      detail::printable(text), type, why));
  };
  std::string why;
  switch (info.kind) {
    case ObjectKind::value:
    case ObjectKind::atomic: {
      const bool builtin = with_builtin(info.type, [&](auto t) {
        using T = typename decltype(t)::type;
        const auto value = parse<T>(text, why);
        if (!value) bad(info.type, why);
        if (info.kind == ObjectKind::value) open_value<T>(name).store(*value);
        else open_atomic<T>(name).store(*value);
      });
      if (!builtin)
        throw TypeMismatch(this->name(), object,
                           fmt::format("its type {} has no text form", info.type));
      return;
    }
    case ObjectKind::flag:
    case ObjectKind::event: {
      const auto value = parse<bool>(text, why);
      if (!value) bad(to_string(info.kind), why);
      if (info.kind == ObjectKind::flag) {
        auto flag = open_flag(name);
        *value ? flag.set() : flag.clear();
      } else {
        auto event = open_event(name);
        *value ? event.set() : event.clear();
      }
      return;
    }
    default:
      throw TypeMismatch(this->name(), object,
                         fmt::format("a {} cannot be set from text", to_string(info.kind)));
  }
}

}  // namespace procshare
