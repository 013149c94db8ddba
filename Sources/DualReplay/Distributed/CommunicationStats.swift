import Foundation

/// What a data-parallel run moved between ranks, and the wall seconds it took (`results.json` →
/// `runs[i].communication`, written when the run was split into chunks or over ranks; `make
/// bench-mpi` turns it into the per-step figures of docs/CLUSTER.md).
///
/// The seconds are those of the collectives, waiting included: a rank that finishes its chunks
/// first waits in the gather for the slowest, so on one machine they are mostly load imbalance,
/// on a cluster mostly the link. The bytes are what each rank receives (every rank receives
/// every chunk's output: an all-gather).
public struct CommunicationStats: Codable, Equatable, Sendable {
    /// Training steps whose chunk gradients were gathered.
    public var gradientSteps = 0
    /// Seconds in those steps' collectives (the failure agreement, the gradients' all-gather,
    /// the periodic parameter-hash check).
    public var gradientSeconds = 0.0
    /// Bytes each rank received over those steps (chunk gradients and loss parts, all ranks').
    public var gradientBytes = 0
    /// Inference passes (evaluation, validation, prototypes, stored logits) gathered.
    public var inferencePasses = 0
    public var inferenceSeconds = 0.0
    public var inferenceBytes = 0

    public init() {}

    public var seconds: Double { gradientSeconds + inferenceSeconds }

    private static let counts: [WritableKeyPath<Self, Int>] = [\.gradientSteps, \.gradientBytes, \.inferencePasses, \.inferenceBytes]
    private static let durations: [WritableKeyPath<Self, Double>] = [\.gradientSeconds, \.inferenceSeconds]

    /// Field by field: a + b, or a − b for `sign` −1 (what moved between two readings).
    private static func combine(_ a: Self, _ b: Self, sign: Int) -> Self {
        var r = a
        for k in counts { r[keyPath: k] += sign * b[keyPath: k] }
        for k in durations { r[keyPath: k] += Double(sign) * b[keyPath: k] }
        return r
    }
    public static func + (a: Self, b: Self) -> Self { combine(a, b, sign: 1) }
    public static func - (a: Self, b: Self) -> Self { combine(a, b, sign: -1) }
}
