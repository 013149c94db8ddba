import Foundation

/// Wall seconds of one run, split by phase (`results.json` → `runs[i].timing`; `make bench-job`
/// sets them against the PyTorch reference's). Phases do not overlap; `total` is their sum.
public struct PhaseTimes: Codable, Equatable, Sendable {
    /// Training steps: forward, losses, backward, optimizer, replay draws.
    public var sgd = 0.0
    /// Every seen domain's validation F1 after each domain (the buffer quotas' forgetting signal).
    public var quotaValidation = 0.0
    /// Storing the new domain in the buffers (with its logits when the method replays them).
    public var buffer = 0.0
    /// Head realignment of earlier domains (`realignHeadSteps`).
    public var realign = 0.0
    /// Intent prototypes of the new domain (its frozen router features).
    public var prototypes = 0.0
    /// Router training (features of the buffered examples, then the MLP's epochs).
    public var router = 0.0
    /// Routed and oracle R-matrix rows, diagnostics and the latency sample.
    public var evaluation = 0.0
    /// Saving the partial results after the run.
    public var io = 0.0

    public init() {}

    public var total: Double { sgd + quotaValidation + buffer + realign + prototypes + router + evaluation + io }

    /// Runs `body`, adding its wall time to `phase`.
    public mutating func time<T>(_ phase: WritableKeyPath<PhaseTimes, Double>, _ body: () throws -> T) rethrows -> T {
        let t0 = DispatchTime.now().uptimeNanoseconds
        defer { self[keyPath: phase] += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9 }
        return try body()
    }

    public static func + (a: PhaseTimes, b: PhaseTimes) -> PhaseTimes {
        var r = a
        r.sgd += b.sgd; r.quotaValidation += b.quotaValidation; r.buffer += b.buffer; r.realign += b.realign
        r.prototypes += b.prototypes; r.router += b.router; r.evaluation += b.evaluation; r.io += b.io
        return r
    }

    enum CodingKeys: String, CodingKey { case sgd, quotaValidation, buffer, realign, prototypes, router, evaluation, io, total }
    public func encode(to encoder: Swift.Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(sgd, forKey: .sgd); try c.encode(quotaValidation, forKey: .quotaValidation); try c.encode(buffer, forKey: .buffer)
        try c.encode(realign, forKey: .realign); try c.encode(prototypes, forKey: .prototypes); try c.encode(router, forKey: .router)
        try c.encode(evaluation, forKey: .evaluation); try c.encode(io, forKey: .io); try c.encode(total, forKey: .total)
    }
    public init(from decoder: Swift.Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        sgd = try c.decode(Double.self, forKey: .sgd); quotaValidation = try c.decode(Double.self, forKey: .quotaValidation)
        buffer = try c.decode(Double.self, forKey: .buffer); realign = try c.decode(Double.self, forKey: .realign)
        prototypes = try c.decode(Double.self, forKey: .prototypes); router = try c.decode(Double.self, forKey: .router)
        evaluation = try c.decode(Double.self, forKey: .evaluation); io = try c.decode(Double.self, forKey: .io)
    }
}
