// Cluster: what its messages name, shared by the host side (cluster.cpp) and the reports
// (cluster_report.cpp): a URL without its password, a job's or host's name checked, and
// an engine error said again under the job it concerns.
#pragma once

#include <procshare/cluster.hpp>

#include <string>
#include <string_view>

namespace procshare::detail {

// Whether `name` can name a job or a host: 1 to 200 printable characters, no space, '{'
// or '}' (a key's hash tag).
inline bool printable_name(std::string_view name) {
  if (name.empty() || name.size() > 200) return false;
  for (const char c : name)
    if (c <= ' ' || c > '~' || c == '{' || c == '}') return false;
  return true;
}

// The URL as messages show it: parsed (never a password), or, if it does not parse, with
// anything between "//" and '@' that holds a ':' cut to the user.
inline std::string display_url(const std::string& url) {
  try {
    return parse_engine_url(url).text;
  } catch (const Error&) {
    const auto from = url.find("//");
    const auto at = url.rfind('@');
    if (from == std::string::npos || at == std::string::npos || at < from) return url;
    const auto colon = url.find(':', from + 2);
    if (colon == std::string::npos || colon > at) return url;
    return url.substr(0, colon) + ":***" + url.substr(at);
  }
}

// What an error said after its segment and object ("segment 'S': OBJECT: DETAIL"), to
// say it again under another object.
inline std::string detail_of(const Error& e) {
  const std::string text = e.what();
  const auto at = e.object().empty() ? std::string::npos : text.find(e.object() + ": ");
  return at == std::string::npos ? text : text.substr(at + e.object().size() + 2);
}

// Rethrows the engine's error being handled as the same type, with `object` (the job, its
// URL and host) in front of what it said; an error not the engine's is rethrown as it is.
[[noreturn]] inline void rethrow_for(const std::string& object) {
  // (the engine's own "engine 'URL': " prefix is dropped: `object` names the URL too)
  try {
    throw;
  } catch (const AuthFailed& e) {
    throw AuthFailed("", object, detail_of(e));
  } catch (const PermissionDenied& e) {
    throw PermissionDenied("", object, detail_of(e));
  } catch (const EngineUnavailable& e) {
    throw EngineUnavailable("", object, detail_of(e));
  } catch (const InvalidArgument& e) {
    if (e.object() == object) throw;  // (ours already)
    throw InvalidArgument("", object, detail_of(e));
  } catch (const Error& e) {
    if (e.object().rfind("engine '", 0) != 0) throw;  // (not the engine's: already ours)
    throw Error("", object, detail_of(e));
  }
}

}  // namespace procshare::detail
