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

    public static func + (a: Self, b: Self) -> Self {
        var r = a
        r.gradientSteps += b.gradientSteps; r.gradientSeconds += b.gradientSeconds; r.gradientBytes += b.gradientBytes
        r.inferencePasses += b.inferencePasses; r.inferenceSeconds += b.inferenceSeconds; r.inferenceBytes += b.inferenceBytes
        return r
    }
    public static func - (a: Self, b: Self) -> Self {
        var r = a
        r.gradientSteps -= b.gradientSteps; r.gradientSeconds -= b.gradientSeconds; r.gradientBytes -= b.gradientBytes
        r.inferencePasses -= b.inferencePasses; r.inferenceSeconds -= b.inferenceSeconds; r.inferenceBytes -= b.inferenceBytes
        return r
    }
}
