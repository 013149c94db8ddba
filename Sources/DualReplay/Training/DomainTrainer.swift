import Foundation

/// Trains one domain on a learner (model + router + buffers) as its method prescribes: adds the
/// domain under the method's policies, runs the checkpointed loop with replay, measures every seen
/// domain's validation F1 (the forgetting signal), updates the buffers, realigns earlier heads
/// when asked and retrains the router. The experiment runner and `ContinualState` (onboarding)
/// both call it.
public final class DomainTrainer {
    public let settings: MethodSettings
    public let training: TrainingDefaults
    /// The frozen base (anchoring targets of the general stream).
    public let encoder: SentenceEncoder
    public let tokens: TokenCache
    public let policies: [TrainingPolicy]
    /// The phase loop: its checkpoint hooks belong to the caller (onboarding, crash tests).
    public let loop = TrainingLoop()
    public var progress: (String) -> Void = { _ in } { didSet { loop.progress = progress } }
    /// The job's ranks for the models this trainer makes: their chunked gradients and their
    /// sharded inference (`Parallelism.inference` when the trainer is made).
    public var inference: ShardedInference = Parallelism.inference

    public init(settings: MethodSettings, training: TrainingDefaults, encoder: SentenceEncoder, tokens: TokenCache) {
        self.settings = settings
        self.training = training
        self.encoder = encoder
        self.tokens = tokens
        policies = MethodPolicies.make(settings)
    }

    // MARK: - building a learner

    public func makeModel(seed: UInt64) -> ContinualModel {
        let m = ContinualModel(base: encoder.weights, spec: settings.spec, seed: seed &* 7919 &+ 17)
        m.useParallelism(training, inference: inference)
        if training.prefixCacheMB > 0 && m.gateFreePrefix >= 1 { m.prefixCache = PrefixCache(byteBudget: training.prefixCacheMB << 20) }
        return m
    }

    public func makeRouter(_ m: ContinualModel) -> DomainRouter? { settings.router ? DomainRouter(model: m) : nil }

    /// The route-then-score path of a learner, with the method's rescoring.
    public func predictor(_ st: LearnerState) -> RoutedPredictor {
        RoutedPredictor(model: st.model, router: st.router, settings: settings)
    }

    /// A fresh learner: model, router and the method's buffers under `byteBudget`; Dual-Replay's
    /// general stream is filled from `generalTexts` here.
    public func makeLearner(seed: UInt64, byteBudget: Int, generalTexts: [String]) throws -> LearnerState {
        let m = makeModel(seed: seed)
        let st = LearnerState(model: m, router: makeRouter(m), rng: SplitMix64(seed: seed &+ 0x5EED))
        let s = settings
        if s.kind == .loraReplay || s.kind == .der { st.reservoir = ReservoirBuffer(byteBudget: byteBudget, seed: seed) }
        if s.kind == .dualReplay {
            let dual = try DualStreamBuffer(config: DualStreamConfig(byteBudget: byteBudget, domainFraction: s.domainFraction,
                                                                     floorWeight: s.floorWeight, samplingFloorWeight: s.samplingFloorWeight,
                                                                     forgettingEMA: s.forgettingEMA, redistributeUnused: s.redistributeQuotas,
                                                                     seed: seed))
            // the general stream: general text, reservoir-sampled to its budget
            let items = generalTexts.shuffled(using: &st.rng).prefix(4000).map { ReplayItem.general(tokenIds: tokens.ids($0), target: nil) }
            dual.addGeneral(items: items)
            st.dual = dual
        }
        return st
    }

    /// Adds domain `d` to the model and applies the method's policies (gate initialisation,
    /// trainable rows, learning-rate scales). `alone`: a fresh model for one domain (its class
    /// offset is then 0, whatever the scenario's).
    public func addDomain(_ m: ContinualModel, _ d: ScenarioDomain, rng: inout SplitMix64, alone: Bool = false) {
        let k = m.addDomain(name: d.name, intents: d.intents)
        precondition(alone || Int32(m.domains[k].classOffset) == d.labelOffset, "class offsets out of step")
        for p in policies { p.domainAdded(m, domain: k, rng: &rng) }
        m.rebuildViews()
    }

