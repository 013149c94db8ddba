import CKernels
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
    public var createdAt: String

    enum CodingKeys: String, CodingKey {
        case schema, experimentProtocol = "protocol", runs, summaries, jointF1, singleF1, createdAt
    }
}

public enum RunnerError: LocalizedError, Equatable {
    case data(String)
    /// A stop was requested (Ctrl-C); a checkpoint of this step was written when checkpointing is on.
    case interrupted(domain: String, step: Int, total: Int)
    /// A checkpoint does not fit the training it should continue.
    case checkpointMismatch(String)
    public var errorDescription: String? {
        switch self {
        case .data(let s): return s
        case let .interrupted(d, s, t): return "interrupted while training domain \"\(d)\" at step \(s)/\(t)"
        case .checkpointMismatch(let s): return s
        }
    }
}

/// Where a training phase (one domain's epochs) stands after a step: with the parameter store's
/// three arrays, enough to continue it bit for bit (`ExperimentRunner.pendingResume`).
public struct PhaseProgress: Codable, Equatable, Sendable {
    /// 0-based epoch of the next batch, and the index into `order` of its first new example.
    public var epoch: Int
    public var next: Int
    /// Steps done and examples (new + replay) seen in this phase; steps in the whole phase.
    public var step: Int
    public var seen: Int
    public var total: Int
    /// This epoch's example order.
    public var order: [Int]
    /// The training generator, the model's optimizer step counter and its generator.
    public var rng: UInt64
    public var modelOptimizerStep: Int
    public var modelRNG: UInt64
}

/// A phase checkpoint: progress and the parameter store (values, both AdamW moments).
public struct PhaseCheckpoint: Sendable {
    public var progress: PhaseProgress
    public var values: [Float]
    public var moment1: [Float]
    public var moment2: [Float]

    public init(progress: PhaseProgress, values: [Float], moment1: [Float], moment2: [Float]) {
        self.progress = progress
        self.values = values
        self.moment1 = moment1
        self.moment2 = moment2
    }
}

/// Runs an experiment: every method over every ordering, evaluating after each domain.
/// Library code: progress goes to the `progress` callback, never to stdout.
public final class ExperimentRunner {
    public let config: ExperimentConfig
    public let scenario: Scenario
    public let encoder: SentenceEncoder
    public let generalTexts: [String]
    public let codeVersion: String
    public var progress: (String) -> Void = { _ in }

    // Checkpointing inside a domain (see `PhaseCheckpoint`): `onCheckpoint` gets a checkpoint every
    // `checkpointEvery` steps (0: never) and when a stop is requested; `shouldStop` is polled after
    // every step (Ctrl-C); `afterStep` sees the phase's step count (crash tests). `pendingResume`
    // is consumed by the next training phase, which continues from it instead of starting over.
    public var checkpointEvery = 0
    public var onCheckpoint: ((PhaseCheckpoint) throws -> Void)?
    public var shouldStop: () -> Bool = { false }
    public var afterStep: ((Int) -> Void)?
    public var pendingResume: PhaseCheckpoint?

    let training: TrainingDefaults
    private var idsCache: [String: [Int32]] = [:]
    private var frozenPooledCache: [[Int32]: [Float]] = [:]
    public private(set) var byteBudget = 0

    public init(config: ExperimentConfig, scenario: Scenario, encoder: SentenceEncoder, generalTexts: [String], codeVersion: String) {
        self.config = config
        self.scenario = scenario
        self.encoder = encoder
        self.generalTexts = generalTexts
        self.codeVersion = codeVersion
        training = config.training ?? TrainingDefaults()
        // one byte budget for every method: stored ids + label + domain + overhead per example
        if let b = training.bufferBytes {
            byteBudget = b
        } else {
            var total = 0, n = 0
            for d in scenario.domains { for e in d.train { total += ids(e.text).count; n += 1 } }
            let meanBytes = 4 * Double(total) / Double(max(n, 1)) + 8 + Double(ReplayItem.overheadBytes)
            byteBudget = Int((Double(training.bufferExamples) * meanBytes).rounded())
        }
    }

    func ids(_ text: String) -> [Int32] {
        if let c = idsCache[text] { return c }
        var t = encoder.tokenizer.encode(text)
        if t.count > training.maxLength { t = Array(t.prefix(training.maxLength - 1)) + [encoder.tokenizer.sepId] }
        idsCache[text] = t
        return t
    }

    /// Mean-pooled output of the frozen encoder: the general stream's anchoring target. It is a
    /// function of the stored token ids and the frozen base, so it is recomputed (and cached),
    /// not stored in the buffer.
    func frozenPooled(_ seqs: [[Int32]]) -> [[Float]] {
        let missing = seqs.filter { frozenPooledCache[$0] == nil }
        let C = encoder.config.hidden
        var start = 0
        while start < missing.count {
            let chunk = Array(missing[start..<min(missing.count, start + 64)])
            let pooled = encoder.forward(PackedBatch(chunk)).meanPooled()
            for (i, s) in chunk.enumerated() { frozenPooledCache[s] = Array(pooled[(i * C)..<((i + 1) * C)]) }
            start += chunk.count
        }
        return seqs.map { frozenPooledCache[$0]! }
    }

    var evalSplit: Split { config.evalSplit == .val ? .val : .test }

    // MARK: - the experiment

    /// Finished runs to reuse (`run --resume`; only if their protocol hash is this experiment's),
    /// and a callback that gets the finished runs after each one (to save them).
    public var resumeFrom: PartialResults?
    public var onRunFinished: ((PartialResults) throws -> Void)?

