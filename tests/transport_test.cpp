// Transport: every transportable type written and read back exactly (standard types,
// nested ones, user types through procshare::transport<T>), corrupt and truncated bytes
// refused with CorruptSegment (never a crash or a huge allocation), and the same types
// through a Pool task and back.
#include "support.hpp"

#include <doctest/doctest.h>

#include <limits>

using namespace procshare;

namespace {

// A user type with a string and a map: the README's example.
struct Point {
  std::string name;
  std::map<std::string, double> coords;
  bool operator==(const Point&) const = default;
};

// A user type holding another user type and standard containers.
struct Route {
  std::vector<Point> stops;
  std::optional<Point> detour;
  std::set<int> days;
  bool operator==(const Route&) const = default;
};

// A user type whose read refuses a negative value.
struct Picky {
  int value;
  bool operator==(const Picky&) const = default;
};

// A user type whose read takes fewer bytes than its write wrote (a user's bug).
struct Lopsided {
  int a, b;
};

// A type whose constructor from int throws, so a variant holding it can be made valueless.
struct Fragile {
  Fragile() = default;
  explicit Fragile(int) { throw std::runtime_error("fragile"); }
  Fragile(const Fragile&) = default;
  ~Fragile() {}  // (not trivial: emplace then builds it in place)
};

// A trivially copyable type opted in to travel as its bytes.
struct Pixel {
  std::int16_t x, y;
  std::uint8_t shade;
  bool operator==(const Pixel&) const = default;
};

}  // namespace

template <> struct procshare::transport<Point> {
  static void write(Writer& w, const Point& p) {
    w.write(p.name);
    w.write(p.coords);
  }
  static Point read(Reader& r) {
    Point p;
    p.name = r.read<std::string>();
    p.coords = r.read<std::map<std::string, double>>();
    return p;
  }
};

template <> struct procshare::transport<Route> {
  static void write(Writer& w, const Route& route) {
    w.write(route.stops);
    w.write(route.detour);
    w.write(route.days);
  }
  static Route read(Reader& r) {
    Route route;
    route.stops = r.read<std::vector<Point>>();
    route.detour = r.read<std::optional<Point>>();
    route.days = r.read<std::set<int>>();
    return route;
  }
};

template <> struct procshare::transport<Picky> {
  static void write(Writer& w, const Picky& p) { w.write(p.value); }
  static Picky read(Reader& r) {
    const int value = r.read<int>();
    if (value < 0) Reader::reject("a Picky is never negative");
    return Picky{value};
  }
};

template <> struct procshare::transport<Lopsided> {
  static void write(Writer& w, const Lopsided& v) {
    w.write(v.a);
    w.write(v.b);
  }
  static Lopsided read(Reader& r) { return Lopsided{r.read<int>(), 0}; }
};

template <> struct procshare::transport<Fragile> {
  static void write(Writer&, const Fragile&) {}
  static Fragile read(Reader&) { return Fragile{}; }
};

template <> struct procshare::transport_opt_in<Pixel> : std::true_type {};

namespace {

template <class T> std::vector<std::byte> encode(const T& value) {
  std::vector<std::byte> bytes;
  Writer w(bytes);
  w.write(value);
  return bytes;
}

template <class T> T decode(const std::vector<std::byte>& bytes) {
  Reader r{std::span<const std::byte>(bytes)};
  T value = r.read<T>();
  CHECK(r.remaining() == 0);
  return value;
}

// Whether reading a T from every proper prefix of `bytes` throws CorruptSegment (and
// nothing else, and never reads a value).
template <class T> bool every_prefix_is_corrupt(const std::vector<std::byte>& bytes) {
  for (std::size_t length = 0; length < bytes.size(); ++length) {
    Reader r(bytes.data(), bytes.data() + length);
    try {
      (void)r.read<T>();
      return false;
    } catch (const CorruptSegment&) {
    } catch (...) {
      return false;
    }
  }
  return true;
}

// Writes `value`, reads it back, and checks the copy and every truncation.
template <class T> void check_round_trip(const T& value) {
  const auto bytes = encode(value);
  CHECK(decode<T>(bytes) == value);
  CHECK(every_prefix_is_corrupt<T>(bytes));
}

// Bytes holding the given values one after the other, as raw memory.
template <class... Ts> std::vector<std::byte> raw(const Ts&... values) {
  std::vector<std::byte> bytes;
  Writer w(bytes);
  (w.bytes(&values, sizeof values), ...);
  return bytes;
}

template <class T> void read_from(const std::vector<std::byte>& bytes) {
  Reader r{std::span<const std::byte>(bytes)};
  (void)r.read<T>();
}

constexpr std::uint64_t huge = std::uint64_t{1} << 60;

Point point(std::string name, double x) { return Point{std::move(name), {{"x", x}, {"y", -x}}}; }

}  // namespace

