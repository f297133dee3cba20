// custom_transport: a struct of your own as a pool task's argument and result. Shelf holds
// a std::string and a std::map, so it cannot be copied as its bytes; one
// procshare::transport<Shelf> (a write and a read that compose its members, as a
// fmt::formatter composes output) lets it travel to a worker process and back.
//
// Usage: custom_transport [shelves=6]
// Prints each shelf after a worker restocked it (every item topped up to 10), and exits 1
// if any count came back wrong.
#include <procshare/procshare.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

struct Shelf {
  std::string name;
  std::map<std::string, int> stock;  // item -> count
};

// How a Shelf crosses processes: its members, written and read in the same order.
template <> struct procshare::transport<Shelf> {
  static void write(procshare::Writer& w, const Shelf& s) {
    w.write(s.name);
    w.write(s.stock);
  }
  static Shelf read(procshare::Reader& r) {
    Shelf s;
    s.name = r.read<std::string>();
    s.stock = r.read<std::map<std::string, int>>();
    return s;
  }
};

// Runs in a worker: tops every item up to `minimum`, and says who did it.
static Shelf restock(const Shelf& shelf, int minimum) {
  Shelf out = shelf;
  out.name += fmt::format(" (restocked by worker {})", ::getpid());
  for (auto& [item, count] : out.stock)
    if (count < minimum) count = minimum;
  return out;
}

int main(int argc, char** argv) {
  const int shelves = argc > 1 ? std::atoi(argv[1]) : 6;
  std::vector<Shelf> store;
  for (int i = 0; i < shelves; ++i)
    store.push_back(Shelf{fmt::format("shelf {}", i), {{"apples", i * 3}, {"pears", 12 - i}, {"figs", 0}}});

  procshare::Pool pool({.workers = 2});
  const std::vector<Shelf> restocked = pool.map(store, restock, 10);

  bool right = restocked.size() == store.size();
  for (std::size_t i = 0; right && i < store.size(); ++i) {
    fmt::print("{}: {}\n", restocked[i].name, restocked[i].stock);
    for (const auto& [item, count] : store[i].stock)
      right = right && restocked[i].stock.at(item) == std::max(count, 10);
  }
  fmt::print("{}\n", right ? "every shelf came back restocked" : "a shelf came back wrong");
  return right ? 0 : 1;
}