    public func run() throws -> ExperimentResults {
        let seeds = config.resolvedOrderingSeeds
        var runs: [RunResult] = []
        var jointF1: [String: [Double]] = [:], singleF1: [String: [Double]] = [:]
        let hash = makeProtocol().hash
        var partial = PartialResults(protocolHash: hash)
        let reuse = resumeFrom?.protocolHash == hash ? resumeFrom : nil
        func finished(_ r: RunResult?) throws {
            if let r { partial.runs.append(r) }
            try onRunFinished?(partial)
        }
        for ref in config.references ?? [] {
            let s = try MethodSettings.resolve(ref, training: training)
            for seed in seeds {
                let order = scenario.ordering(seed: seed)
                if s.kind == .joint {
                    let r: RunResult
                    if let done = reuse?.run(s.name, seed: seed) {
                        progress("== \(s.name): ordering seed \(seed) reused from the partial results")
                        r = done
                    } else {
                        r = try runJoint(s, order: order, seed: seed)
                    }
                    runs.append(r)
                    try finished(r)
                    for (j, name) in r.domains.enumerated() { jointF1[name, default: []].append(r.oracle.f1[r.domains.count - 1][j]) }
                } else {
                    let r: [String: Double]
                    if let done = reuse?.single[seed] {
                        progress("== \(s.name): ordering seed \(seed) reused from the partial results")
                        r = done
                    } else {
                        r = try runSingle(s, order: order, seed: seed)
                    }
                    partial.single[seed] = r
                    try finished(nil)
                    for (name, f) in r { singleF1[name, default: []].append(f) }
                }
            }
        }
        let joint = jointF1.isEmpty ? nil : jointF1.mapValues { $0.reduce(0, +) / Double($0.count) }
        let single = singleF1.isEmpty ? nil : singleF1.mapValues { $0.reduce(0, +) / Double($0.count) }
        for m in config.methods {
            let s = try MethodSettings.resolve(m, training: training)
            for (k, seed) in seeds.enumerated() {
                if let done = reuse?.run(s.name, seed: seed) {
                    progress("== \(s.name): ordering \(k + 1)/\(seeds.count) (seed \(seed)) reused from the partial results")
                    runs.append(done)
                    try finished(done)
                    continue
                }
                progress("== \(s.name): ordering \(k + 1)/\(seeds.count) (seed \(seed))")
                let r = try runSequential(s, order: scenario.ordering(seed: seed), seed: seed)
                runs.append(r)
                try finished(r)
            }
        }
        var summaries: [MethodSummary] = []
        for m in config.methods {
            let name = try MethodSettings.resolve(m, training: training).name
            let rs = runs.filter { $0.method == name }
            summaries.append(MethodSummary(
                method: name, kind: m.kind,
                routed: EvalSummary.aggregate(rs.map(\.routed), single: single, joint: joint),
                oracle: EvalSummary.aggregate(rs.map(\.oracle), single: single, joint: joint),
                routerAccuracy: rs.first?.routerAccuracy == nil ? nil : MeanStd(rs.compactMap { $0.routerAccuracy?.last }),
                trainableParameters: rs.first?.trainableParameters ?? 0,
                parametersPerNewDomain: rs.first?.parametersPerNewDomain ?? 0,
                latencyP99ms: rs.compactMap(\.latencyP99ms).max(),
                trainSeconds: MeanStd(rs.map(\.trainSeconds)), evalSeconds: MeanStd(rs.map(\.evalSeconds))))
        }
        let proto = makeProtocol()
        let iso = ISO8601DateFormatter().string(from: Date())
        return ExperimentResults(experimentProtocol: proto, runs: runs, summaries: summaries, jointF1: joint, singleF1: single, createdAt: iso)
    }

    public func makeProtocol() -> ExperimentProtocol {
        var p = ExperimentProtocol(config: config, dataFingerprint: scenario.contentFingerprint, domainNames: scenario.domainNames,
                                   byteBudget: byteBudget, codeVersion: codeVersion, modelFingerprint: encoder.weights.fingerprint(),
                                   threads: Int(dr_blas_get_threads()), hash: "")
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        let data = (try? enc.encode(p)) ?? Data()
        var h = FNV1a()
        h.add(String(decoding: data, as: UTF8.self))
        p.hash = String(format: "%016llx", h.value)
        return p
    }

    // MARK: - building blocks

    func makeRouter(_ m: ContinualModel, _ s: MethodSettings) -> DomainRouter {
        let r = DomainRouter(model: m)
        r.rescoreTopK = s.routerRescoreTopK
        r.rescoreThreshold = s.routerRescoreThreshold
        return r
    }

    func makeModel(_ s: MethodSettings, seed: UInt64) -> ContinualModel {
        ContinualModel(base: encoder.weights, spec: s.spec, seed: seed &* 7919 &+ 17)
    }

    /// Adds domain `d` to the model, with the method's gate initialisation and trainable rows.
    func addDomain(_ m: ContinualModel, _ d: ScenarioDomain, _ s: MethodSettings, rng: inout SplitMix64, alone: Bool = false) {
        let k = m.addDomain(name: d.name, intents: d.intents)
        precondition(alone || Int32(m.domains[k].classOffset) == d.labelOffset, "class offsets out of step")
        if s.gateInit == .mask {
            let R = s.spec.bottleneck
            let on = (0..<R).map { _ in rng.nextUnit() < s.gateMaskFraction }
            for slot in m.adapterLayers.indices {
                let g = m.store.value("adapter.\(slot).gates") + k * R
                for r in 0..<R { g[r] = on[r] ? 1 : 0 }
            }
        }
        for slot in m.adapterLayers.indices {
            m.store.setTrainableRows("adapter.\(slot).gates", s.freezeOldGates ? k..<(k + 1) : nil)
        }
        if s.freezeOldHeads {
            m.store.setTrainable(false) { $0.group == "head" }
            m.store.setTrainable(true) { $0.name == "head.\(k).w" || $0.name == "head.\(k).b" }
        }
        // the shared adapter learns at full rate on the first domain only (1 = always)
        let scale = k == 0 ? 1 : s.sharedLRScale
        m.sharedLRScale = scale
        if scale == 0 { m.store.setTrainable(false) { ContinualModel.isSharedAdapter($0.name) } }
        m.rebuildViews()
    }