TEST_SUITE("transport") {

TEST_CASE("std::optional, std::map, std::unordered_map, std::set and std::unordered_set round-trip, empty or not") {
  check_round_trip(std::optional<int>{});
  check_round_trip(std::optional<int>{42});
  check_round_trip(std::optional<std::string>{"text"});
  check_round_trip(std::optional<std::string>{""});
  check_round_trip(std::map<std::string, int>{});
  check_round_trip(std::map<std::string, int>{{"a", 1}, {"b", -2}, {"", 3}});
  check_round_trip(std::map<int, std::string, std::greater<>>{{1, "one"}, {2, "two"}});
  check_round_trip(std::unordered_map<int, std::string>{});
  check_round_trip(std::unordered_map<int, std::string>{{1, "one"}, {2, "two"}, {3, ""}});
  check_round_trip(std::set<std::string>{});
  check_round_trip(std::set<std::string>{"pear", "apple", "fig"});
  check_round_trip(std::unordered_set<long>{});
  check_round_trip(std::unordered_set<long>{5, -7, 1L << 40});
  check_round_trip(std::vector<std::optional<double>>{1.5, std::nullopt, -0.0});
}

TEST_CASE("std::vector<bool> of every length from 0 to 70, and 1,001, round-trips packed in bits") {
  for (std::size_t n = 0; n <= 70; ++n) {
    CAPTURE(n);
    std::vector<bool> bits(n);
    for (std::size_t i = 0; i < n; ++i) bits[i] = (i * 7 + n) % 3 == 0;
    const auto bytes = encode(bits);
    CHECK(bytes.size() == 8 + (n + 7) / 8);
    CHECK(decode<std::vector<bool>>(bytes) == bits);
    CHECK(every_prefix_is_corrupt<std::vector<bool>>(bytes));
  }
  check_round_trip(std::vector<bool>(1001, true));
  check_round_trip(std::vector<std::vector<bool>>{{}, {true}, {false, true, true}});
}

TEST_CASE("a std::variant round-trips in each of its alternatives, std::monostate included") {
  using V = std::variant<std::monostate, int, std::string, std::vector<double>, std::map<int, bool>>;
  check_round_trip(V{});
  check_round_trip(V{7});
  check_round_trip(V{std::string("seven")});
  check_round_trip(V{std::vector<double>{1.0, 2.5}});
  check_round_trip(V{std::map<int, bool>{{1, true}, {2, false}}});
  // Alternatives of one type keep their index.
  using Twice = std::variant<int, int>;
  const auto second = decode<Twice>(encode(Twice{std::in_place_index<1>, 5}));
  CHECK(second.index() == 1);
  CHECK(std::get<1>(second) == 5);
  check_round_trip(std::monostate{});
  check_round_trip(std::vector<std::monostate>(5));
  check_round_trip(std::vector<std::tuple<>>(3));
  check_round_trip(std::set<std::monostate>{std::monostate{}});
}

TEST_CASE("nested combinations round-trip") {
  check_round_trip(std::map<std::string, std::vector<std::optional<int>>>{
      {"a", {1, std::nullopt, 3}}, {"b", {}}, {"c", {std::nullopt}}});
  check_round_trip(std::vector<std::map<int, std::set<std::string>>>{{}, {{1, {"x", "y"}}, {2, {}}}});
  check_round_trip(std::optional<std::variant<int, std::vector<std::optional<std::string>>>>{
      std::vector<std::optional<std::string>>{"a", std::nullopt}});
  check_round_trip(std::unordered_map<std::string, std::vector<bool>>{{"odd", {true, false, true}}, {"none", {}}});
  check_round_trip(std::pair<std::optional<std::string>, std::map<int, std::variant<std::monostate, double>>>{
      std::nullopt, {{1, 2.5}, {2, std::monostate{}}}});
  check_round_trip(std::array<std::optional<int>, 3>{1, std::nullopt, 3});
  check_round_trip(std::tuple<int, std::set<char>, std::optional<std::vector<bool>>>{1, {'a', 'b'}, std::vector<bool>{true}});
  check_round_trip(std::vector<std::variant<std::monostate, std::tuple<>>>{std::monostate{}, std::tuple<>{}});
}

TEST_CASE("user types travel through procshare::transport<T>, nested in standard types and in each other") {
  check_round_trip(point("origin", 0));
  check_round_trip(Point{});
  check_round_trip(std::vector<Point>{point("a", 1), point("b", 2)});
  check_round_trip(std::map<std::string, Point>{{"home", point("h", 3)}});
  check_round_trip(std::optional<Point>{point("maybe", 4)});
  check_round_trip(std::variant<int, Point>{point("either", 5)});
  check_round_trip(Route{{point("a", 1), point("b", 2)}, point("c", 3), {1, 5}});
  check_round_trip(Route{});
  check_round_trip(Pixel{-3, 4, 200});
  check_round_trip(std::vector<Pixel>{{1, 2, 3}, {4, 5, 6}});
  check_round_trip(Picky{3});
  static_assert(Transportable<Point> && Transportable<const Route&> && Transportable<std::vector<Pixel>>);
  static_assert(!Transportable<int*> && !Transportable<std::string_view> &&
                !Transportable<std::vector<int*>> && !Transportable<std::map<int, std::span<int>>> &&
                !Transportable<std::optional<const char*>> && !Transportable<std::variant<int, void*>>);
}

TEST_CASE("reading past the end is CorruptSegment saying how many bytes were needed and left") {
  const auto three = raw(std::uint8_t{1}, std::uint8_t{2}, std::uint8_t{3});
  CHECK_THROWS_WITH_AS(read_from<std::int64_t>(three),
                       "transport: a serialized value runs past the end of its bytes (8 more needed, 3 left)",
                       CorruptSegment);
  CHECK_THROWS_WITH_AS(read_from<std::string>(raw(std::uint64_t{5}, 'a', 'b')),
                       "transport: a serialized count of 5 elements of at least 1 byte each cannot fit in the 2 bytes left",
                       CorruptSegment);
}

TEST_CASE("a count of 2^60 is CorruptSegment before anything is allocated, for every container") {
  const auto bytes = raw(huge, std::uint64_t{0});
  const std::string message = "transport: a serialized count of 1152921504606846976 elements of at least ";
  CHECK_THROWS_WITH_AS(read_from<std::vector<int>>(bytes), doctest::Contains(message.c_str()), CorruptSegment);
  CHECK_THROWS_WITH_AS(read_from<std::string>(bytes), doctest::Contains(message.c_str()), CorruptSegment);
  CHECK_THROWS_WITH_AS((read_from<std::map<std::string, int>>(bytes)), doctest::Contains(message.c_str()), CorruptSegment);
  CHECK_THROWS_WITH_AS((read_from<std::unordered_map<int, int>>(bytes)), doctest::Contains(message.c_str()), CorruptSegment);
  CHECK_THROWS_WITH_AS(read_from<std::set<char>>(bytes), doctest::Contains(message.c_str()), CorruptSegment);
  CHECK_THROWS_WITH_AS(read_from<std::unordered_set<char>>(bytes), doctest::Contains(message.c_str()), CorruptSegment);
  CHECK_THROWS_WITH_AS(read_from<std::vector<std::monostate>>(bytes), doctest::Contains(message.c_str()), CorruptSegment);
  CHECK_THROWS_WITH_AS(read_from<std::vector<Point>>(bytes), doctest::Contains(message.c_str()), CorruptSegment);
  CHECK_THROWS_WITH_AS(read_from<std::vector<bool>>(bytes),
                       "transport: a serialized count of 1152921504606846976 bits cannot fit in the 8 bytes left",
                       CorruptSegment);
  CHECK_THROWS_AS(read_from<std::vector<bool>>(raw(std::numeric_limits<std::uint64_t>::max())), CorruptSegment);
  CHECK_THROWS_AS(read_from<std::string>(raw(std::numeric_limits<std::uint64_t>::max())), CorruptSegment);
  // Inside a user type's frame: its length, then a count of 2^60.
  CHECK_THROWS_AS(read_from<Point>(raw(std::uint64_t{16}, huge, std::uint64_t{0})), CorruptSegment);
  CHECK_THROWS_WITH_AS(read_from<Point>(raw(huge)),
                       doctest::Contains("runs past the end of its bytes (1152921504606846976 more needed, 0 left)"),
                       CorruptSegment);
}

TEST_CASE("a variant index out of range, a bad flag or bool, bad padding bits and a repeated key are CorruptSegment") {
  using V = std::variant<int, std::string, double>;
  CHECK_THROWS_WITH_AS(read_from<V>(raw(std::uint32_t{7}, 0)),
                       "transport: a std::variant's index 7 is out of range (it has 3 alternatives)", CorruptSegment);
  CHECK_THROWS_WITH_AS(read_from<V>(raw(std::numeric_limits<std::uint32_t>::max())),
                       "transport: a std::variant's index 4294967295 is out of range (it has 3 alternatives)",
                       CorruptSegment);
  CHECK_THROWS_WITH_AS(read_from<std::optional<int>>(raw(std::uint8_t{2}, 0)),
                       "transport: std::optional's flag is 2, not 0 or 1", CorruptSegment);
  CHECK_THROWS_WITH_AS(read_from<bool>(raw(std::uint8_t{5})), "transport: bool is 5, not 0 or 1", CorruptSegment);
  CHECK_THROWS_WITH_AS(read_from<std::vector<bool>>(raw(std::uint64_t{3}, std::uint8_t{0x0f})),
                       "transport: std::vector<bool>'s unused bits is 15, not 0 or 1", CorruptSegment);
  CHECK_THROWS_WITH_AS(read_from<std::vector<std::monostate>>(raw(std::uint64_t{1}, std::uint8_t{9})),
                       "transport: an element's mark is 9, not 0 or 1", CorruptSegment);
  CHECK_THROWS_WITH_AS((read_from<std::map<int, int>>(raw(std::uint64_t{2}, 1, 10, 1, 20))),
                       "transport: a map or set holds the same key twice", CorruptSegment);
  CHECK_THROWS_WITH_AS(read_from<std::unordered_set<int>>(raw(std::uint64_t{2}, 4, 4)),
                       "transport: a map or set holds the same key twice", CorruptSegment);
}

TEST_CASE("a user type's read that rejects its bytes, or leaves some unread, is CorruptSegment naming why") {
  CHECK_THROWS_WITH_AS(read_from<Picky>(encode(Picky{-1})), "transport: a Picky is never negative", CorruptSegment);
  CHECK_THROWS_WITH_AS(read_from<Lopsided>(encode(Lopsided{1, 2})),
                       doctest::Contains("Lopsided>::read left 4 of its 8 bytes unread (it must read what write wrote)"),
                       CorruptSegment);
  // The frame keeps a lopsided read from shifting what follows.
  CHECK_THROWS_AS((read_from<std::pair<Lopsided, int>>(encode(std::pair<Lopsided, int>({1, 2}, 3)))), CorruptSegment);
}

TEST_CASE("writing a valueless std::variant is InvalidArgument") {
  std::variant<int, Fragile> v;
  CHECK_THROWS((void)v.emplace<1>(1));
  REQUIRE(v.valueless_by_exception());
  CHECK_THROWS_WITH_AS((void)encode(v), "transport: a std::variant that is valueless by exception cannot be written",
                       InvalidArgument);
}

}  // TEST_SUITE

