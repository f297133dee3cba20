// Internal: Segment::map_text, the map readers of value_text, instantiated per key type in
// lib/text_map_*.cpp (each key with all 13 value types is a heavy compile; two files let
// two cores share it).
#pragma once

#include "text.hpp"

namespace procshare {

template <class K>
std::string Segment::map_text(std::string_view name, std::string_view value_type,
                              const std::string& object, std::size_t max_elements,
                              std::chrono::steady_clock::time_point deadline) {
  using namespace detail::text;
  std::string text;
  with_element(value_type, [&](auto v) {
    using V = typename decltype(v)::type;
    text = open_map<K, V>(name).handle_.inspect([&](const auto& all) {
      std::string out = "{";
      std::size_t i = 0, count = 0;
      for (const auto& [a, b] : all) {
        ++count;
        if (i == max_elements) continue;
        out += (i++ ? ", " : "") + element_text(a, this->name(), object) + ": " +
               element_text(b, this->name(), object);
      }
      if (count > max_elements) out += fmt::format(", ... ({} in all)", count);
      return out + "}";
    }, deadline);
  });
  return text;
}

}  // namespace procshare
