// Internal: flushing the standard streams around fork(). A forked child inherits its
// parent's unwritten stdio and iostream buffers, and a child that leaves with _exit()
// drops its own: so the parent flushes before it forks (nothing printed twice) and a child
// flushes before it exits (nothing lost), and pool workers after each task (lines show up
// even if the pool is terminated). Used by process.cpp and the pool's fork sites.
#pragma once

#include <cstdio>
#include <iostream>

namespace procshare::detail {

// Flushes std::cout, std::cerr and std::clog (their own buffers, when
// sync_with_stdio(false)), then every C stream (stdout, stderr, open FILEs). Never throws.
inline void flush_standard_streams() noexcept {
  try {
    std::cout.flush();
    std::cerr.flush();
    std::clog.flush();
  } catch (...) {  // a stream whose exceptions() mask asks for it: nothing more to do
  }
  std::fflush(nullptr);
}

}  // namespace procshare::detail