    /// The domain's training rows under gate `k`, labels global (`d.labelOffset` + intent index).
    public func trainingRows(_ d: ScenarioDomain, domainIndex k: Int, labelOffset: Int32? = nil) -> [TrainingRow] {
        d.train.compactMap { e in
            guard let i = d.intents.firstIndex(of: e.intent) else { return nil }
            return TrainingRow(ids: tokens.ids(e.text), domain: k, label: (labelOffset ?? d.labelOffset) + Int32(i))
        }
    }

    /// The method's synthesized multi-intent training rows of domain `d` under gate `k`
    /// (`MultiIntentSynthesis` over its training split; empty when the option is off). The first
    /// part's intent is `label`, the others `extraLabels`. They train the domain's SGD phase only:
    /// the buffer, the router and the prototypes keep seeing real single-intent rows.
    public func synthesizedRows(_ d: ScenarioDomain, domainIndex k: Int, labelOffset: Int32? = nil) -> [TrainingRow] {
        guard let a = settings.multiIntent else { return [] }
        let count = Int((a.augmentShare * Double(d.train.count)).rounded())
        let offset = labelOffset ?? d.labelOffset
        return MultiIntentSynthesis.synthesize(d.train, domain: d.name, count: count, conjunctions: a.conjunctions,
                                               maxIntents: a.maxIntents).compactMap { e in
            let ids = e.intents.compactMap { d.intents.firstIndex(of: $0) }.map { offset + Int32($0) }
            guard ids.count == e.intents.count, let first = ids.first else { return nil }
            return TrainingRow(ids: tokens.ids(e.text), domain: k, label: first, extraLabels: Array(ids.dropFirst()))
        }
    }

    // MARK: - one domain

    public struct Outcome: Sendable {
        /// Validation F1 of every seen domain after this one (the forgetting signal's source).
        public var validationF1: [Double]
        /// Examples trained (new + replay).
        public var trained: Int
        /// Parameters the domain added (router outputs aside).
        public var parametersAdded: Int
        /// Wall time of each phase of this domain.
        public var times: PhaseTimes
        /// Earlier domains classed as alignment drift whose gate and head were refitted
        /// (`heads.driftRefitSteps`), kept or not.
        public var gateRefits: [GateRefit.Outcome] = []
    }

    /// Adds domain `d` as the learner's next domain and trains it. `validation[j]` are the
    /// validation rows of seen domain j (the new one last).
    public func learn(_ st: LearnerState, domain d: ScenarioDomain, validation: [[IntentExample]], label: String) throws -> Outcome {
        let m = st.model, s = settings
        let k = m.domains.count
        precondition(validation.count == k + 1, "learn: validation rows for \(validation.count) domains, expected \(k + 1)")
        var rng = st.rng
        let paramsBefore = m.store.count - m.store.count(group: "router")
        addDomain(m, d, rng: &rng)
        let parametersAdded = m.store.count - m.store.count(group: "router") - paramsBefore
        let rows = trainingRows(d, domainIndex: k)
        guard !rows.isEmpty else { throw RunnerError.data("domain \(d.name) has no training examples") }
        let synthesized = synthesizedRows(d, domainIndex: k)
        progress("\(s.name) domain \(label) '\(d.name)' (\(rows.count) examples"
                 + (synthesized.isEmpty ? ")" : " + \(synthesized.count) synthesized multi-intent)"))
        var times = PhaseTimes()
        let trained = try times.time(\.sgd) { try loop.run(m, s, optimizer: training.optimizer, examples: rows + synthesized, policies: policies,
                                   replay: { tb, n, rng in self.drawReplay(st, into: &tb, count: n, newDomain: k, rng: &rng) },
                                   rng: &rng, label: "\(s.name) \(label)") }
        // validation score of every seen domain: the forgetting signal (`validationScores`)
        let (vrow, isReference) = try times.time(\.quotaValidation) { try validationScores(st, validation: validation) }
        var bestVal = st.bestValidationF1 + [0]
        var forgetting: [Int32: Float] = [:]
        for j in 0..<k { forgetting[Int32(j)] = Float(max(0, bestVal[j] - vrow[j])) }
        // a one-intent domain's reference starts with its first routed recall that is not trivial
        for j in 0...k where isReference[j] { bestVal[j] = max(bestVal[j], vrow[j]) }
        try times.time(\.buffer) { try updateBuffers(st, rows: rows, domain: k, forgetting: forgetting, rng: &rng) }
        if s.realignHeadSteps > 0, k > 0 {
            try times.time(\.realign) { for j in 0..<k { try realignHead(m, domain: j, items: st.bufferedItems(of: j)) } }
        }
        var refits: [GateRefit.Outcome] = []
        if let steps = s.driftRefitSteps, steps > 0, k > 0 {
            refits = try times.time(\.realign) { try refitDriftingGates(st, validation: validation, headF1AtLearning: bestVal, headF1Now: vrow, before: k) }
            for r in refits {
                progress("  alignment drift in '\(r.domain)': gate refit \(r.kept ? "kept" : "rejected") (val F1 "
                         + String(format: "%.1f -> %.1f)", 100 * r.validationF1Before, 100 * r.validationF1Candidate))
            }
        }
        if let router = st.router { try retrainRouter(router, st, rows: rows, domain: k, rng: &rng, times: &times) }
        st.rng = rng
        st.bestValidationF1 = bestVal
        return Outcome(validationF1: vrow, trained: trained, parametersAdded: parametersAdded, times: times, gateRefits: refits)
    }