    /// Refits head `j` (weights and bias, from their current values) on buffered examples of
    /// domain j: pooled features under gate j, softmax cross-entropy over j's intents, `steps`
    /// full-batch Adam steps. Encoder, adapter and gates are untouched, so only the head's
    /// alignment to the current features changes; its AdamW moments are left as they were.
    func realignHead(_ m: ContinualModel, domain j: Int, items: [ReplayItem], steps: Int, lr: Float) {
        let d = m.domains[j], n = d.intents.count, C = m.config.hidden
        let rows = items.filter { Int($0.label) >= d.classOffset && Int($0.label) < d.classOffset + n }
        guard rows.count >= 2 else { return }
        let N = rows.count
        let x = pooled(m, rows.map(\.tokenIds), gate: j)
        let labels = rows.map { $0.label - Int32(d.classOffset) }
        let W = m.store.value("head.\(j).w"), b = m.store.value("head.\(j).b")
        var mW = [Float](repeating: 0, count: n * C), vW = mW, gW = mW, mb = [Float](repeating: 0, count: n), vb = mb, gb = mb
        var logits = [Float](repeating: 0, count: N * n), dlogits = logits, losses = [Float](repeating: 0, count: N)
        let opt = training.optimizer
        for t in 1...steps {
            // the head is one linear layer: logits = x·Wᵀ + b; its backward adds, so clear first
            dr_matmul_forward(&logits, x, W, b, Int64(N), Int64(C), Int64(n))
            _ = dr_softmax_xent_forward_backward(&losses, &dlogits, nil, logits, labels, nil, nil, nil, Int64(N), Int64(n))
            for i in gW.indices { gW[i] = 0 }
            for c in 0..<n { gb[c] = 0 }
            dr_matmul_backward(nil, &gW, &gb, dlogits, x, W, Int64(N), Int64(C), Int64(n))
            dr_adamw_update(W, gW, &mW, &vW, Int64(n * C), lr, opt.beta1, opt.beta2, opt.epsilon, 0, Int64(t))
            dr_adamw_update(b, gb, &mb, &vb, Int64(n), lr, opt.beta1, opt.beta2, opt.epsilon, 0, Int64(t))
        }
    }

    /// Pooled outputs (B·C) of sequences under one gate, in chunks of 64.
    func pooled(_ m: ContinualModel, _ seqs: [[Int32]], gate: Int) -> [Float] {
        var x: [Float] = []
        x.reserveCapacity(seqs.count * m.config.hidden)
        for start in stride(from: 0, to: seqs.count, by: 64) {
            let part = Array(seqs[start..<min(seqs.count, start + 64)])
            x += m.pooled(part, gateIds: [Int32](repeating: Int32(gate), count: part.count))
        }
        return x
    }

    /// HAT-like protection: bottleneck channels earlier domains use get a scaled-down gradient.
    func protectChannels(_ m: ContinualModel, _ s: MethodSettings, current k: Int) {
        guard s.protectOldChannels > 0, k > 0 else { return }
        let R = s.spec.bottleneck, C = m.config.hidden
        for slot in m.adapterLayers.indices {
            let g = m.store.value("adapter.\(slot).gates")
            var scale = [Float](repeating: 1, count: R)
            for r in 0..<R {
                var used: Float = 0
                for d in 0..<k { used = max(used, min(1, abs(g[d * R + r]))) }
                scale[r] = 1 - s.protectOldChannels * used
            }
            let dDown = m.store.grad("adapter.\(slot).down.w"), dDownB = m.store.grad("adapter.\(slot).down.b")
            let dUp = m.store.grad("adapter.\(slot).up.w")
            for r in 0..<R {
                dDownB[r] *= scale[r]
                for c in 0..<C { dDown[r * C + c] *= scale[r]; dUp[c * R + r] *= scale[r] }
            }
        }
    }

