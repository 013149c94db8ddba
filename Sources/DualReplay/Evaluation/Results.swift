// The results of an experiment: per run, per method, and the protocol they ran under.
import Foundation

/// What one method did on one domain ordering.
public struct RunResult: Codable, Sendable {
    public var method: String
    public var kind: MethodKind
    public var orderingSeed: UInt64
    public var domains: [String]
    /// R[i][j] macro-F1 (0..1) of domain j after training through domain i: routed (no domain
    /// given) and oracle (true domain given).
    public var routed: EvalMatrix
    public var oracle: EvalMatrix
    public var routedAccuracy: EvalMatrix
    public var oracleAccuracy: EvalMatrix
    /// Router accuracy over all seen domains' eval examples after each domain (nil: no router).
    public var routerAccuracy: [Double]?
    /// Validation F1 of every seen domain after each domain (the forgetting signal's source).
    public var validationF1: [[Double]]
    public var ledger: ReplayLedger?
    public var bufferBytesUsed: Int?
    public var trainableParameters: Int
    public var parametersPerNewDomain: Int
    /// Floats of the router's intent prototypes after the last domain (frozen statistics, C per
    /// seen intent; nil when prototype routing is off).
    public var prototypeFloats: Int?
    public var trainSeconds: Double
    public var evalSeconds: Double
    public var trainExamplesPerSecond: Double
    public var latencyP50ms: Double?
    public var latencyP99ms: Double?
    /// Diagnostics (config `diagnostics`): per earlier domain, head vs linear-probe F1 when it
    /// was learned and after the last domain; per domain with multi-intent test rows, fragility.
    public var probes: [ProbeDiagnosis]?
    public var multiIntent: [MultiIntentScore]?
    /// Wall seconds by phase (sequential runs; nil in results written before they were recorded).
    public var timing: PhaseTimes?
}

/// The runs an experiment has finished so far (`<out>/partial.json`): `run --resume` skips them.
public struct PartialResults: Codable, Sendable {
    public static let schema = "dualreplay.partial/1"
    public var schema: String = PartialResults.schema
    /// The protocol hash they belong to: runs of another protocol are never mixed in.
    public var protocolHash: String
    public var runs: [RunResult] = []
    /// `single` references: per ordering seed, per domain F1.
    public var single: [UInt64: [String: Double]] = [:]

    public init(protocolHash: String) { self.protocolHash = protocolHash }

    func run(_ method: String, seed: UInt64) -> RunResult? { runs.first { $0.method == method && $0.orderingSeed == seed } }
}

/// Mean ± std over orderings of one method.
public struct MethodSummary: Codable, Sendable {
    public var method: String
    public var kind: MethodKind
    public var routed: EvalSummary
    public var oracle: EvalSummary
    public var routerAccuracy: MeanStd?
    public var trainableParameters: Int
    public var parametersPerNewDomain: Int
    public var latencyP99ms: Double?
    public var trainSeconds: MeanStd
    public var evalSeconds: MeanStd
}

public struct ExperimentProtocol: Codable, Sendable {
    public var config: ExperimentConfig
    public var dataFingerprint: String
    public var domainNames: [String]
    public var byteBudget: Int
    public var codeVersion: String
    public var modelFingerprint: String
    public var threads: Int
    /// FNV-1a 64 of the canonical JSON of everything above: two results with the same hash ran
    /// the same protocol.
    public var hash: String
}

public struct ExperimentResults: Codable, Sendable {
    public static let schema = "dualreplay.results/1"
    public var schema: String = ExperimentResults.schema
    public var experimentProtocol: ExperimentProtocol
    public var runs: [RunResult]
    public var summaries: [MethodSummary]
    /// Per-domain F1 of the references, averaged over orderings (oracle mode).
    public var jointF1: [String: Double]?
    public var singleF1: [String: Double]?
    /// Each Dual-Replay method against each baseline, paired by ordering (`PairedComparison`).
    public var comparisons: [PairedComparison]?
    public var createdAt: String

    enum CodingKeys: String, CodingKey {
        case schema, experimentProtocol = "protocol", runs, summaries, jointF1, singleF1, comparisons, createdAt
    }
}
