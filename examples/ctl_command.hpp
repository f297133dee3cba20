// How an example tells its user to run the procshare-ctl built beside it
// (build/examples/ctl/): a path relative to the current folder when it lies below it
// (the project folder, for `bash run.sh demo`), else the absolute path; plain
// "procshare-ctl" (from PATH, once installed) when there is none.
#pragma once

#include <filesystem>
#include <string>

inline std::string ctl_command() {
  namespace fs = std::filesystem;
  std::error_code error;
  const fs::path ctl = fs::read_symlink("/proc/self/exe", error).parent_path() / "ctl" / "procshare-ctl";
  if (error || !fs::exists(ctl, error)) return "procshare-ctl";
  const fs::path relative = ctl.lexically_relative(fs::current_path(error));
  if (error || relative.empty() || *relative.begin() == "..") return ctl.string();
  return relative.string();
}
