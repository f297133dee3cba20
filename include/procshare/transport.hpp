// Transport: how arguments, items and results cross processes, as bytes. A value is
// written by a Writer into a byte vector and read back by a Reader in another process;
// Transportable<T> says whether a type can travel at all. Used by the pool (task
// arguments, items, results).
//
// What travels: numbers, enums, procshare handles, std::string, std::monostate, and
//   std::optional, std::variant, std::vector (std::vector<bool> packed), std::array,
//   std::pair, std::tuple, std::map, std::unordered_map, std::set, std::unordered_set of
//   transportable types, nested to any depth; a trivially copyable type of yours that
//   opts in with transport_opt_in<T> (copied as its bytes); and any type of yours given a
//   procshare::transport<T> (the customization point, below). Pointers, references,
//   std::string_view and std::span cannot travel: they would point into the wrong
//   process's memory (a Pool call with one fails to compile, saying so).
// Your own types: specialise procshare::transport<T>, in the spirit of fmt::formatter,
//   right after the type's definition (before anything asks whether T is
//   Transportable), with a static write and a static read that compose the members:
//
//     struct Point { std::string name; std::map<std::string, double> coords; };
//     template <> struct procshare::transport<Point> {
//       static void write(procshare::Writer& w, const Point& p) {
//         w.write(p.name);
//         w.write(p.coords);
//       }
//       static Point read(procshare::Reader& r) {
//         Point p;
//         p.name = r.read<std::string>();  // in the order write() wrote them
//         p.coords = r.read<std::map<std::string, double>>();
//         return p;
//       }
//     };
//
//   write may also throw (the pool fails that item with TaskError); read may reject bytes
//   it does not accept with Reader::reject(why). Each value of such a type travels with
//   its length, so a read that takes fewer bytes than write wrote is caught
//   (CorruptSegment naming the type) instead of shifting everything after it. A type that
//   both opts in and has a transport<T> is copied as its bytes.
// Reading never trusts the bytes: running past their end, a count that cannot fit in the
//   bytes left (nothing is allocated for it), a variant index out of range, a bool or an
//   optional's flag other than 0 or 1, a key repeated in a map or set, are all
//   CorruptSegment, never undefined behaviour or a wild read.
// The bytes are for another process of the same program (native byte order and sizes),
//   not a file or network format.
#pragma once

#include <procshare/error.hpp>
#include <procshare/segment.hpp>

#include <algorithm>
#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

namespace procshare {

// Opt a trivially copyable user type in as transportable, copied as its bytes (it must
// hold no pointers):
//   template <> struct procshare::transport_opt_in<Pixel> : std::true_type {};
template <class T> struct transport_opt_in : std::false_type {};

// The customization point for any other type of yours: specialise it with
//   static void write(procshare::Writer&, const T&);
//   static T read(procshare::Reader&);
// (see the example at the top of this file). The primary template is empty: T is then
// not transportable, unless it is one of the types listed at the top.
template <class T> struct transport {};

class Writer;
class Reader;

namespace detail {

template <class T, class = void> struct Transport;
template <class T> struct UserTransport;

}  // namespace detail

// Transportable<T>: T can cross processes (see the list at the top of this file).
template <class T>
concept Transportable = detail::Transport<std::remove_cvref_t<T>>::ok;

// Writer: appends values to a byte vector it does not own. Throws whatever a user's
// transport<T>::write throws, InvalidArgument for a valueless std::variant, and
// std::bad_alloc; what was appended before the throw stays.
class Writer {
public:
  // Appends to `out` (which must outlive the Writer).
  explicit Writer(std::vector<std::byte>& out) noexcept : out_(&out) {}

