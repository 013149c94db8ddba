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
    /// What the run's collectives moved and their seconds, split into training steps and
    /// inference (data-parallel runs only: chunked or over ranks).
    public var communication: CommunicationStats?
    /// The router's choices after the last domain: [true domain][chosen domain] counts of the eval
    /// examples, indexed like `domains` (nil: no router, or results written before it was recorded).
    public var routerConfusion: [[Int]]?
    /// Training examples and intents of each domain, indexed like `domains` (the head-vs-tail
    /// gap's split; the parameter audit's heads).
    public var trainExamples: [Int]?
    public var intentCounts: [Int]?
    /// Alignment-drift refits (`heads.driftRefitSteps`) after each domain: the domains flagged, kept or not.
    public var gateRefits: [[GateRefit.Outcome]]?

    /// Indices of the domains with more than one intent (nil without `intentCounts`).
    public var multiIntentDomainIndices: Set<Int>? {
        intentCounts.map { counts in Set(counts.indices.filter { counts[$0] > 1 }) }
    }
}

/// A method's summary over the domains with more than one intent: reported next to the one over
/// all domains when some domain has a single intent (whose oracle F1 is trivially 1 and whose
/// routed F1 measures routing alone; docs/METRICS.md).
public struct SubsetSummary: Codable, Sendable {
    /// The domains of the subset (by name; the same in every ordering).
    public var domains: [String]
    public var routed: EvalSummary
    public var oracle: EvalSummary
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
    /// The same figures over the domains with more than one intent, when some domain has one.
    public var multiIntentDomains: SubsetSummary?
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
    /// The base encoder's shape (the report's parameter audit); nil in results written before it.
    public var baseModel: BaseModelShape?
    /// MPI ranks of the job and how they shared it (`data` or `grid`; nil: written before it was
    /// recorded). Not part of the protocol: results do not depend on them.
    public var ranks: Int?
    public var parallel: String?
    /// Set when these are the results so far of an unfinished experiment (`run --interim`).
    public var interim: InterimRuns?

    enum CodingKeys: String, CodingKey {
        case schema, experimentProtocol = "protocol", runs, summaries, jointF1, singleF1, comparisons, createdAt, baseModel, ranks, parallel,
             interim
    }
}

/// What an interim summary holds: the finished runs of a partial file, out of the experiment's.
public struct InterimRuns: Codable, Equatable, Sendable {
    /// Finished runs (references included) and all runs of the config.
    public var finished: Int
    public var total: Int
    /// The runs not finished yet, as "method seed N".
    public var missing: [String]
    /// The protocol hash the partial file was written under; another one than
    /// `protocol.hash` means another build (or threads) of the same config ran them.
    public var partialProtocolHash: String
}

/// Layers, width and weight count of a base encoder.
public struct BaseModelShape: Codable, Equatable, Sendable {
    public var layers: Int
    public var hidden: Int
    public var parameters: Int

    public init(layers: Int, hidden: Int, parameters: Int) {
        self.layers = layers
        self.hidden = hidden
        self.parameters = parameters
    }

    public init(_ w: BertWeights) { self.init(layers: w.config.layers, hidden: w.config.hidden, parameters: w.parameterCount) }
}

extension SubsetSummary {
    /// The summary of `runs` (one method's orderings) over their domains with more than one
    /// intent; nil when a run lacks intent counts or the subset is empty or every domain.
    public static func multiIntentDomains(_ runs: [RunResult]) -> SubsetSummary? {
        guard !runs.isEmpty else { return nil }
        var subsets: [Set<Int>] = []
        for r in runs {
            guard let s = r.multiIntentDomainIndices else { return nil }
            subsets.append(s)
        }
        guard let first = subsets.first, !first.isEmpty, first.count < runs[0].domains.count else { return nil }
        return SubsetSummary(domains: first.sorted().map { runs[0].domains[$0] },
                             routed: .aggregate(runs.map(\.routed), subsets: subsets),
                             oracle: .aggregate(runs.map(\.oracle), subsets: subsets))
    }
}
