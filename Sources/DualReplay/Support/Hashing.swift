import Foundation

/// FNV-1a, 64 bit, fed in pieces: small and stable across runs and platforms (unlike `Hasher`).
/// The one content hash of the project: protocol hashes, checksums of state files and
/// checkpoints, model fingerprints, per-name random seeds.
public struct FNV1a: Sendable {
    public private(set) var value: UInt64 = 0xCBF2_9CE4_8422_2325

    public init() {}

    mutating func add(_ bytes: UnsafeRawBufferPointer) {
        var h = value
        for b in bytes {
            h ^= UInt64(b)
            h = h &* 0x0000_0100_0000_01B3
        }
        value = h
    }

    public mutating func add(_ data: Data) { data.withUnsafeBytes { add($0) } }

    /// The UTF-8 bytes of `text`.
    public mutating func add(_ text: String) {
        var t = text
        t.withUTF8 { add(UnsafeRawBufferPointer($0)) }
    }

    /// 16 lower-case hex digits.
    public var hex: String {
        let s = String(value, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }

    public static func of(_ text: String) -> UInt64 {
        var h = FNV1a()
        h.add(text)
        return h.value
    }

    public static func hex(of data: Data) -> String {
        var h = FNV1a()
        h.add(data)
        return h.hex
    }
}