  // Appends `value` (any Transportable type; for a non-transportable one, a compile-time
  // error says why).
  template <class T> void write(const T& value);
  // Appends `size` raw bytes from `data`.
  void bytes(const void* data, std::size_t size) {
    if (size == 0) return;
    const std::size_t at = out_->size();
    out_->resize(at + size);  // (not insert(): g++ 12 -O2 warns falsely on it, -Wstringop-overflow)
    std::memcpy(out_->data() + at, data, size);
  }

private:
  template <class> friend struct detail::UserTransport;
  std::vector<std::byte>* out_;
};

// Reader: reads values back, in the order they were written, from bytes it does not own.
// Throws CorruptSegment ("transport: ...") when the bytes do not hold what is asked for
// (see the top of this file), and whatever a user's transport<T>::read throws.
class Reader {
public:
  // Reads [begin, end).
  Reader(const std::byte* begin, const std::byte* end) noexcept : position_(begin), end_(end) {}
  // Reads `bytes`.
  explicit Reader(std::span<const std::byte> bytes) noexcept
      : position_(bytes.data()), end_(bytes.data() + bytes.size()) {}

  // Reads a T (any Transportable type, without const or reference).
  template <class T> T read();
  // Copies the next `size` raw bytes into `data`. Throws CorruptSegment if fewer are left.
  void bytes(void* data, std::size_t size) {
    if (remaining() < size) throw_truncated(size, remaining());
    if (size != 0) std::memcpy(data, position_, size);
    position_ += size;
  }
  // How many bytes are left to read.
  std::size_t remaining() const noexcept { return static_cast<std::size_t>(end_ - position_); }
  // For a transport<T>::read that finds bytes it cannot accept: throws CorruptSegment
  // "transport: WHY".
  [[noreturn]] PROCSHARE_API static void reject(std::string_view why);

private:
  template <class, class> friend struct detail::Transport;
  template <class> friend struct detail::UserTransport;
  // The next `size` bytes, skipped over. Throws CorruptSegment if fewer are left.
  const std::byte* take(std::size_t size) {
    if (remaining() < size) throw_truncated(size, remaining());
    const std::byte* at = position_;
    position_ += size;
    return at;
  }
  [[noreturn]] PROCSHARE_API static void throw_truncated(std::size_t needed, std::size_t left);

