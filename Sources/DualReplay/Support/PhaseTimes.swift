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
    /// Of the phases above, the seconds a data-parallel run spent gathering chunk gradients and
    /// sharded inference outputs across ranks (0 in one process); not a phase of its own and not
    /// in `total`. Written only when above 0.
    public var communication = 0.0

    public init() {}

    /// Every phase, named as in `results.json`: the one list `total`, `+` and the coding use.
    static let phases: [(name: String, key: WritableKeyPath<PhaseTimes, Double>)] = [
        ("sgd", \.sgd), ("quotaValidation", \.quotaValidation), ("buffer", \.buffer), ("realign", \.realign),
        ("prototypes", \.prototypes), ("router", \.router), ("evaluation", \.evaluation), ("io", \.io),
    ]

    public var total: Double { Self.phases.reduce(0) { $0 + self[keyPath: $1.key] } }

    /// Runs `body`, adding its wall time to `phase`.
    public mutating func time<T>(_ phase: WritableKeyPath<PhaseTimes, Double>, _ body: () throws -> T) rethrows -> T {
        let t0 = WallClock.now()
        defer { self[keyPath: phase] += WallClock.seconds(since: t0) }
        return try body()
    }

    public static func + (a: PhaseTimes, b: PhaseTimes) -> PhaseTimes {
        var r = a
        for p in phases { r[keyPath: p.key] += b[keyPath: p.key] }
        r.communication += b.communication
        return r
    }

    private struct Key: CodingKey {
        var stringValue: String
        init(_ s: String) { stringValue = s }
        init?(stringValue: String) { self.stringValue = stringValue }
        var intValue: Int? { nil }
        init?(intValue: Int) { nil }
    }
    /// The phases and their `total` (written for readers; recomputed, not read, on decoding).
    public func encode(to encoder: Swift.Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        for p in Self.phases { try c.encode(self[keyPath: p.key], forKey: Key(p.name)) }
        try c.encode(total, forKey: Key("total"))
        if communication > 0 { try c.encode(communication, forKey: Key("communication")) }
    }
    public init(from decoder: Swift.Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        for p in Self.phases { self[keyPath: p.key] = try c.decode(Double.self, forKey: Key(p.name)) }
        communication = try c.decodeIfPresent(Double.self, forKey: Key("communication")) ?? 0
    }
}

/// The monotonic clock the phase and communication timers read.
enum WallClock {
    static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }
    static func seconds(since t0: UInt64) -> Double { Double(now() - t0) / 1e9 }
}
