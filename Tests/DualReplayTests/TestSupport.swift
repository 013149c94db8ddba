import Foundation
import Testing

/// Where the tests find shared material. Environment variables win (the Makefile exports them);
/// otherwise paths are resolved from this file, so `swift test` works from any directory.
enum TestPaths {
    static let packageRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    private static func resolve(_ env: String, default rel: String) -> URL {
        if let v = ProcessInfo.processInfo.environment[env], !v.isEmpty {
            return v.hasPrefix("/") ? URL(fileURLWithPath: v) : packageRoot.appendingPathComponent(v)
        }
        return packageRoot.appendingPathComponent(rel)
    }

    /// The default encoder, installed by `make setup`.
    static var model: URL { resolve("DR_MODEL", default: "models/all-MiniLM-L6-v2") }
    /// Reference outputs of the original model (../shared/fixtures).
    static var fixtures: URL { resolve("DR_FIXTURES", default: "../shared/fixtures") }
    /// The staged public data sets (../shared/data).
    static var data: URL { resolve("DR_DATA", default: "../shared/data") }

    /// A required file: its absence is a test failure, never a silent skip.
    static func require(_ url: URL, sourceLocation: SourceLocation = #_sourceLocation) throws -> URL {
        guard FileManager.default.fileExists(atPath: url.path) else {
            Issue.record("missing \(url.path): run `make setup` (model) or provide ../shared", sourceLocation: sourceLocation)
            throw CocoaError(.fileNoSuchFile)
        }
        return url
    }

    /// One directory per test process holding every `tempDir`; removed when the process exits,
    /// so tests that stop early (or forget) leave nothing behind.
    static let temporaryRoot: URL = {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("dr-tests-\(getpid())-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        atexit { try? FileManager.default.removeItem(at: TestPaths.temporaryRoot) }
        return root
    }()

    /// A fresh temporary directory (inside `temporaryRoot`; callers may remove it earlier).
    static func tempDir() throws -> URL {
        let d = temporaryRoot.appendingPathComponent("dr-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
        return d
    }
}

/// Deterministic pseudo-random numbers for tests (SplitMix64).
struct SeededRandom: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func float(_ lo: Float = -1, _ hi: Float = 1) -> Float { Float.random(in: lo..<hi, using: &self) }
    mutating func floats(_ n: Int, _ lo: Float = -1, _ hi: Float = 1) -> [Float] { (0..<n).map { _ in float(lo, hi) } }
}