    /// Tops a batch of domain `k` up with `n` replayed rows: the reservoir's, or the dual stream's
    /// domain part plus its general part (with frozen anchoring targets) in the method's split.
    func drawReplay(_ st: LearnerState, into tb: inout TrainingBatch, count n: Int, newDomain k: Int, rng: inout SplitMix64) {
        let m = st.model, s = settings
        func append(_ items: [ReplayItem]) {
            for it in items {
                tb.append(ids: it.tokenIds, gate: it.domain, label: it.label, range: m.domains[Int(it.domain)].classRange, logits: it.logits)
            }
        }
        if let res = st.reservoir, res.count > 0 {
            append(res.sample(count: n, rng: &rng))
        } else if let dual = st.dual, k > 0 {
            let nGeneral = dual.generalCount > 0 && s.loss.anchor > 0 ? Int((Double(n) * (1 - s.domainFraction)).rounded()) : 0
            append(dual.sample(count: n - nGeneral, rng: &rng))
            let general = dual.sampleGeneral(count: nGeneral, rng: &rng)
            let targets = anchorTargets(st, general.map(\.tokenIds))
            for (i, it) in general.enumerated() {
                tb.append(ids: it.tokenIds, gate: Int32(k), label: -1, range: m.domains[k].classRange, anchor: targets[i])
            }
        }
    }

    /// Mean-pooled frozen-encoder outputs of general-stream items: the anchoring targets. All
    /// of the stream's items are computed together the first time, `inferenceChunk` at a time in
    /// the stream's order, so a target depends on the buffer alone (exact resume).
    func anchorTargets(_ st: LearnerState, _ seqs: [[Int32]]) -> [[Float]] {
        if st.anchorTargets.isEmpty, let dual = st.dual {
            let C = encoder.config.hidden
            for part in dual.generalItems.map(\.tokenIds).chunks() {
                let pooled = encoder.forward(PackedBatch(Array(part))).meanPooled()
                for (i, s) in part.enumerated() { st.anchorTargets[s] = Array(pooled[(i * C)..<((i + 1) * C)]) }
            }
        }
        return seqs.map { s in
            guard let t = st.anchorTargets[s] else { preconditionFailure("anchorTargets: an item outside the general stream") }
            return t
        }
    }