    /// Trains the model on `examples` (global labels) for the method's epochs, mixing replay.
    func trainPhase(_ m: ContinualModel, _ s: MethodSettings, examples: [(ids: [Int32], domain: Int, label: Int32)],
                    replay: (inout TrainingBatch, Int, inout SplitMix64) -> Void, rng: inout SplitMix64, label: String) throws -> Int {
        let newPerBatch = max(1, Int((Double(s.batchSize) * (1 - s.replayShare)).rounded()))
        let replayPerBatch = s.batchSize - newPerBatch
        let stepsPerEpoch = (examples.count + newPerBatch - 1) / newPerBatch
        let total = stepsPerEpoch * s.epochs
        var opt = training.optimizer
        opt.learningRate = s.learningRate
        let adam = AdamWStep(config: opt)
        var order = Array(examples.indices)
        var step = 0, seen = 0, firstEpoch = 0, firstNext = 0
        let currentDomain = m.domains.count - 1
        let domainName = m.domains.last?.name ?? "?"
        if let r = pendingResume {
            pendingResume = nil
            let p = r.progress
            guard r.values.count == m.store.count, r.moment1.count == m.store.count, r.moment2.count == m.store.count else {
                throw RunnerError.checkpointMismatch("the checkpoint holds \(r.values.count) parameters, the model \(m.store.count)")
            }
            guard p.total == total, p.order.count == examples.count, Set(p.order).count == examples.count,
                  p.order.allSatisfy({ examples.indices.contains($0) }), p.step <= total, (0..<s.epochs).contains(p.epoch) || p.step == total else {
                throw RunnerError.checkpointMismatch("the checkpoint is of a phase of \(p.total) steps over \(p.order.count) examples, this one has \(total) over \(examples.count)")
            }
            m.store.load(values: r.values, moment1: r.moment1, moment2: r.moment2)
            m.optimizerStep = p.modelOptimizerStep
            m.rngState = SplitMix64(seed: p.modelRNG)
            rng = SplitMix64(seed: p.rng)
            order = p.order
            step = p.step; seen = p.seen; firstEpoch = p.epoch; firstNext = p.next
            progress("  \(label) resumed at step \(step)/\(total) (epoch \(firstEpoch + 1))")
        }
        func checkpoint(epoch: Int, next: Int) throws {
            guard let onCheckpoint else { return }
            let p = PhaseProgress(epoch: epoch, next: next, step: step, seen: seen, total: total, order: order, rng: rng.state,
                                  modelOptimizerStep: m.optimizerStep, modelRNG: m.rngState.state)
            try onCheckpoint(PhaseCheckpoint(progress: p, values: Array(m.store.values.buffer), moment1: Array(m.store.moment1.buffer),
                                             moment2: Array(m.store.moment2.buffer)))
        }
        let t0 = Date()
        var seenHere = 0, stepsHere = 0
        for epoch in firstEpoch..<s.epochs {
            // a resumed epoch that had begun keeps its order; every other epoch shuffles first
            if !(epoch == firstEpoch && firstNext > 0) { order.shuffle(using: &rng) }
            var start = epoch == firstEpoch ? firstNext : 0
            while start < order.count {
                var tb = TrainingBatch()
                for i in order[start..<min(order.count, start + newPerBatch)] {
                    let e = examples[i]
                    tb.append(ids: e.ids, gate: Int32(e.domain), label: e.label, range: m.domains[e.domain].classRange)
                }
                if replayPerBatch > 0 { replay(&tb, replayPerBatch, &rng) }
                if s.lossOverSeen {
                    // class-incremental: the softmax covers every intent seen so far (logit
                    // targets keep their own domain's range through `logitRanges`)
                    tb.scopeToAllSeen(classCount: m.classCount)
                }
                let parts = try m.trainStep(tb, weights: s.loss, optimizer: adam, lr: opt.learningRate(step: step, total: total)) {
                    protectChannels(m, s, current: currentDomain)
                }
                step += 1
                seen += tb.count
                seenHere += tb.count
                stepsHere += 1
                start += newPerBatch
                // a checkpoint names the next batch: the rest of this epoch, or the next epoch
                // (whose shuffle has not happened yet)
                let (ce, cn) = start < order.count ? (epoch, start) : (epoch + 1, 0)
                let stop = shouldStop()
                if stop || (checkpointEvery > 0 && step % checkpointEvery == 0 && step < total) {
                    try checkpoint(epoch: ce, next: cn)
                }
                afterStep?(step)
                if stop { throw RunnerError.interrupted(domain: domainName, step: step, total: total) }
                if step % 50 == 0 || step == total {
                    let el = Date().timeIntervalSince(t0)
                    let rate = Double(seenHere) / max(el, 1e-9)
                    let eta = Double(total - step) * el / Double(max(stepsHere, 1))
                    progress("  \(label) epoch \(epoch + 1)/\(s.epochs) step \(step)/\(total) loss \(String(format: "%.4f", parts.total)) \(String(format: "%.0f", rate)) ex/s ETA \(String(format: "%.0f", eta))s")
                }
            }
        }
        return seen
    }

    /// Predictions for examples of domain `j`: oracle (gate and head of j) and routed.
    struct DomainEval { var routedF1, oracleF1, routedAcc, oracleAcc: Double; var routerCorrect, count: Int }

    func evaluate(_ m: ContinualModel, router: DomainRouter?, domain j: Int, examples: [IntentExample]) -> DomainEval {
        let d = scenario.domains.first { $0.name == m.domains[j].name }!
        let seqs = examples.map { ids($0.text) }
        let labels = examples.map { Int32(m.domains[j].classOffset) + Int32(d.intents.firstIndex(of: $0.intent)!) }
        let V = m.classCount
        var oraclePred: [Int32] = [], routedPred: [Int32] = [], routerCorrect = 0
        let chunk = 64
        for start in stride(from: 0, to: seqs.count, by: chunk) {
            let part = Array(seqs[start..<min(seqs.count, start + chunk)])
            let B = part.count
            let oracle = m.logits(part, gateIds: [Int32](repeating: Int32(j), count: B))
            let r = m.domains[j].classRange
            for b in 0..<B { oraclePred.append(Int32(r.max { oracle[b * V + $0] < oracle[b * V + $1] }!)) }
            if let router, router.rescoreTopK > 1 {
                let preds = routedPredictions(m, router: router, part)
                routerCorrect += preds.filter { $0.domain == j }.count
                routedPred += preds.map { Int32($0.cls) }
            } else if let router {
                let routes = router.route(part)
                routerCorrect += routes.filter { $0 == Int32(j) }.count
                // correctly routed rows have exactly the oracle's logits (same gate and head);
                // only misrouted rows need a gated pass of their own
                let wrong = (0..<B).filter { routes[$0] != Int32(j) }
                var other: [Int: Int] = [:]
                var lg: [Float] = []
                if !wrong.isEmpty && !m.adapterLayers.isEmpty {
                    lg = m.logits(wrong.map { part[$0] }, gateIds: wrong.map { routes[$0] })
                    for (i, b) in wrong.enumerated() { other[b] = i }
                }
                for b in 0..<B {
                    let rr = m.domains[Int(routes[b])].classRange
                    if let i = other[b] {
                        routedPred.append(Int32(rr.max { lg[i * V + $0] < lg[i * V + $1] }!))
                    } else {
                        routedPred.append(Int32(rr.max { oracle[b * V + $0] < oracle[b * V + $1] }!))
                    }
                }
            } else {
                // no router: the argmax over every seen class (gates, if any, of the newest domain)
                let lg = m.adapterLayers.isEmpty ? oracle : m.logits(part, gateIds: [Int32](repeating: Int32(m.domains.count - 1), count: B))
                for b in 0..<B { routedPred.append(Int32((0..<V).max { lg[b * V + $0] < lg[b * V + $1] }!)) }
            }
        }
        let classes = Array(m.domains[j].classRange).map(Int32.init)
        return DomainEval(routedF1: macroF1(predictions: routedPred, labels: labels, classes: classes),
                          oracleF1: macroF1(predictions: oraclePred, labels: labels, classes: classes),
                          routedAcc: accuracy(predictions: routedPred, labels: labels),
                          oracleAcc: accuracy(predictions: oraclePred, labels: labels),
                          routerCorrect: routerCorrect, count: seqs.count)
    }

