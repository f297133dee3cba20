// Segment::value_text and Segment::set_value_text: objects read and written as text by
// their canonical type names (what procshare-ctl get/set/show use).
#include <procshare/procshare.hpp>

#include "detail/names.hpp"
#include "detail/text.hpp"

#include <fmt/format.h>

#include <charconv>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace procshare {
using namespace detail::text;

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
  auto element_text = [&](const auto& stored) { return detail::text::element_text(stored, this->name(), object); };
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
      // (the 65 key and value types are read in lib/text_map_*.cpp, compiled apart)
      const auto comma = info.type.find(',');
      const std::string key = info.type.substr(0, comma), value = comma == std::string::npos ? "" : info.type.substr(comma + 1);
      with_map_key(key, [&](auto k) {
        text = map_text<typename decltype(k)::type>(name, value, object, max_elements, deadline);
      });
      if (text.empty()) text = fmt::format("(map of {})", info.type);
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