  const std::byte* position_;
  const std::byte* end_;
};

namespace detail {

// ---------------------------------------------------------------- what travels

template <class T> struct is_handle : std::false_type {};
template <class T> struct is_handle<Value<T>> : std::true_type {};
template <class T> struct is_handle<Atomic<T>> : std::true_type {};
template <class T> struct is_handle<Array<T>> : std::true_type {};
template <class T> struct is_handle<Queue<T>> : std::true_type {};
template <> struct is_handle<Flag> : std::true_type {};
template <> struct is_handle<Mutex> : std::true_type {};
template <> struct is_handle<RecursiveMutex> : std::true_type {};
template <> struct is_handle<Semaphore> : std::true_type {};
template <> struct is_handle<BoundedSemaphore> : std::true_type {};
template <> struct is_handle<Event> : std::true_type {};
template <> struct is_handle<Condition> : std::true_type {};
template <> struct is_handle<Barrier> : std::true_type {};

// The error paths (lib/transport.cpp).
[[noreturn]] PROCSHARE_API void throw_bad_count(std::uint64_t count, std::size_t element_bytes,
                                                std::size_t left);
[[noreturn]] PROCSHARE_API void throw_bad_flag(std::string_view what, unsigned value);
[[noreturn]] PROCSHARE_API void throw_variant_index(std::uint64_t index, std::size_t alternatives);
[[noreturn]] PROCSHARE_API void throw_valueless_variant();
[[noreturn]] PROCSHARE_API void throw_repeated_key();
[[noreturn]] PROCSHARE_API void throw_unread(const std::type_info& type, std::size_t unread,
                                             std::uint64_t length);

// Transport<T>: how a T crosses processes.
//   ok: transportable at all;
//   fixed: its bytes are its value (so arrays of it are copied as one block);
//   min_bytes: the fewest bytes any T's encoding takes (how counts are checked).
// Built-in types are the partial specializations below; the primary template is the
// user's transport<T> if there is one (UserTransport), so a user's transport<T> never
// competes with them.
template <class T>
concept HasUserTransport = requires(Writer& w, Reader& r, const T& v) {
  transport<T>::write(w, v);
  { transport<T>::read(r) } -> std::same_as<T>;
};

template <class T> struct UserTransport {
  static constexpr bool ok = false;
  static constexpr bool fixed = false;
  static constexpr std::size_t min_bytes = 0;
};

// A user type: its length (uint64), then what transport<T>::write wrote. Its read gets a
// Reader over exactly those bytes and must use them all.
template <class T>
  requires HasUserTransport<T>
struct UserTransport<T> {
  static constexpr bool ok = true;
  static constexpr bool fixed = false;
  static constexpr std::size_t min_bytes = sizeof(std::uint64_t);
  static void write(Writer& w, const T& v) {
    const std::size_t at = w.out_->size();
    const std::uint64_t placeholder = 0;
    w.bytes(&placeholder, sizeof placeholder);
    transport<T>::write(w, v);
    const std::uint64_t length = w.out_->size() - at - sizeof length;
    std::memcpy(w.out_->data() + at, &length, sizeof length);
  }
  static T read(Reader& r) {
    std::uint64_t length;
    r.bytes(&length, sizeof length);
    if (length > r.remaining()) Reader::throw_truncated(length, r.remaining());
    const std::byte* begin = r.take(static_cast<std::size_t>(length));
    Reader inner(begin, begin + length);
    T v = transport<T>::read(inner);
    if (inner.remaining() != 0) throw_unread(typeid(T), inner.remaining(), length);
    return v;
  }
};

template <class T, class> struct Transport : UserTransport<T> {};

template <class T>
inline constexpr bool plain_transport_v =
    std::is_arithmetic_v<T> || std::is_enum_v<T> || is_handle<T>::value ||
    (transport_opt_in<T>::value && std::is_trivially_copyable_v<T>);

template <class T> struct Transport<T, std::enable_if_t<plain_transport_v<T>>> {
  static constexpr bool ok = true;
  static constexpr bool fixed = true;
  static constexpr std::size_t min_bytes = sizeof(T);
  static void write(Writer& w, const T& v) { w.bytes(&v, sizeof v); }
  static T read(Reader& r) {
    if constexpr (std::is_same_v<T, bool>) {
      unsigned char byte;
      r.bytes(&byte, 1);
      if (byte > 1) throw_bad_flag("bool", byte);
      return byte == 1;
    } else {
      T v;
      r.bytes(&v, sizeof v);
      return v;
    }
  }
};

// ---- counts and elements

template <class T> inline constexpr bool transport_ok_v = Transport<T>::ok;

// An element of a container whose encoding may be empty (std::monostate, std::tuple<>)
// is preceded by a zero byte, so that every element takes at least one byte and a count
// can always be checked against the bytes left.
template <class T> void write_mark(Writer& w) {
  if constexpr (Transport<T>::min_bytes == 0) {
    const unsigned char mark = 0;
    w.bytes(&mark, 1);
  }
}
template <class T> void read_mark(Reader& r) {
  if constexpr (Transport<T>::min_bytes == 0) {
    unsigned char mark;
    r.bytes(&mark, 1);
    if (mark != 0) throw_bad_flag("an element's mark", mark);
  }
}
template <class T> void write_element(Writer& w, const T& v) {
  write_mark<T>(w);
  Transport<T>::write(w, v);
}
template <class T> T read_element(Reader& r) {
  read_mark<T>(r);
  return Transport<T>::read(r);
}
template <class T> inline constexpr std::size_t element_bytes_v = std::max<std::size_t>(Transport<T>::min_bytes, 1);

inline void write_count(Writer& w, std::size_t count) {
  const std::uint64_t size = count;
  w.bytes(&size, sizeof size);
}
// Reads a count of elements that take at least `element_bytes` each, and checks that
// they fit in the bytes left (so nothing is allocated for a corrupt count).
inline std::size_t read_count(Reader& r, std::size_t element_bytes) {
  std::uint64_t count;
  r.bytes(&count, sizeof count);
  if (count > r.remaining() / element_bytes) throw_bad_count(count, element_bytes, r.remaining());
  return static_cast<std::size_t>(count);
}
// How many of `count` elements of `size` bytes to reserve room for: all of them, unless
// that would take more than four times the bytes left (an element can be much larger in
// memory than on the wire: a std::optional of a large array is one byte when empty).
inline std::size_t reserve_count(const Reader& r, std::size_t count, std::size_t size) {
  return std::min(count, r.remaining() / size * 4 + 16);
}

// ---- strings and sequences

template <> struct Transport<std::string> {
  static constexpr bool ok = true;
  static constexpr bool fixed = false;
  static constexpr std::size_t min_bytes = sizeof(std::uint64_t);
  static void write(Writer& w, const std::string& v) {
    write_count(w, v.size());
    w.bytes(v.data(), v.size());
  }
  static std::string read(Reader& r) {
    const std::size_t size = read_count(r, 1);
    return std::string(reinterpret_cast<const char*>(r.take(size)), size);
  }
};

template <class T> struct Transport<std::vector<T>, std::enable_if_t<transport_ok_v<T>>> {
  static constexpr bool ok = true;
  static constexpr bool fixed = false;
  static constexpr std::size_t min_bytes = sizeof(std::uint64_t);
  static void write(Writer& w, const std::vector<T>& v) {
    write_count(w, v.size());
    for (const T& x : v) write_element(w, x);
  }
  static std::vector<T> read(Reader& r) {
    const std::size_t size = read_count(r, element_bytes_v<T>);
    std::vector<T> v;
    v.reserve(reserve_count(r, size, sizeof(T)));
    for (std::size_t i = 0; i < size; ++i) v.push_back(read_element<T>(r));
    return v;
  }
};

// std::vector<bool> packs its bits (no bool& to its elements): its size, then its bits,
// eight to a byte, first element in the lowest bit; the unused high bits are zero.
template <> struct Transport<std::vector<bool>> {
  static constexpr bool ok = true;
  static constexpr bool fixed = false;
  static constexpr std::size_t min_bytes = sizeof(std::uint64_t);
  static void write(Writer& w, const std::vector<bool>& v) {
    write_count(w, v.size());
    unsigned char byte = 0;
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (v[i]) byte = static_cast<unsigned char>(byte | (1u << (i % 8)));
      if (i % 8 == 7 || i + 1 == v.size()) {
        w.bytes(&byte, 1);
        byte = 0;
      }
    }
  }
  static std::vector<bool> read(Reader& r) {
    std::uint64_t count;
    r.bytes(&count, sizeof count);
    const std::uint64_t whole = count / 8, part = count % 8;
    if (whole + (part != 0) > r.remaining()) throw_bad_count(count, 0, r.remaining());
    const auto size = static_cast<std::size_t>(count);
    const std::byte* bits = r.take(static_cast<std::size_t>(whole + (part != 0)));
    std::vector<bool> v(size);
    for (std::size_t i = 0; i < size; ++i)
      v[i] = (std::to_integer<unsigned>(bits[i / 8]) >> (i % 8)) & 1u;
    if (part != 0 && (std::to_integer<unsigned>(bits[whole]) >> part) != 0)
      throw_bad_flag("std::vector<bool>'s unused bits", std::to_integer<unsigned>(bits[whole]));
    return v;
  }
};

template <class T, std::size_t N>
struct Transport<std::array<T, N>, std::enable_if_t<transport_ok_v<T>>> {
  static constexpr bool ok = true;
  static constexpr bool fixed = Transport<T>::fixed;
  static constexpr std::size_t min_bytes = N * Transport<T>::min_bytes;
  static void write(Writer& w, const std::array<T, N>& v) {
    for (const T& x : v) Transport<T>::write(w, x);
  }
  static std::array<T, N> read(Reader& r) {
    std::array<T, N> v;
    for (T& x : v) x = Transport<T>::read(r);
    return v;
  }
};

// ---- products and sums

template <class... Ts> struct TupleTransport {
  static constexpr bool ok = (Transport<Ts>::ok && ...);
  static constexpr bool fixed = (Transport<Ts>::fixed && ...);
  static constexpr std::size_t min_bytes = (std::size_t{0} + ... + Transport<Ts>::min_bytes);
  template <class Tuple> static void write(Writer& w, const Tuple& v) {
    std::apply([&w](const auto&... x) { (Transport<std::remove_cvref_t<decltype(x)>>::write(w, x), ...); }, v);
  }
  template <class Tuple> static Tuple read(Reader& r) {
    return Tuple{Transport<Ts>::read(r)...};  // braced: left to right
  }
};

template <class... Ts>
struct Transport<std::tuple<Ts...>, std::enable_if_t<(transport_ok_v<Ts> && ...)>> {
  static constexpr bool ok = true;
  static constexpr bool fixed = TupleTransport<Ts...>::fixed && std::is_trivially_copyable_v<std::tuple<Ts...>>;
  static constexpr std::size_t min_bytes = TupleTransport<Ts...>::min_bytes;
  static void write(Writer& w, const std::tuple<Ts...>& v) { TupleTransport<Ts...>::write(w, v); }
  static std::tuple<Ts...> read(Reader& r) {
    return TupleTransport<Ts...>::template read<std::tuple<Ts...>>(r);
  }
};

template <class A, class B>
struct Transport<std::pair<A, B>, std::enable_if_t<transport_ok_v<A> && transport_ok_v<B>>> {
  static constexpr bool ok = true;
  static constexpr bool fixed = false;
  static constexpr std::size_t min_bytes = Transport<A>::min_bytes + Transport<B>::min_bytes;
  static void write(Writer& w, const std::pair<A, B>& v) {
    Transport<A>::write(w, v.first);
    Transport<B>::write(w, v.second);
  }
  static std::pair<A, B> read(Reader& r) {
    A a = Transport<A>::read(r);
    B b = Transport<B>::read(r);
    return {std::move(a), std::move(b)};
  }
};

// std::optional: a flag byte (0 empty, 1 engaged), then the value if engaged.
template <class T> struct Transport<std::optional<T>, std::enable_if_t<transport_ok_v<T>>> {
  static constexpr bool ok = true;
  static constexpr bool fixed = false;
  static constexpr std::size_t min_bytes = 1;
  static void write(Writer& w, const std::optional<T>& v) {
    const unsigned char engaged = v.has_value() ? 1 : 0;
    w.bytes(&engaged, 1);
    if (v) Transport<T>::write(w, *v);
  }
  static std::optional<T> read(Reader& r) {
    unsigned char engaged;
    r.bytes(&engaged, 1);
    if (engaged > 1) throw_bad_flag("std::optional's flag", engaged);
    if (engaged == 0) return std::nullopt;
    return std::optional<T>(Transport<T>::read(r));
  }
};

template <> struct Transport<std::monostate> {
  static constexpr bool ok = true;
  static constexpr bool fixed = false;
  static constexpr std::size_t min_bytes = 0;
  static void write(Writer&, const std::monostate&) {}
  static std::monostate read(Reader&) { return {}; }
};

// std::variant: the index of its alternative (uint32), then that alternative's value.
template <class... Ts>
struct Transport<std::variant<Ts...>, std::enable_if_t<(transport_ok_v<Ts> && ...)>> {
  using V = std::variant<Ts...>;
  static constexpr bool ok = true;
  static constexpr bool fixed = false;
  static constexpr std::size_t min_bytes = sizeof(std::uint32_t) + std::min({Transport<Ts>::min_bytes...});
  static void write(Writer& w, const V& v) {
    if (v.valueless_by_exception()) throw_valueless_variant();
    const auto index = static_cast<std::uint32_t>(v.index());
    w.bytes(&index, sizeof index);
    write_alternative(w, v, std::index_sequence_for<Ts...>{});
  }
  static V read(Reader& r) {
    std::uint32_t index;
    r.bytes(&index, sizeof index);
    if (index >= sizeof...(Ts)) throw_variant_index(index, sizeof...(Ts));
    return read_alternative(r, index, std::index_sequence_for<Ts...>{});
  }

private:
  template <std::size_t... I> static void write_alternative(Writer& w, const V& v, std::index_sequence<I...>) {
    ((v.index() == I ? Transport<std::variant_alternative_t<I, V>>::write(w, std::get<I>(v)) : void()), ...);
  }
  template <std::size_t... I> static V read_alternative(Reader& r, std::uint32_t index, std::index_sequence<I...>) {
    using Read = V (*)(Reader&);
    static constexpr Read readers[] = {+[](Reader& from) {
      return V(std::in_place_index<I>, Transport<std::variant_alternative_t<I, V>>::read(from));
    }...};
    return readers[index](r);
  }
};

// ---- associative containers: the count, then each element (a map's as key, value), in
// iteration order. A key met twice is CorruptSegment.

template <class C, class Element> struct AssociativeTransport {
  static constexpr bool ok = true;
  static constexpr bool fixed = false;
  static constexpr std::size_t min_bytes = sizeof(std::uint64_t);
  static void write(Writer& w, const C& c) {
    write_count(w, c.size());
    for (const auto& x : c) {
      write_mark<Element>(w);
      if constexpr (requires { typename C::mapped_type; }) {
        Transport<typename C::key_type>::write(w, x.first);
        Transport<typename C::mapped_type>::write(w, x.second);
      } else {
        Transport<Element>::write(w, x);
      }
    }
  }
  static C read(Reader& r) {
    const std::size_t size = read_count(r, element_bytes_v<Element>);
    C c;
    if constexpr (requires { c.reserve(size); }) c.reserve(reserve_count(r, size, 2 * sizeof(void*)));
    for (std::size_t i = 0; i < size; ++i) {
      const std::size_t before = c.size();
      c.emplace_hint(c.end(), read_element<Element>(r));
      if (c.size() == before) throw_repeated_key();
    }
    return c;
  }
};

template <class K, class V, class Compare, class Allocator>
struct Transport<std::map<K, V, Compare, Allocator>, std::enable_if_t<transport_ok_v<K> && transport_ok_v<V>>>
    : AssociativeTransport<std::map<K, V, Compare, Allocator>, std::pair<K, V>> {};
template <class K, class V, class Hash, class Equal, class Allocator>
struct Transport<std::unordered_map<K, V, Hash, Equal, Allocator>,
                 std::enable_if_t<transport_ok_v<K> && transport_ok_v<V>>>
    : AssociativeTransport<std::unordered_map<K, V, Hash, Equal, Allocator>, std::pair<K, V>> {};
template <class T, class Compare, class Allocator>
struct Transport<std::set<T, Compare, Allocator>, std::enable_if_t<transport_ok_v<T>>>
    : AssociativeTransport<std::set<T, Compare, Allocator>, T> {};
template <class T, class Hash, class Equal, class Allocator>
struct Transport<std::unordered_set<T, Hash, Equal, Allocator>, std::enable_if_t<transport_ok_v<T>>>
    : AssociativeTransport<std::unordered_set<T, Hash, Equal, Allocator>, T> {};

// ---------------------------------------------------------------- the check

// The one compile-time error for a type that cannot travel ("[with T = ...]" names it).
template <class T> consteval bool check_transportable() {
  static_assert(Transportable<T>,
                "procshare: type T (named above) cannot cross processes: pointers, "
                "references, std::string_view and std::span would point into the wrong "
                "process. Send values: numbers, enums, std::string, procshare handles, or "
                "std::optional, variant, vector, array, pair, tuple, map, set, unordered_map, "
                "unordered_set of them; give a type of your own a procshare::transport<T> "
                "(see procshare/transport.hpp), or opt a trivially copyable one in with "
                "procshare::transport_opt_in<T>");
  return true;  // (so that the caller's own static_assert adds no second error)
}

template <class R> consteval bool check_result() {
  if constexpr (std::is_void_v<R>)
    return true;
  else
    return check_transportable<R>();
}

}  // namespace detail

template <class T> void Writer::write(const T& value) {
  static_assert(detail::check_transportable<T>());
  if constexpr (Transportable<T>) detail::Transport<T>::write(*this, value);
}

template <class T> T Reader::read() {
  static_assert(std::is_same_v<T, std::remove_cvref_t<T>>,
                "procshare::Reader::read<T>: T is a value type, without const or reference");
  static_assert(detail::check_transportable<T>());
  if constexpr (Transportable<T>) return detail::Transport<T>::read(*this);
  else std::abort();  // (not compiled: the assertion above failed)
}

}  // namespace procshare