    func split(_ d: ScenarioDomain, _ s: Split) -> [IntentExample] {
        let rows = s == .test ? d.test : d.val
        guard let cap = config.data.maxEvalPerDomain, rows.count > cap else { return rows }
        var rng = SplitMix64(seed: FNV1a.of(d.name))
        return Array(rows.shuffled(using: &rng).prefix(cap))
    }

    func trainingRows(_ d: ScenarioDomain, domainIndex k: Int) -> [(ids: [Int32], domain: Int, label: Int32)] {
        d.train.compactMap { e in
            guard let i = d.intents.firstIndex(of: e.intent) else { return nil }
            return (ids(e.text), k, d.labelOffset + Int32(i))
        }
    }

    func routerExamples(_ m: ContinualModel, newDomain rows: [(ids: [Int32], domain: Int, label: Int32)],
                        buffered: [ReplayItem], rng: inout SplitMix64) -> [(ids: [Int32], domain: Int32)] {
        var out = rows.shuffled(using: &rng).prefix(training.routerTraining.newDomainExamples).map { ($0.ids, Int32($0.domain)) }
        out += buffered.filter { !$0.isGeneral }.map { ($0.tokenIds, $0.domain) }
        return out
    }

    /// Routed predictions (domain index, global class) of sequences, as `evaluate` scores them:
    /// the router picks gate and head; without a router the argmax over every seen class decides.
    func routedPredictions(_ m: ContinualModel, router: DomainRouter?, _ seqs: [[Int32]]) -> [(domain: Int, cls: Int)] {
        let V = m.classCount
        var out: [(domain: Int, cls: Int)] = []
        for start in stride(from: 0, to: seqs.count, by: 64) {
            let part = Array(seqs[start..<min(seqs.count, start + 64)])
            let B = part.count
            if let router {
                let (routes, lg) = router.routeRescored(part)
                for b in 0..<B {
                    let k = Int(routes[b]), r = m.domains[k].classRange
                    out.append((k, r.max { lg[b * V + $0] < lg[b * V + $1] }!))
                }
            } else {
                let lg = m.logits(part, gateIds: [Int32](repeating: Int32(m.domains.count - 1), count: B))
                for b in 0..<B {
                    let c = (0..<V).max { lg[b * V + $0] < lg[b * V + $1] }!
                    out.append((m.domains.firstIndex { $0.classRange.contains(c) }!, c))
                }
            }
        }
        return out
    }

    /// Test macro-F1 of a linear probe fitted on domain `j`'s pooled features under its own gate:
    /// what the representation still holds, whatever its head makes of it.
    func probeF1(_ m: ContinualModel, domain j: Int, _ d: ScenarioDomain) -> Double {
        func features(_ rows: [IntentExample]) -> (x: [Float], y: [Int32]) {
            (pooled(m, rows.map { ids($0.text) }, gate: j), rows.map { d.globalLabel(of: $0.intent)! - d.labelOffset })
        }
        var rng = SplitMix64(seed: FNV1a.of(d.name) &+ 0x9B0B)
        let cap = config.probeTrainPerDomain ?? 600
        let train = d.train.count > cap ? Array(d.train.shuffled(using: &rng).prefix(cap)) : d.train
        let (xt, yt) = features(train), (xe, ye) = features(split(d, evalSplit))
        return LinearProbe.fitAndScore(trainFeatures: xt, trainLabels: yt, testFeatures: xe, testLabels: ye,
                                       dim: m.config.hidden, classes: d.intents.count)
    }

    /// Multi-intent fragility of every domain with multi-intent test rows, after the last domain.
    func multiIntentScores(_ m: ContinualModel, router: DomainRouter?, order: Scenario, routedAccuracy: EvalMatrix) -> [MultiIntentScore] {
        let last = order.count - 1
        var out: [MultiIntentScore] = []
        for (j, d) in order.domains.enumerated() where !d.multiIntentTest.isEmpty {
            var rows = d.multiIntentTest
            if let cap = config.data.maxEvalPerDomain, rows.count > cap {
                var rng = SplitMix64(seed: FNV1a.of(d.name) &+ 0x3017)
                rows = Array(rows.shuffled(using: &rng).prefix(cap))
            }
            let preds = routedPredictions(m, router: router, rows.map { ids($0.text) }).map { p -> (domain: String, intent: String) in
                let dom = m.domains[p.domain]
                return (dom.name, dom.intents[p.cls - dom.classOffset])
            }
            let gold = rows.map { (domain: d.name, intents: $0.intents) }
            out.append(Diagnostics.score(domain: d.name, predictions: preds, gold: gold,
                                         singleIntentAccuracy: routedAccuracy[afterTraining: last, domain: j]))
        }
        return out
    }