namespace {

using Reading = std::variant<std::monostate, std::int64_t, std::string>;

Reading summarize(const std::optional<int>& limit, const std::map<std::string, int>& counts) {
  int total = 0;
  for (const auto& [word, count] : counts) total += count;
  if (counts.empty()) return std::monostate{};
  if (limit && total > *limit) return fmt::format("{} words over {}", total, *limit);
  return std::int64_t{total};
}

Point move_east(const Point& p, double by) {
  Point moved = p;
  moved.name += "'";
  for (auto& [axis, value] : moved.coords)
    if (axis == "x") value += by;
  return moved;
}

}  // namespace

TEST_SUITE("transport through a pool") {

TEST_CASE("a Pool task takes and returns std::optional, std::map, std::variant and a user type, exactly") {
  Pool pool({.workers = 2});
  CHECK(pool.submit(summarize, std::optional<int>{}, std::map<std::string, int>{}).get() == Reading{});
  CHECK(pool.submit(summarize, std::optional<int>{10}, std::map<std::string, int>{{"a", 3}, {"b", 4}}).get() ==
        Reading{std::int64_t{7}});
  CHECK(pool.submit(summarize, std::optional<int>{5}, std::map<std::string, int>{{"a", 3}, {"b", 4}}).get() ==
        Reading{std::string("7 words over 5")});

  std::vector<Point> points;
  for (int i = 0; i < 500; ++i) points.push_back(point(fmt::format("p{}", i), i));
  const auto moved = pool.map(points, move_east, 0.5);
  REQUIRE(moved.size() == points.size());
  bool exact = true;
  for (std::size_t i = 0; i < points.size(); ++i)
    exact = exact && moved[i] == Point{points[i].name + "'", {{"x", points[i].coords.at("x") + 0.5},
                                                             {"y", points[i].coords.at("y")}}};
  CHECK(exact);

  using Nested = std::map<std::string, std::vector<std::optional<int>>>;
  const std::vector<Nested> nested{{}, {{"a", {1, std::nullopt}}}, {{"b", {}}, {"c", {std::nullopt, 3}}}};
  const auto counts = pool.map(nested, [](const Nested& n) {
    std::optional<std::size_t> present;
    for (const auto& [key, values] : n)
      for (const auto& v : values)
        if (v) present = present.value_or(0) + 1;
    return present;
  });
  CHECK(counts == std::vector<std::optional<std::size_t>>{std::nullopt, 1, 1});
  const auto bits = pool.map(std::vector<int>{0, 1, 9}, [](int n) { return std::vector<bool>(static_cast<std::size_t>(n), true); });
  CHECK(bits == std::vector<std::vector<bool>>{{}, {true}, std::vector<bool>(9, true)});
  const auto route = pool.submit([](const Route& r) { return r; }, Route{{point("a", 1)}, point("b", 2), {3}}).get();
  CHECK(route == Route{{point("a", 1)}, point("b", 2), {3}});
}

TEST_CASE("a user type the worker cannot read, or whose result the parent cannot read, fails only its item with TaskError") {
  Pool pool({.workers = 2});
  const auto echo = [](const Picky& p) { return p.value; };
  try {
    (void)pool.map(std::vector<Picky>{{1}, {-1}, {3}}, echo);
    FAIL("no TaskError");
  } catch (const TaskError& e) {
    CHECK(e.index() == 1);
    CHECK(e.exception_type() == "procshare::CorruptSegment");
    CHECK(e.message() == "transport: a Picky is never negative");
  }
  const auto make = [](int v) { return Picky{v}; };
  try {
    (void)pool.map(std::vector<int>{1, 2, -3}, make);
    FAIL("no TaskError");
  } catch (const TaskError& e) {
    CHECK(e.index() == 2);
    CHECK(e.exception_type() == "procshare::CorruptSegment");
    CHECK(e.message() == "its result could not be read back: transport: a Picky is never negative");
  }
  // An argument the worker cannot read fails each item with the reason; the pool goes on.
  CHECK_THROWS_WITH_AS(pool.submit([](const Picky& p) { return p.value; }, Picky{-5}).get(),
                       doctest::Contains("transport: a Picky is never negative"), TaskError);
  CHECK(pool.map(std::vector<int>{1, 2, 3}, make) == std::vector<Picky>{{1}, {2}, {3}});
}

}  // TEST_SUITE
