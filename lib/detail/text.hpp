// Internal: what Segment::value_text / set_value_text (lib/text.cpp) and the map readers
// (lib/text_map_*.cpp) share: dispatch on canonical type names, values as text, and
// reading stored elements without trusting their bytes.
#pragma once

#include <procshare/procshare.hpp>

#include "names.hpp"

#include <fmt/format.h>

#include <charconv>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

namespace procshare::detail::text {

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

inline std::string quoted(std::string_view text, std::size_t most = 60) {
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


// The text of one stored element of object `object` in segment `segment` (bytes read by
// read_stored, strings quoted).
template <class S>
std::string element_text(const S& stored, const std::string& segment, const std::string& object) {
  if constexpr (std::is_same_v<S, SharedString>) return quoted(std::string_view(stored.data(), stored.size()));
  else return to_text(read_stored<S>(&stored, segment, object));
}

}  // namespace procshare::detail::text