    /// Single-utterance routed prediction latency (tokenize + route + gated forward + head), 1 thread.
    func latency(_ m: ContinualModel, router: DomainRouter?, texts: [String]) -> (p50: Double, p99: Double)? {
        let n = config.latencySamples ?? 200
        guard n > 0, !texts.isEmpty else { return nil }
        let threads = dr_blas_get_threads()
        dr_blas_set_threads(1)
        defer { dr_blas_set_threads(threads) }
        var times: [Double] = []
        for i in 0..<(n + 10) {
            let text = texts[(i * 7919) % texts.count]
            let t0 = DispatchTime.now().uptimeNanoseconds
            var t = encoder.tokenizer.encode(text)
            if t.count > training.maxLength { t = Array(t.prefix(training.maxLength - 1)) + [encoder.tokenizer.sepId] }
            if let router {
                let (_, lg) = router.routeAndScore([t])
                precondition(!lg.isEmpty)
            } else {
                let lg = m.logits([t], gateIds: [Int32(m.domains.count - 1)])
                precondition(!lg.isEmpty)
            }
            let t1 = DispatchTime.now().uptimeNanoseconds
            if i >= 10 { times.append(Double(t1 - t0) / 1e6) }
        }
        times.sort()
        return (times[times.count / 2], times[min(times.count - 1, Int(Double(times.count - 1) * 0.99 + 0.5))])
    }

    // MARK: - sequential methods

    /// What `runSequential` carries from one domain to the next. A production state
    /// (State/ContinualState.swift) saves and restores exactly this.
    final class SequentialState {
        let model: ContinualModel
        let router: DomainRouter?
        var rng: SplitMix64
        /// Best validation F1 of each seen domain so far (the forgetting signal's reference).
        var bestVal: [Double] = []
        var reservoir: ReservoirBuffer?
        var dual: DualStreamBuffer?

        init(model: ContinualModel, router: DomainRouter?, rng: SplitMix64) {
            self.model = model
            self.router = router
            self.rng = rng
        }
    }

    /// A fresh model, router and buffers for method `s`; Dual-Replay's general stream is filled here.
    func makeSequentialState(_ s: MethodSettings, seed: UInt64) throws -> SequentialState {
        let m = makeModel(s, seed: seed)
        let st = SequentialState(model: m, router: s.router ? makeRouter(m, s) : nil, rng: SplitMix64(seed: seed &+ 0x5EED))
        if s.kind == .loraReplay || s.kind == .der { st.reservoir = ReservoirBuffer(byteBudget: byteBudget, seed: seed) }
        if s.kind == .dualReplay {
            let dual = try DualStreamBuffer(config: DualStreamConfig(byteBudget: byteBudget, domainFraction: s.domainFraction,
                                                                     floorWeight: s.floorWeight, samplingFloorWeight: s.samplingFloorWeight,
                                                                     forgettingEMA: s.forgettingEMA, seed: seed))
            // the general stream: general text, reservoir-sampled to its budget
            var items: [ReplayItem] = []
            for t in generalTexts.shuffled(using: &st.rng).prefix(4000) { items.append(.general(tokenIds: ids(t), target: nil)) }
            dual.addGeneral(items: items)
            st.dual = dual
        }
        return st
    }