    /// Stores the new domain's rows (with their logits under gate k when the method replays
    /// logits) in the method's buffer, steering the dual stream's quotas by `forgetting`.
    ///
    /// Stored logits (`loss.logitReplay`) are computed for the kept items only: which items a
    /// buffer keeps depends on their sizes and its generator, not on the logits' values, so the
    /// items go in with zero logits of the right length and the kept ones get theirs afterwards
    /// (in canonical chunks of the kept items). `learn` calls this once per domain, for a domain
    /// the buffer holds nothing of yet.
    func updateBuffers(_ st: LearnerState, rows: [TrainingRow], domain k: Int, forgetting: [Int32: Float], rng: inout SplitMix64) throws {
        let storeLogits = settings.loss.logitReplay > 0, m = st.model, d = Int32(k)
        let placeholder: [Float]? = storeLogits ? [Float](repeating: 0, count: m.domains[k].classRange.count) : nil
        let items = { (rows: [TrainingRow]) in rows.map { ReplayItem(tokenIds: $0.ids, label: $0.label, domain: d, logits: placeholder) } }
        if let res = st.reservoir {
            precondition(!res.items.contains { $0.domain == d }, "updateBuffers: the reservoir already holds domain \(k)")
            res.add(items: items(rows.shuffled(using: &rng)))
            if storeLogits { res.replaceLogits(of: d, with: try m.domainLogits(res.items(of: d).map(\.tokenIds), domain: k)) }
            _ = res.appendLedgerEntry(newDomain: d)
        }
        if let dual = st.dual {
            precondition(dual.items(of: d).isEmpty, "updateBuffers: the dual stream already holds domain \(k)")
            // `addDomain` folds the forgetting signal into the quotas (once: it used to be folded
            // in here as well, which applied the EMA twice per domain)
            try dual.addDomain(d, items: items(rows), forgetting: forgetting)
            if storeLogits { dual.replaceLogits(of: d, with: try m.domainLogits(dual.items(of: d).map(\.tokenIds), domain: k)) }
        }
    }

    /// Refits head `j` (its rows of the head layer, from their current values) on buffered
    /// examples of domain j: pooled features under gate j, full-batch Adam (`SoftmaxRegression`).
    /// Encoder, adapter and gates are untouched, so only the head's alignment to the current
    /// features changes; its AdamW moments are left as they were.
    func realignHead(_ m: ContinualModel, domain j: Int, items: [ReplayItem]) throws {
        let d = m.domains[j], C = m.config.hidden
        let rows = items.filter { d.classRange.contains(Int($0.label)) }
        guard rows.count >= 2 else { return }
        let x = try m.pooled(rows.map(\.tokenIds), gate: j)
        let W = m.store.value(TensorName.headWeight) + d.classOffset * C, b = m.store.value(TensorName.headBias) + d.classOffset
        let cfg = SoftmaxRegression.Config(epochs: settings.realignHeadSteps, batchSize: nil, learningRate: settings.realignLearningRate)
        SoftmaxRegression.fit(features: x, labels: rows.map { $0.label - Int32(d.classOffset) }, dim: C, classes: d.intents.count,
                              weight: W, bias: b, config: cfg)
    }

    /// Fits domain k's intent prototypes and retrains the router on a sample of the new domain
    /// plus every buffered example of the earlier ones (balanced by domain unless the method
    /// says otherwise). Without a buffer the router only ever sees the newest domain.
    func retrainRouter(_ router: DomainRouter, _ st: LearnerState, rows: [TrainingRow], domain k: Int, rng: inout SplitMix64,
                       times: inout PhaseTimes) throws {
        // features once per example, batched: the kept ones of the buffered examples, domain k's
        // in the canonical chunks of its rows (shared by its prototypes and the router)
        let features = try times.time(\.router) { () throws -> [Float] in
            router.retainFeatures(Set(st.routerFeatureKeys(before: k + 1)))
            return try router.domainFeatures(domain: k, sequences: rows.map(\.ids))
        }
        try times.time(\.prototypes) { try router.fitPrototypes(domain: k, examples: rows.map { ($0.ids, $0.label) }, features: features) }
        try times.time(\.router) { try trainRouter(router, st, rows: rows, domain: k, rng: &rng) }
    }

    /// The router's retraining after domain k: a sample of the new domain plus every buffered
    /// example of the earlier ones.
    private func trainRouter(_ router: DomainRouter, _ st: LearnerState, rows: [TrainingRow], domain k: Int, rng: inout SplitMix64) throws {
        var ex = rows.shuffled(using: &rng).prefix(training.routerTraining.newDomainExamples).map { ($0.ids, Int32($0.domain)) }
        ex += st.bufferedItems(before: k).filter { !$0.isGeneral }.map { ($0.tokenIds, $0.domain) }
        var rc = training.routerTraining
        rc.balanced = settings.routerBalanced
        try router.train(ex, config: rc, optimizer: training.optimizer, rng: &rng)
    }
}
