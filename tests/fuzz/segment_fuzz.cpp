// libFuzzer target: arbitrary bytes as a segment file, then what `procshare-ctl show`
// does with it (procshare::segment_report, text and JSON: every object listed and every
// value read as text through Segment::value_text).
//
// Requirement checked: every input either opens and reports, or fails with a
// procshare::Error (CorruptSegment for a file that does not hold together; Timeout for a
// lock that stays held; OwnerDied for a poisoned container; see README "Fuzzing"). Any
// other exception, a crash, a hang, or a sanitizer report is a finding.
//
// Built two ways (tests/fuzz/meson.build): with -fsanitize=fuzzer,address,undefined as
// the fuzzer (`bash run.sh fuzz`), and with replay_main.cpp as a plain test that runs
// every file of tests/fuzz/corpus/ (suite unit), so found inputs stay fixed.
#include <procshare/procshare.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

// The segment name this process uses for every input: unique to the process.
const std::string& fuzz_segment_name() {
  static const std::string name = "ps-fuzz-" + std::to_string(::getpid());
  return name;
}

// Writes `data` as the whole file /dev/shm/NAME (mode 0600).
bool write_segment_file(const std::string& name, const std::uint8_t* data, std::size_t size) {
  const std::string path = "/dev/shm/" + name;
  const int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  std::size_t written = 0;
  while (written < size) {
    const ssize_t n = ::write(fd, data + written, size - written);
    if (n <= 0) break;
    written += static_cast<std::size_t>(n);
  }
  ::close(fd);
  return written == size;
}

// Removes the file when the input is done, however it ends (a crash aside: run.sh removes
// /dev/shm/ps-fuzz-PID after the run).
struct RemoveAtEnd {
  ~RemoveAtEnd() { ::unlink(("/dev/shm/" + fuzz_segment_name()).c_str()); }
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // A forged lock word can claim a holder that never lets go: wait 20 ms, not a second,
  // so that such inputs stay cheap (the bound is what is being tested, not its length).
  procshare::detail::set_lock_wait_limits(std::chrono::milliseconds(20),
                                          std::chrono::milliseconds(20));
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string& name = fuzz_segment_name();
  RemoveAtEnd remove;
  if (!write_segment_file(name, data, size)) {
    std::fprintf(stderr, "segment_fuzz: cannot write /dev/shm/%s\n", name.c_str());
    std::abort();
  }
  try {
    auto segment = procshare::Segment::open(name);
    (void)procshare::segment_report(segment, procshare::ReportFormat::text);
    (void)procshare::segment_report(segment, procshare::ReportFormat::json);
  } catch (const procshare::Error&) {
    // The documented outcome for a file that is not a usable segment.
  }
  return 0;
}
