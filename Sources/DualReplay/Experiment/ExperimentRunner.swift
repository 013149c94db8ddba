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
        trainer.progress = collective.rank == 0 ? progress : { _ in }
        trainer.loop.shouldStop = shouldStop
        trainer.loop.afterStep = afterStep
        return MethodRun(trainer: trainer, config: config, order: order, seed: seed, byteBudget: byteBudget, generalTexts: generalTexts)
    }

    /// The ranks this experiment runs on (`SingleProcess` unless started by an MPI launcher) and
    /// how they share it (`parallel`, default: the config's, else data-parallel). Only rank 0
    /// reports progress and sees `onRunFinished`.
    public var collective: Collective = SingleProcess()
    public var parallel: ParallelMode?

    /// One unit of the grid: a reference or a method on one ordering.
    struct GridTask {
        var settings: MethodSettings
        var seed: UInt64
        var isReference: Bool
        /// "ordering k/n (seed s)" for methods, "ordering seed s" for references.
        var what: String
    }

    /// What a unit produced: a run (joint references and methods) or a `single` reference.
    enum GridOutcome: Codable {
        case run(RunResult)
        case single(seed: UInt64, f1: [String: Double])
    }

    /// Every unit, in the order a one-process run does them: each reference over the orderings,
    /// then each method over the orderings.
    func gridTasks() throws -> [GridTask] {
        let seeds = config.resolvedOrderingSeeds
        var tasks: [GridTask] = []
        for ref in config.references ?? [] {
            let s = try MethodSettings.resolve(ref, training: training)
            tasks += seeds.map { GridTask(settings: s, seed: $0, isReference: true, what: "ordering seed \($0)") }
        }
        for m in config.methods {
            let s = try MethodSettings.resolve(m, training: training)
            tasks += seeds.enumerated().map { k, seed in
                GridTask(settings: s, seed: seed, isReference: false, what: "ordering \(k + 1)/\(seeds.count) (seed \(seed))")
            }
        }
        return tasks
    }

    /// The number of units of `config`'s grid: every method and reference on every ordering.
    public static func gridRunCount(_ config: ExperimentConfig) -> Int {
        (config.methods.count + (config.references?.count ?? 0)) * config.resolvedOrderingSeeds.count
    }

    /// The unit's outcome from finished runs of the same protocol, if there is one.
    func reused(_ t: GridTask, from p: PartialResults?) -> GridOutcome? {
        guard let p else { return nil }
        if t.settings.kind == .single { return p.single[t.seed].map { .single(seed: t.seed, f1: $0) } }
        return p.run(t.settings.name, seed: t.seed).map { .run($0) }
    }

    func execute(_ t: GridTask) throws -> GridOutcome {
        let order = scenario.ordering(seed: t.seed)
        if t.isReference {
            let run = methodRun(t.settings, order: order, seed: t.seed)
            return t.settings.kind == .joint ? .run(try run.joint()) : .single(seed: t.seed, f1: try run.single())
        }
        say("== \(t.settings.name): \(t.what)")
        return .run(try methodRun(t.settings, order: order, seed: t.seed).sequential())
    }

    func say(_ s: String) { if collective.rank == 0 { progress(s) } }

    public func run() throws -> ExperimentResults {
        let proto = makeProtocol()
        let tasks = try gridTasks()
        var partial = PartialResults(protocolHash: proto.hash)
        let reuse = resumeFrom?.protocolHash == proto.hash ? resumeFrom : nil
        var outcomes = [GridOutcome?](repeating: nil, count: tasks.count)
        func record(_ o: GridOutcome) {
            switch o {
            case .run(let r): partial.runs.append(r)
            case let .single(seed, f1): partial.single[seed] = f1
            }
        }
        let mode = parallel ?? config.parallel ?? .data
        if collective.size > 1 {
            try checkSameProtocol(proto)
        }
        if collective.size > 1 && mode == .grid {
            guard collective.size <= tasks.count else {
                throw JobError.tooManyRanks(ranks: collective.size, units: tasks.count, what: "runs in this experiment's grid")
            }
            try runGrid(tasks, reuse: reuse, outcomes: &outcomes, record: record, save: { try onRunFinished?(partial) })
        } else {
            // one process, or data-parallel: every rank runs every unit together (the models'
            // `ChunkedReduction` shares each batch), rank 0 saves
            for (i, t) in tasks.enumerated() {
                let o: GridOutcome
                if let done = reused(t, from: reuse) {
                    say("== \(t.settings.name): \(t.what) reused from the partial results")
                    o = done
                } else {
                    o = try execute(t)
                }
                record(o)
                let t0 = Date()
                try collective.agree { if collective.rank == 0 { try onRunFinished?(partial) } }
                if case .run(var r) = o, !t.isReference, reused(t, from: reuse) == nil {
                    r.timing?.io = Date().timeIntervalSince(t0)  // saving the partial results
                    outcomes[i] = .run(r)
                } else {
                    outcomes[i] = o
                }
            }
        }
        return assemble(tasks, outcomes: outcomes.map { $0! }, protocol: proto)
    }

    /// The results so far of an unfinished experiment: its finished runs in `partial` (matched
    /// to the config's runs by method name and ordering seed, whatever build wrote them), with
    /// their summaries and paired tests, as `run` would lay them out; nothing is trained. A method
    /// with no finished run is left out; the paired tests pair the orderings both methods finished.
    public func interim(_ partial: PartialResults) throws -> ExperimentResults {
        let tasks = try gridTasks()
        var kept: [GridTask] = [], outcomes: [GridOutcome] = [], missing: [String] = []
        for t in tasks {
            if let o = reused(t, from: partial) { kept.append(t); outcomes.append(o) } else { missing.append("\(t.settings.name) seed \(t.seed)") }
        }
        var r = assemble(kept, outcomes: outcomes, protocol: makeProtocol())
        r.interim = InterimRuns(finished: kept.count, total: tasks.count, missing: missing, partialProtocolHash: partial.protocolHash)
        return r
    }

    /// Every rank must run the same experiment: same config, data, model, code and threads.
    func checkSameProtocol(_ proto: ExperimentProtocol) throws {
        let mine = UInt64(proto.hash, radix: 16) ?? 0
        let all = try collective.allGather(mine)
        if let r = all.firstIndex(where: { $0 != all[0] }) {
            func hex(_ v: UInt64) -> String { let s = String(v, radix: 16); return String(repeating: "0", count: 16 - s.count) + s }
            throw JobError.protocolMismatch(rank: r, hash: hex(all[r]), rootHash: hex(all[0]))
        }
    }

    /// What one rank reports after a grid round: the unit it finished, or why it did not.
    struct GridReport: Codable {
        var task: Int?
        var outcome: GridOutcome?
        var failure: String?
        var interrupted: Interruption?
        struct Interruption: Codable { var domain: String; var step: Int; var total: Int }
    }

    /// The grid over the ranks, in rounds: in round k rank r runs the (k·size + r)-th unfinished
    /// unit (whole runs, with its own threads), then every rank gets every rank's result and rank
    /// 0 saves them (`onRunFinished`), so a killed job loses at most one round. A unit that
    /// failed or was interrupted on any rank ends the job on every rank after the round.
    func runGrid(_ tasks: [GridTask], reuse: PartialResults?, outcomes: inout [GridOutcome?], record: (GridOutcome) -> Void,
                 save: () throws -> Void) throws {
        var pending: [Int] = []
        for (i, t) in tasks.enumerated() {
            if let done = reused(t, from: reuse) {
                outcomes[i] = done
                record(done)
            } else {
                pending.append(i)
            }
        }
        let n = collective.size, rank = collective.rank
        if pending.count < tasks.count { say("== grid: \(tasks.count - pending.count) of \(tasks.count) runs reused from the partial results") }
        let rounds = (pending.count + n - 1) / n
        say("== grid: \(pending.count) runs over \(n) ranks in \(rounds) rounds")
        let enc = JSONEncoder(), dec = JSONDecoder()
        for k in 0..<rounds {
            var report = GridReport()
            let slot = k * n + rank
            if slot < pending.count {
                let i = pending[slot]
                report.task = i
                do {
                    report.outcome = try execute(tasks[i])
                } catch RunnerError.interrupted(let d, let step, let total) {
                    report.interrupted = .init(domain: d, step: step, total: total)
                } catch {
                    report.failure = Self.message(error)
                }
            }
            try collective.waitForAll()
            let reports = try collective.allGatherBytes(Array(try enc.encode(report))).map { try dec.decode(GridReport.self, from: Data($0)) }
            var done: [String] = []
            for (r, rep) in reports.enumerated() {
                guard let i = rep.task, let o = rep.outcome else { continue }
                outcomes[i] = o
                record(o)
                done.append("\(tasks[i].settings.name) seed \(tasks[i].seed) (rank \(r))")
            }
            say("== grid round \(k + 1)/\(rounds): " + (done.isEmpty ? "nothing finished" : done.joined(separator: ", ")))
            try collective.agree { if rank == 0 { try save() } }
            if let r = reports.firstIndex(where: { $0.failure != nil }) {
                throw JobError.rankFailed(rank: r, size: n, message: reports[r].failure!)
            }
            if let s = reports.compactMap(\.interrupted).first {
                throw RunnerError.interrupted(domain: s.domain, step: s.step, total: s.total)
            }
        }
    }

    static func message(_ error: Error) -> String {
        let s = error.localizedDescription
        return s.isEmpty ? "\(error)" : s
    }

    /// The results of the finished units, laid out as a one-process run lays them out.
    func assemble(_ tasks: [GridTask], outcomes: [GridOutcome], protocol proto: ExperimentProtocol) -> ExperimentResults {
        var runs: [RunResult] = []
        var jointF1: [String: [Double]] = [:], singleF1: [String: [Double]] = [:]
        for (t, o) in zip(tasks, outcomes) where t.isReference {
            switch o {
            case .run(let r):
                runs.append(r)
                for (j, name) in r.domains.enumerated() { jointF1[name, default: []].append(r.oracle.f1[r.domains.count - 1][j]) }
            case .single(_, let f1):
                for (name, f) in f1 { singleF1[name, default: []].append(f) }
            }
        }
        let mean = { (d: [String: [Double]]) in d.isEmpty ? nil : d.mapValues { $0.reduce(0, +) / Double($0.count) } }
        let joint = mean(jointF1), single = mean(singleF1)
        var methods: [MethodSettings] = []
        for (t, o) in zip(tasks, outcomes) where !t.isReference {
            if case .run(let r) = o { runs.append(r) }
            if !methods.contains(where: { $0.name == t.settings.name }) { methods.append(t.settings) }
        }
        let summaries = methods.map { s in MethodSummary(s, runs: runs.filter { $0.method == s.name }, single: single, joint: joint) }
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
        var c = config
        c.parallel = nil  // how ranks and threads share the work never changes results
        c.training?.parallelInference = nil
        var p = ExperimentProtocol(config: c, dataFingerprint: scenario.contentFingerprint, domainNames: scenario.domainNames,
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
