// The one random generator of the project, and the draws written out on top of it so that a
// sequence is fixed by this code, not by the standard library.
import Foundation

/// SplitMix64 (Steele, Lea & Flood, 2014). Its whole state is one `UInt64`, so a checkpoint can save
/// and restore it exactly. Every random draw (initialisation, data, synthetic corpora, replay,
/// dropout) goes through it, never `SystemRandomNumberGenerator`, so runs are reproducible from a seed.
public struct SplitMix64: RandomNumberGenerator, Codable, Hashable, Sendable {
    public var state: UInt64

    public init(seed: UInt64) { state = seed }

    /// An independent stream derived from a seed and a stream number (e.g. one per domain), so that
    /// adding a domain does not shift the random numbers of the others.
    public init(seed: UInt64, stream: UInt64) {
        state = SplitMix64.mix(seed ^ SplitMix64.mix(stream &+ 0x632B_E59B_D9B4_E019))
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        return SplitMix64.mix(state)
    }

    /// The SplitMix64 output function, also a good 64-bit hash finaliser.
    public static func mix(_ x: UInt64) -> UInt64 {
        var z = x
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1) from the top 24 bits.
    public mutating func nextUnit() -> Float { Float(next() >> 40) * (1.0 / Float(1 << 24)) }
    /// Uniform in [-1, 1).
    public mutating func nextSigned() -> Float { 2 * nextUnit() - 1 }
    /// Standard normal (Box-Muller).
    public mutating func nextGaussian() -> Float {
        let u1 = max(Double(next() >> 11) * 0x1.0p-53, 1e-300), u2 = Double(next() >> 11) * 0x1.0p-53
        return Float((-2 * log(u1)).squareRoot() * cos(2 * .pi * u2))
    }
}

extension RandomNumberGenerator {
    /// A uniform integer in `0..<n` by Lemire's multiply-shift with rejection. Written out here (not
    /// `Int.random(in:using:)`) so the sequence is fixed by this code, not by the standard library.
    public mutating func stableIndex(below n: Int) -> Int {
        precondition(n > 0, "stableIndex(below:) needs n > 0")
        let bound = UInt64(n)
        var product = next().multipliedFullWidth(by: bound)
        if product.low < bound {
            let threshold = (0 &- bound) % bound
            while product.low < threshold { product = next().multipliedFullWidth(by: bound) }
        }
        return Int(product.high)
    }

    /// A uniform double in [0, 1) from the top 53 bits.
    public mutating func stableUnit() -> Double {
        Double(next() >> 11) * 0x1.0p-53
    }
}

extension Array {
    /// All elements when there are at most `cap` (or no cap), else a fixed random `cap` of them:
    /// the same subset for the same `seed`, so every method and ordering sees the same rows.
    public func fixedSubset(atMost cap: Int?, seed: UInt64) -> [Element] {
        guard let cap, count > cap else { return self }
        var rng = SplitMix64(seed: seed)
        return Array(shuffled(using: &rng).prefix(cap))
    }
}

extension MutableCollection where Self: RandomAccessCollection, Index == Int {
    /// Fisher-Yates shuffle with `stableIndex(below:)`: the same permutation for the same generator state.
    public mutating func stableShuffle<G: RandomNumberGenerator>(using rng: inout G) {
        guard count > 1 else { return }
        var i = endIndex - 1
        while i > startIndex {
            let j = startIndex + rng.stableIndex(below: i - startIndex + 1)
            if i != j { swapAt(i, j) }
            i -= 1
        }
    }
}
