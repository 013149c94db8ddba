// The code version embedded at build time. `make` (target `version`) writes dr_build_version.h
// next to this file from `git describe --always --dirty` and touches this file when it changes;
// a build without it (plain `swift build`, a tarball without git) says "unknown".
#include "dr_build.h"

#if defined(__has_include)
#if __has_include("dr_build_version.h")
#include "dr_build_version.h"
#endif
#endif

#ifndef DR_BUILD_VERSION
#define DR_BUILD_VERSION "unknown"
#endif

const char *dr_build_version(void) { return DR_BUILD_VERSION; }
