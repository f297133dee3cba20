// Transport: how arguments, items and results cross processes, as bytes. A value is
// written by Transport<T>::write into a byte vector and read back by Transport<T>::read in
// another process; Transportable<T> says whether a type can travel at all. Used by the pool
// (task arguments, items, results, exception messages) and by Pipe.
//
// Reading never trusts the bytes: running past their end throws CorruptSegment, never a
// wild read. What travels: see Transportable below.
#pragma once

#include <procshare/error.hpp>
#include <procshare/segment.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace procshare {

// Opt a trivially copyable user type in as transportable (it must hold no pointers):
//   template <> struct procshare::transport_opt_in<Point> : std::true_type {};
template <class T> struct transport_opt_in : std::false_type {};

namespace detail {

// ---------------------------------------------------------------- transport

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

// Appends the bytes of values.
struct Writer {
  std::vector<std::byte>& out;
  void bytes(const void* data, std::size_t size) {
    const auto* p = static_cast<const std::byte*>(data);
    out.insert(out.end(), p, p + size);
  }
};

// Reads them back; running past the end is CorruptSegment (never a wild read).
struct Reader {
  const std::byte* position;
  const std::byte* end;
  void bytes(void* data, std::size_t size) {
    if (static_cast<std::size_t>(end - position) < size) throw_truncated();
    std::memcpy(data, position, size);
    position += size;
  }
  [[noreturn]] PROCSHARE_API static void throw_truncated();
};

// Transport<T>: how a T crosses processes. `ok`: transportable at all; `fixed`: its bytes
// are its value (so arrays of it are copied as one block).
template <class T, class = void> struct Transport {
  static constexpr bool ok = false;
  static constexpr bool fixed = false;
};

template <class T>
inline constexpr bool plain_transport_v =
    std::is_arithmetic_v<T> || std::is_enum_v<T> || is_handle<T>::value ||
    (transport_opt_in<T>::value && std::is_trivially_copyable_v<T>);

template <class T> struct Transport<T, std::enable_if_t<plain_transport_v<T>>> {
  static constexpr bool ok = true;
  static constexpr bool fixed = true;
  static void write(Writer& w, const T& v) { w.bytes(&v, sizeof v); }
  static T read(Reader& r) {
    T v;
    r.bytes(&v, sizeof v);
    return v;
  }
};

template <> struct Transport<std::string> {
  static constexpr bool ok = true;
  static constexpr bool fixed = false;
  static void write(Writer& w, const std::string& v) {
    const std::uint64_t size = v.size();
    w.bytes(&size, sizeof size);
    w.bytes(v.data(), v.size());
  }
  static std::string read(Reader& r) {
    std::uint64_t size;
    r.bytes(&size, sizeof size);
    if (static_cast<std::uint64_t>(r.end - r.position) < size) Reader::throw_truncated();
    std::string v(reinterpret_cast<const char*>(r.position), size);
    r.position += size;
    return v;
  }
};

template <class T> struct Transport<std::vector<T>, std::enable_if_t<Transport<T>::ok>> {
  static constexpr bool ok = true;
  static constexpr bool fixed = false;
  static void write(Writer& w, const std::vector<T>& v) {
    const std::uint64_t size = v.size();
    w.bytes(&size, sizeof size);
    for (const T& x : v) Transport<T>::write(w, x);
  }
  static std::vector<T> read(Reader& r) {
    std::uint64_t size;
    r.bytes(&size, sizeof size);
    if (size > static_cast<std::uint64_t>(r.end - r.position)) Reader::throw_truncated();
    std::vector<T> v;
    v.reserve(size);
    for (std::uint64_t i = 0; i < size; ++i) v.push_back(Transport<T>::read(r));
    return v;
  }
};

template <class... Ts> struct TupleTransport {
  static constexpr bool ok = (Transport<Ts>::ok && ...);
  static constexpr bool fixed = (Transport<Ts>::fixed && ...);
  template <class Tuple> static void write(Writer& w, const Tuple& v) {
    std::apply([&w](const auto&... x) { (Transport<std::remove_cvref_t<decltype(x)>>::write(w, x), ...); }, v);
  }
  template <class Tuple> static Tuple read(Reader& r) {
    return Tuple{Transport<Ts>::read(r)...};  // braced: left to right
  }
};

template <class... Ts>
struct Transport<std::tuple<Ts...>, std::enable_if_t<TupleTransport<Ts...>::ok>> {
  static constexpr bool ok = true;
  static constexpr bool fixed = TupleTransport<Ts...>::fixed && std::is_trivially_copyable_v<std::tuple<Ts...>>;
  static void write(Writer& w, const std::tuple<Ts...>& v) { TupleTransport<Ts...>::write(w, v); }
  static std::tuple<Ts...> read(Reader& r) {
    return TupleTransport<Ts...>::template read<std::tuple<Ts...>>(r);
  }
};

template <class A, class B>
struct Transport<std::pair<A, B>, std::enable_if_t<Transport<A>::ok && Transport<B>::ok>> {
  static constexpr bool ok = true;
  static constexpr bool fixed = false;
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

template <class T, std::size_t N>
struct Transport<std::array<T, N>, std::enable_if_t<Transport<T>::ok>> {
  static constexpr bool ok = true;
  static constexpr bool fixed = Transport<T>::fixed;
  static void write(Writer& w, const std::array<T, N>& v) {
    for (const T& x : v) Transport<T>::write(w, x);
  }
  static std::array<T, N> read(Reader& r) {
    std::array<T, N> v;
    for (T& x : v) x = Transport<T>::read(r);
    return v;
  }
};

}  // namespace detail

// Transportable<T>: T can travel between the parent and pool workers: arithmetic types,
// enums, procshare handles, std::string, std::vector / std::array / std::pair /
// std::tuple of transportable types, and opted-in trivially copyable types. Pointers,
// references, std::string_view and std::span cannot (they would point into the wrong
// process's memory).
template <class T>
concept Transportable = detail::Transport<std::remove_cvref_t<T>>::ok;

namespace detail {

template <class T> consteval bool check_transportable() {
  static_assert(Transportable<T>,
                "procshare::Pool: this argument, item or result type cannot cross processes. "
                "Pointers, references, std::string_view and std::span would point into the "
                "wrong process; use values, std::string, std::vector, std::array, std::pair, "
                "std::tuple, procshare handles, or opt a trivially copyable type in with "
                "procshare::transport_opt_in<T>");
  return true;
}

template <class R> consteval bool check_result() {
  if constexpr (std::is_void_v<R>)
    return true;
  else
    return check_transportable<R>();
}

}  // namespace detail
}  // namespace procshare
