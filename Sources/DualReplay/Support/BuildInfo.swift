import CKernels

/// What the binary knows about the source it was built from.
public enum BuildInfo {
    /// `git describe --always --dirty` of the checkout at build time (`make` embeds it through
    /// CKernels/src/dr_build_version.h), or "unknown" for a build without it. It never depends on
    /// the working directory a run starts in.
    public static let codeVersion = String(cString: dr_build_version())
}
