// Writes the fuzzer's seed corpus into the directory given: one small segment file (4 KiB,
// the smallest a segment can be) per group of object kinds, and broken ones made the way
// forged or torn files would be. tests/fuzz/corpus/ holds its output, committed; run
// `build/tests/fuzz/make_corpus tests/fuzz/corpus` to remake it after a layout change.
#include "forge.hpp"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>

struct Point {
  std::int32_t x, y;
};
template <> struct procshare::type_name<Point> {
  static constexpr std::string_view value = "point";
};

namespace {

using namespace procshare;

std::string out_dir;
int made = 0;

// A segment of one page with room for `objects` objects, removed when done.
struct Seed {
  std::string name = "ps-corpus-" + std::to_string(::getpid()) + "-" + std::to_string(made);
  Segment segment;
  Seed(std::uint32_t objects) : segment(Segment::create(name, 4096, {.max_objects = objects})) {}
  // Writes the segment's bytes as OUT/file, cut to `size` bytes if given, with `patch`
  // applied to the copy.
  template <class Patch = void (*)(std::string&)>
  void save(const std::string& file, std::size_t size = 0, Patch patch = [](std::string&) {}) {
    std::ifstream in("/dev/shm/" + name, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (size != 0) bytes.resize(size);
    patch(bytes);
    std::ofstream(out_dir + "/" + file, std::ios::binary) << bytes;
    std::printf("%s (%zu bytes)\n", file.c_str(), bytes.size());
    ++made;
  }
};

void values(Seed& s) {
  s.segment.create_value<std::int64_t>("count", 42);
  s.segment.create_value<bool>("done", true);
  s.segment.create_value<double>("ratio", 2.5);
  s.segment.create_value<char>("grade", 'x');
  s.segment.create_value<std::uint8_t>("small", 7);
  s.segment.create_value<Point>("point", Point{1, 2});
  s.segment.create_atomic<std::int32_t>("hits", -3);
  s.segment.create_atomic<bool>("ready", true);
  s.segment.create_flag("stop", true);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_corpus OUTPUT_DIRECTORY\n");
    return 2;
  }
  out_dir = argv[1];
  try {
    {
      Seed s(10);
      values(s);
      s.save("values.seg");
      s.save("truncated.seg", 2048);
      s.save("directory-lock-held.seg", 0, [](std::string& b) { b[128] = 1; });  // Header::lock's word
    }
    {
      Seed s(4);
      s.segment.create_array<std::int64_t>("totals", 20, 5);
      s.segment.create_array<bool>("seen", 3, true);
      s.segment.create_array<float>("weights", 4, 0.5f);
      s.save("arrays.seg");
    }
    {
      Seed s(4);
      auto m = s.segment.create_mutex("m");
      s.segment.create_recursive_mutex("r");
      s.segment.create_condition("cv", m);
      s.segment.create_barrier("b", 3);
      s.save("locks.seg");
      forge::replace_word(s.segment.open_barrier("b").handle(), ObjectKind::barrier, 192, 3, 1000);
      s.save("barrier-parties.seg");
    }
    {
      Seed s(5);
      s.segment.create_semaphore("s", 2);
      s.segment.create_bounded_semaphore("bs", 3);
      s.segment.create_event("e", true);
      auto q = s.segment.create_queue<std::int64_t>("q", 4);
      q.push(1);
      q.push(2);
      s.segment.create_queue<std::string>("qs", 2, 32).push("hello");
      s.save("sync.seg");
    }
    {
      Seed s(2);
      auto v = s.segment.create_vector<std::int64_t>("v", 1024);
      for (int i = 0; i < 10; ++i) v.push_back(i * i);
      auto w = s.segment.create_vector<std::string>("w", 1024);
      w.push_back("a");
      w.push_back("a string longer than the inline buffer of a shared string");
      s.save("vectors.seg");
      forge::send_vector_outside(v);
      s.save("vector-outside.seg");
      forge::misplace_container(forge::container_block(w.handle(), ObjectKind::vector));
      s.save("container-outside.seg");
    }
    {
      Seed s(2);
      auto m = s.segment.create_map<std::int64_t, std::int64_t>("m", 1024);
      for (int i = 0; i < 6; ++i) m.insert_or_assign(i, -i);
      auto n = s.segment.create_map<std::string, std::string>("n", 1024);
      n.insert_or_assign("key", "value");
      n.insert_or_assign("a much longer key than fits inline", "and a value as long as that");
      s.save("maps.seg");
      forge::loop_tree(m);
      s.save("map-loop.seg");
      forge::send_tree_outside(n);
      s.save("map-outside.seg");
    }
    {
      Seed s(2);
      s.segment.create_string("greeting", 1024).store("hello");
      auto poisoned = s.segment.create_vector<std::int64_t>("poisoned", 1024);
      poisoned.push_back(1);
      try {
        auto guard = poisoned.lock();
        throw std::runtime_error("unwinds through the guard: poisons the vector");
      } catch (const std::runtime_error&) {
      }
      s.save("strings.seg");
    }
    {
      Seed s(3);
      auto held = s.segment.create_value<std::int64_t>("held", 1);
      auto plain = s.segment.create_array<std::int64_t>("plain", 2);
      auto flag = s.segment.create_value<bool>("bad-bool", false);
      forge::hold_for_ever(forge::lock_of(held.handle(), ObjectKind::value));
      forge::hold_for_ever(forge::lock_of(plain.handle(), ObjectKind::array));
      reinterpret_cast<unsigned char&>(
          reinterpret_cast<detail::ValueBlock<bool>*>(forge::object_bytes(flag.handle(), ObjectKind::value))->value) = 7;
      s.save("held-locks.seg");
      forge::make_plain(forge::lock_of(plain.handle(), ObjectKind::array));
      s.save("plain-lock.seg");
    }
    std::ofstream(out_dir + "/garbage.seg", std::ios::binary) << std::string("PRCOSHM1 but nothing else that a segment needs");
    std::printf("garbage.seg\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_corpus: %s\n", e.what());
    return 1;
  }
  return 0;
}