    /// One domain of `runSequential`: adds `seen.last` as domain k = seen.count - 1, trains it with
    /// replay, measures every seen domain's validation F1 (the forgetting signal), updates the
    /// buffers and retrains the router. Returns the validation row, the examples trained and the
    /// parameters the domain added.
    func trainDomain(_ st: SequentialState, _ s: MethodSettings, seen: [ScenarioDomain], label: String) throws
        -> (validationF1: [Double], trained: Int, parametersAdded: Int) {
        let m = st.model, router = st.router, reservoir = st.reservoir, dual = st.dual
        let k = seen.count - 1, d = seen[k]
        precondition(m.domains.count == k, "trainDomain: the model holds \(m.domains.count) domains, expected \(k)")
        var rng = st.rng
        var bestVal = st.bestVal
        let paramsBefore = m.store.count - m.store.count(group: "router")
        addDomain(m, d, s, rng: &rng)
        let paramsPerDomain = m.store.count - m.store.count(group: "router") - paramsBefore
        let rows = trainingRows(d, domainIndex: k)
        guard !rows.isEmpty else { throw RunnerError.data("domain \(d.name) has no training examples") }
        let replay: (inout TrainingBatch, Int, inout SplitMix64) -> Void = { [self] tb, n, rng in
            if let res = reservoir, res.count > 0 {
                for it in res.sample(count: n, rng: &rng) {
                    let r = m.domains[Int(it.domain)].classRange
                    tb.append(ids: it.tokenIds, gate: it.domain, label: it.label, range: r, logits: it.logits)
                }
            } else if let dual, k > 0 {
                let nGeneral = dual.generalCount > 0 && s.loss.anchor > 0 ? Int((Double(n) * (1 - s.domainFraction)).rounded()) : 0
                for it in dual.sample(count: n - nGeneral, rng: &rng) {
                    let r = m.domains[Int(it.domain)].classRange
                    tb.append(ids: it.tokenIds, gate: it.domain, label: it.label, range: r, logits: it.logits)
                }
                let general = dual.sampleGeneral(count: nGeneral, rng: &rng)
                let targets = frozenPooled(general.map(\.tokenIds))
                for (i, it) in general.enumerated() {
                    tb.append(ids: it.tokenIds, gate: Int32(k), label: -1, range: m.domains[k].classRange, anchor: targets[i])
                }
            }
        }
        progress("\(s.name) domain \(label) '\(d.name)' (\(rows.count) examples)")
        let trained = try trainPhase(m, s, examples: rows, replay: replay, rng: &rng, label: "\(s.name) \(label)")
        // validation F1 of every seen domain: the forgetting signal
        var vrow: [Double] = []
        for j in 0...k {
            let e = evaluate(m, router: nil, domain: j, examples: split(seen[j], .val))
            vrow.append(e.oracleF1)
        }
        bestVal.append(0)
        var forgetting: [Int32: Float] = [:]
        for j in 0..<k { forgetting[Int32(j)] = Float(max(0, bestVal[j] - vrow[j])) }
        for j in 0...k { bestVal[j] = max(bestVal[j], vrow[j]) }
        // buffers
        let logitsFor: ([[Int32]]) -> [[Float]] = { seqs in
            var out: [[Float]] = []
            let r = m.domains[k].classRange, V = m.classCount
            for start in stride(from: 0, to: seqs.count, by: 64) {
                let part = Array(seqs[start..<min(seqs.count, start + 64)])
                let lg = m.logits(part, gateIds: [Int32](repeating: Int32(k), count: part.count))
                for b in 0..<part.count { out.append(Array(lg[(b * V + r.lowerBound)..<(b * V + r.upperBound)])) }
            }
            return out
        }
        let storeLogits = s.loss.logitReplay > 0
        if let res = reservoir {
            let shuffled = rows.shuffled(using: &rng)
            let lg = storeLogits ? logitsFor(shuffled.map(\.ids)) : []
            for (i, r) in shuffled.enumerated() {
                res.add(ReplayItem(tokenIds: r.ids, label: r.label, domain: Int32(k), logits: storeLogits ? lg[i] : nil))
            }
            _ = res.appendLedgerEntry(newDomain: Int32(k))
        }
        if let dual {
            dual.updateForgetting(forgetting)
            let lg = storeLogits ? logitsFor(rows.map(\.ids)) : []
            let items = rows.enumerated().map { i, r in
                ReplayItem(tokenIds: r.ids, label: r.label, domain: Int32(k), logits: storeLogits ? lg[i] : nil)
            }
            try dual.addDomain(Int32(k), items: items, forgetting: forgetting)
        }
        if s.realignHeadSteps > 0, k > 0 {
            for j in 0..<k {
                let items = dual?.items(of: Int32(j)) ?? reservoir?.items.filter { $0.domain == Int32(j) } ?? []
                realignHead(m, domain: j, items: items, steps: s.realignHeadSteps, lr: s.realignLearningRate)
            }
        }
        if let router {
            router.fitPrototypes(domain: k, examples: rows.map { ($0.ids, $0.label) })
            var buffered: [ReplayItem] = []
            if let dual { for j in 0..<k { buffered += dual.items(of: Int32(j)) } }
            if let res = reservoir { buffered = res.items.filter { $0.domain != Int32(k) } }
            var ex = routerExamples(m, newDomain: rows, buffered: buffered, rng: &rng)
            if dual == nil && reservoir == nil {
                // no buffer: the router only ever sees the newest domain (that is the point)
                ex = ex.filter { $0.domain == Int32(k) }
            }
            var rc = training.routerTraining
            rc.balanced = s.routerBalanced
            router.train(ex, config: rc, optimizer: training.optimizer, rng: &rng)
        }
        st.rng = rng
        st.bestVal = bestVal
        return (vrow, trained, paramsPerDomain)
    }

    func runSequential(_ s: MethodSettings, order: Scenario, seed: UInt64) throws -> RunResult {
        let st = try makeSequentialState(s, seed: seed)
        let m = st.model, router = st.router
        let K = order.count
        var routed = EvalMatrix(domains: order.domainNames), oracle = routed, racc = routed, oacc = routed
        var valF1: [[Double]] = []
        var routerAcc: [Double] = []
        var trainTime = 0.0, evalTime = 0.0, trained = 0
        var paramsPerDomain = 0
        let diagnose = config.diagnostics ?? false
        var probeAtLearning: [Double] = []
        for k in order.domains.indices {
            let t0 = Date()
            let step = try trainDomain(st, s, seen: Array(order.domains[0...k]), label: "\(k + 1)/\(K)")
            valF1.append(step.validationF1)
            trained += step.trained
            paramsPerDomain = step.parametersAdded
            let t1 = Date()
            trainTime += t1.timeIntervalSince(t0)
            // the eval matrix row
            var correct = 0, total = 0
            for j in 0...k {
                let e = evaluate(m, router: router, domain: j, examples: split(order.domains[j], evalSplit))
                routed[afterTraining: k, domain: j] = e.routedF1
                oracle[afterTraining: k, domain: j] = e.oracleF1
                racc[afterTraining: k, domain: j] = e.routedAcc
                oacc[afterTraining: k, domain: j] = e.oracleAcc
                correct += e.routerCorrect
                total += e.count
            }
            if router != nil { routerAcc.append(Double(correct) / Double(max(total, 1))) }
            if diagnose { probeAtLearning.append(probeF1(m, domain: k, order.domains[k])) }
            evalTime += Date().timeIntervalSince(t1)
            let rowText = (0...k).map { String(format: "%.1f", 100 * routed[afterTraining: k, domain: $0]) }.joined(separator: " ")
            progress("  after \(k + 1)/\(K): routed F1 [\(rowText)]" + (router != nil ? String(format: " router acc %.1f%%", 100 * routerAcc.last!) : ""))
        }
        var probes: [ProbeDiagnosis]? = nil, multi: [MultiIntentScore]? = nil
        if diagnose {
            let t2 = Date(), last = K - 1
            probes = (0..<last).map { j in
                ProbeDiagnosis(domain: order.domains[j].name, headF1AtLearning: oracle[afterTraining: j, domain: j],
                               headF1Now: oracle[afterTraining: last, domain: j], probeF1AtLearning: probeAtLearning[j],
                               probeF1Now: probeF1(m, domain: j, order.domains[j]))
            }
            multi = multiIntentScores(m, router: router, order: order, routedAccuracy: racc)
            evalTime += Date().timeIntervalSince(t2)
            progress("  diagnostics: " + (probes ?? []).map { "\($0.domain) \($0.kind.rawValue)" }.joined(separator: ", "))
        }
        let lat = latency(m, router: router, texts: order.domains.flatMap { $0.test.map(\.text) })
        var result = RunResult(method: s.name, kind: s.kind, orderingSeed: seed, domains: order.domainNames, routed: routed, oracle: oracle,
                         routedAccuracy: racc, oracleAccuracy: oacc, routerAccuracy: router == nil ? nil : routerAcc,
                         validationF1: valF1, ledger: st.dual?.ledger ?? st.reservoir?.ledger, bufferBytesUsed: st.dual?.bytesUsed ?? st.reservoir?.bytesUsed,
                         trainableParameters: m.store.count - m.prototypeFloats, parametersPerNewDomain: paramsPerDomain,
                         trainSeconds: trainTime, evalSeconds: evalTime, trainExamplesPerSecond: Double(trained) / max(trainTime, 1e-9),
                         latencyP50ms: lat?.p50, latencyP99ms: lat?.p99)
        result.probes = probes
        result.multiIntent = multi
        if m.prototypeFloats > 0 { result.prototypeFloats = m.prototypeFloats }
        return result
    }

