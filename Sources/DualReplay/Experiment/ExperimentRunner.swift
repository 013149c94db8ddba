import CKernels
import Foundation

/// Runs an experiment: every method over every domain ordering, plus the joint and single
/// references, and summarises them. It only orchestrates: one (method, ordering) run is a
/// `MethodRun`, which drives a `DomainTrainer` and an `Evaluator`. Library code: progress goes to
/// the `progress` callback, never to stdout.
public final class ExperimentRunner {
    public let config: ExperimentConfig
    public let scenario: Scenario
    public let encoder: SentenceEncoder
    public let generalTexts: [String]
    public let codeVersion: String
    public var progress: (String) -> Void = { _ in }
    /// Polled after every training step (Ctrl-C): the run stops with `RunnerError.interrupted`.
    public var shouldStop: () -> Bool = { false }
    /// Sees every training phase's step count after each step (crash tests).
    public var afterStep: ((Int) -> Void)?
    /// Finished runs to reuse (`run --resume`; only if their protocol hash is this experiment's),
    /// and a callback that gets the finished runs after each one (to save them).
    public var resumeFrom: PartialResults?
    public var onRunFinished: ((PartialResults) throws -> Void)?

    let training: TrainingDefaults
    let tokens: TokenCache
    /// One byte budget for every method with replay.
    public let byteBudget: Int

    public init(config: ExperimentConfig, scenario: Scenario, encoder: SentenceEncoder, generalTexts: [String], codeVersion: String) {
        self.config = config
        self.scenario = scenario
        self.encoder = encoder
        self.generalTexts = generalTexts
        self.codeVersion = codeVersion
        training = config.training ?? TrainingDefaults()
        tokens = TokenCache(tokenizer: encoder.tokenizer, maxLength: training.maxLength)
        byteBudget = ByteBudget.resolve(bytes: training.bufferBytes, examples: training.bufferExamples,
                                        meanOf: scenario.domains.flatMap { [tokens] in tokens.ids($0.train.map(\.text)) })
    }

    func methodRun(_ s: MethodSettings, order: Scenario, seed: UInt64) -> MethodRun {
        let trainer = DomainTrainer(settings: s, training: training, encoder: encoder, tokens: tokens)
        trainer.progress = progress
        trainer.loop.shouldStop = shouldStop
        trainer.loop.afterStep = afterStep
        return MethodRun(trainer: trainer, config: config, order: order, seed: seed, byteBudget: byteBudget, generalTexts: generalTexts)
    }

    public func run() throws -> ExperimentResults {
        let seeds = config.resolvedOrderingSeeds
        var runs: [RunResult] = []
        var jointF1: [String: [Double]] = [:], singleF1: [String: [Double]] = [:]
        let proto = makeProtocol()
        var partial = PartialResults(protocolHash: proto.hash)
        let reuse = resumeFrom?.protocolHash == proto.hash ? resumeFrom : nil
        func finished(_ r: RunResult?) throws {
            if let r { partial.runs.append(r) }
            try onRunFinished?(partial)
        }
        func reused(_ name: String, _ what: String) { progress("== \(name): \(what) reused from the partial results") }
        for ref in config.references ?? [] {
            let s = try MethodSettings.resolve(ref, training: training)
            for seed in seeds {
                let run = methodRun(s, order: scenario.ordering(seed: seed), seed: seed)
                if s.kind == .joint {
                    let r: RunResult
                    if let done = reuse?.run(s.name, seed: seed) { reused(s.name, "ordering seed \(seed)"); r = done } else { r = try run.joint() }
                    runs.append(r)
                    try finished(r)
                    for (j, name) in r.domains.enumerated() { jointF1[name, default: []].append(r.oracle.f1[r.domains.count - 1][j]) }
                } else {
                    let r: [String: Double]
                    if let done = reuse?.single[seed] { reused(s.name, "ordering seed \(seed)"); r = done } else { r = try run.single() }
                    partial.single[seed] = r
                    try finished(nil)
                    for (name, f) in r { singleF1[name, default: []].append(f) }
                }
            }
        }
        let mean = { (d: [String: [Double]]) in d.isEmpty ? nil : d.mapValues { $0.reduce(0, +) / Double($0.count) } }
        let joint = mean(jointF1), single = mean(singleF1)
        var summaries: [MethodSummary] = []
        for m in config.methods {
            let s = try MethodSettings.resolve(m, training: training)
            for (k, seed) in seeds.enumerated() {
                let what = "ordering \(k + 1)/\(seeds.count) (seed \(seed))"
                if let done = reuse?.run(s.name, seed: seed) {
                    reused(s.name, what)
                    runs.append(done)
                    try finished(done)
                    continue
                }
                progress("== \(s.name): \(what)")
                var r = try methodRun(s, order: scenario.ordering(seed: seed), seed: seed).sequential()
                let t0 = Date()
                try finished(r)
                r.timing?.io = Date().timeIntervalSince(t0)
                runs.append(r)
            }
            summaries.append(MethodSummary(s, runs: runs.filter { $0.method == s.name }, single: single, joint: joint))
        }
        let iso = ISO8601DateFormatter().string(from: Date())
        return ExperimentResults(experimentProtocol: proto, runs: runs, summaries: summaries, jointF1: joint, singleF1: single,
                                 comparisons: Self.comparisons(summaries.map(\.method), kinds: summaries.map(\.kind), runs: runs), createdAt: iso)
    }

    /// Every Dual-Replay method against every other method (with no Dual-Replay method: the first
    /// method against the others), paired by ordering seed.
    static func comparisons(_ methods: [String], kinds: [MethodKind], runs: [RunResult]) -> [PairedComparison]? {
        var ours = zip(methods, kinds).filter { $0.1 == .dualReplay }.map(\.0)
        if ours.isEmpty, let first = methods.first { ours = [first] }
        var out: [PairedComparison] = []
        for m in ours {
            for b in methods where !ours.contains(b) {
                out += PairedComparison.compare(runs.filter { $0.method == m }, against: runs.filter { $0.method == b })
            }
        }
        return out.isEmpty ? nil : out
    }

    public func makeProtocol() -> ExperimentProtocol {
        var p = ExperimentProtocol(config: config, dataFingerprint: scenario.contentFingerprint, domainNames: scenario.domainNames,
                                   byteBudget: byteBudget, codeVersion: codeVersion, modelFingerprint: encoder.weights.fingerprint(),
                                   threads: Int(dr_blas_get_threads()), hash: "")
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        p.hash = FNV1a.hex(of: (try? enc.encode(p)) ?? Data())
        return p
    }
}

extension MethodSummary {
    /// Mean ± std over the method's runs (one per ordering).
    init(_ s: MethodSettings, runs rs: [RunResult], single: [String: Double]?, joint: [String: Double]?) {
        self.init(method: s.name, kind: s.kind,
                  routed: EvalSummary.aggregate(rs.map(\.routed), single: single, joint: joint),
                  oracle: EvalSummary.aggregate(rs.map(\.oracle), single: single, joint: joint),
                  routerAccuracy: rs.first?.routerAccuracy == nil ? nil : MeanStd(rs.compactMap { $0.routerAccuracy?.last }),
                  trainableParameters: rs.first?.trainableParameters ?? 0,
                  parametersPerNewDomain: rs.first?.parametersPerNewDomain ?? 0,
                  latencyP99ms: rs.compactMap(\.latencyP99ms).max(),
                  trainSeconds: MeanStd(rs.map(\.trainSeconds)), evalSeconds: MeanStd(rs.map(\.evalSeconds)))
        multiIntentDomains = SubsetSummary.multiIntentDomains(rs)
    }
}
