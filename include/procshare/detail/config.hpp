// Internal: symbol visibility for the library's non-template entities.
// The library is built with hidden visibility; whatever user code must link to is
// marked PROCSHARE_API.
#pragma once

#define PROCSHARE_API __attribute__((visibility("default")))
