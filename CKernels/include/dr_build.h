// dr_build.h — what the binary knows about the source it was built from.
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

// `git describe --always --dirty` of the checkout at build time (written by `make` into
// src/dr_build_version.h, which git ignores), or "unknown" for a build without it.
const char *dr_build_version(void);

#ifdef __cplusplus
}
#endif