    // MARK: - references

    /// All domains at once (multi-task upper bound); one row in the matrices.
    func runJoint(_ s: MethodSettings, order: Scenario, seed: UInt64) throws -> RunResult {
        let m = makeModel(s, seed: seed)
        let router = s.router ? makeRouter(m, s) : nil
        var rng = SplitMix64(seed: seed &+ 0x1017)
        var rows: [(ids: [Int32], domain: Int, label: Int32)] = []
        for (k, d) in order.domains.enumerated() {
            addDomain(m, d, s, rng: &rng)
            rows += trainingRows(d, domainIndex: k)
        }
        for slot in m.adapterLayers.indices { m.store.setTrainableRows("adapter.\(slot).gates", nil) }
        m.store.setTrainable(true) { $0.group == "head" }
        m.store.setTrainable(true) { ContinualModel.isSharedAdapter($0.name) }
        m.sharedLRScale = 1
        m.rebuildViews()
        progress("\(s.name): all \(order.count) domains at once (\(rows.count) examples)")
        let t0 = Date()
        let n = try trainPhase(m, s, examples: rows, replay: { _, _, _ in }, rng: &rng, label: s.name)
        if let router {
            for k in order.domains.indices {
                router.fitPrototypes(domain: k, examples: rows.filter { $0.domain == k }.map { ($0.ids, $0.label) })
            }
            let ex = rows.map { ($0.ids, Int32($0.domain)) }
            router.train(ex, config: training.routerTraining, optimizer: training.optimizer, rng: &rng)
        }
        let trainTime = Date().timeIntervalSince(t0)
        // one evaluation after training on everything: the last row of a T×T matrix
        var routed = EvalMatrix(domains: order.domainNames)
        var oracle = routed, racc = routed, oacc = routed
        let last = order.count - 1
        let t1 = Date()
        for j in order.domains.indices {
            let e = evaluate(m, router: router, domain: j, examples: split(order.domains[j], evalSplit))
            routed.f1[last][j] = e.routedF1; oracle.f1[last][j] = e.oracleF1; racc.f1[last][j] = e.routedAcc; oacc.f1[last][j] = e.oracleAcc
        }
        return RunResult(method: s.name, kind: s.kind, orderingSeed: seed, domains: order.domainNames, routed: routed, oracle: oracle,
                         routedAccuracy: racc, oracleAccuracy: oacc, routerAccuracy: nil, validationF1: [], ledger: nil, bufferBytesUsed: nil,
                         trainableParameters: m.store.count - m.prototypeFloats, parametersPerNewDomain: 0, trainSeconds: trainTime,
                         evalSeconds: Date().timeIntervalSince(t1), trainExamplesPerSecond: Double(n) / max(trainTime, 1e-9),
                         latencyP50ms: nil, latencyP99ms: nil)
    }

    /// Each domain alone from a fresh model: oracle F1 per domain (FWT's reference).
    func runSingle(_ s: MethodSettings, order: Scenario, seed: UInt64) throws -> [String: Double] {
        var out: [String: Double] = [:]
        for (k, d) in order.domains.enumerated() {
            let m = makeModel(s, seed: seed &+ UInt64(k))
            var rng = SplitMix64(seed: seed &+ UInt64(k) &+ 0x5146)
            addDomain(m, d, s, rng: &rng, alone: true)
            progress("\(s.name): domain \(k + 1)/\(order.count) '\(d.name)' alone")
            _ = try trainPhase(m, s, examples: trainingRows(d, domainIndex: 0).map { ($0.ids, 0, $0.label - d.labelOffset) },
                               replay: { _, _, _ in }, rng: &rng, label: s.name)
            // the single model's class ids start at 0: evaluate with a shifted scenario view
            let e = evaluateSingle(m, d, examples: split(d, evalSplit))
            out[d.name] = e
        }
        return out
    }

    func evaluateSingle(_ m: ContinualModel, _ d: ScenarioDomain, examples: [IntentExample]) -> Double {
        let seqs = examples.map { ids($0.text) }
        let labels = examples.map { Int32(d.intents.firstIndex(of: $0.intent)!) }
        var pred: [Int32] = []
        let V = m.classCount
        for start in stride(from: 0, to: seqs.count, by: 64) {
            let part = Array(seqs[start..<min(seqs.count, start + 64)])
            let lg = m.logits(part, gateIds: [Int32](repeating: 0, count: part.count))
            for b in 0..<part.count { pred.append(Int32((0..<V).max { lg[b * V + $0] < lg[b * V + $1] }!)) }
        }
        return macroF1(predictions: pred, labels: labels, classes: (0..<Int32(d.intents.count)).map { $0 })
    }
}
