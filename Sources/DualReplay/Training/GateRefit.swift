import Foundation

/// The remedy for alignment drift (spurious forgetting): an earlier domain whose head lost F1
/// while a linear probe on its current features did not gets a FRESH task-conditioned gate row
/// (every adapter layer) and a fresh head, trained on its buffered examples with the encoder,
/// the shared adapter, the router and every other domain's rows frozen. The candidate is kept only
/// if the domain's validation F1 improves; otherwise the model is left exactly as it was.
/// Used after each domain by a method with `heads.driftRefitSteps` > 0 (`DomainTrainer.learn`) and
/// on a saved state by `dualreplay remediate` (`ContinualState.remediate`).
public enum GateRefit {
    /// What was diagnosed and done for one earlier domain.
    public struct Outcome: Codable, Equatable, Sendable {
        public var domain: String
        /// The drift check on validation rows (`DomainTrainer.driftDiagnosis`).
        public var diagnosis: ProbeDiagnosis
        /// Buffered examples the candidate trained on.
        public var examples: Int
        /// Validation macro-F1 (oracle: its own gate and head) before and with the candidate.
        public var validationF1Before: Double
        public var validationF1Candidate: Double
        /// The candidate replaced the gate row and head (its validation F1 is higher).
        public var kept: Bool
    }

    /// Gate refitting of one domain: Adam steps, their learning rate and rows per step.
    public struct Config: Sendable {
        public var steps: Int
        public var learningRate: Float
        public var batchSize: Int
        public var seed: UInt64
        public init(steps: Int, learningRate: Float, batchSize: Int, seed: UInt64) {
            self.steps = steps
            self.learningRate = learningRate
            self.batchSize = batchSize
            self.seed = seed
        }
    }
}

extension DomainTrainer {
    /// The linear-probe drift check of earlier domain `j` on its validation rows: head F1 when
    /// learned (`headF1AtLearning`, its best validation F1 so far) and now; a probe fitted now on
    /// the pooled features (under gate j) of its buffered examples, scored on the same rows. The
    /// probe's reference when learned is the head's: the head was fitted on those features then,
    /// and a state keeps no probe of that time (nor the training rows to fit one).
    public func driftDiagnosis(_ st: LearnerState, domain j: Int, validation rows: [IntentExample],
                               headF1AtLearning: Double, headF1Now: Double) throws -> ProbeDiagnosis {
        let m = st.model, d = m.domains[j]
        let items = st.bufferedItems(of: j).filter { d.classRange.contains(Int($0.label)) }
        var probeNow = Double.nan
        if items.count >= 2, !rows.isEmpty, d.intents.count > 1 {
            let evaluator = Evaluator(predictor: RoutedPredictor(model: m, router: nil), tokens: tokens)
            let local = evaluator.labels(rows, domain: j).map { $0 - Int32(d.classOffset) }
            probeNow = LinearProbe.fitAndScore(trainFeatures: try m.pooled(items.map(\.tokenIds), gate: j),
                                               trainLabels: items.map { $0.label - Int32(d.classOffset) },
                                               testFeatures: try m.pooled(tokens.ids(rows.map(\.text)), gate: j), testLabels: local,
                                               dim: m.config.hidden, classes: d.intents.count)
        }
        return ProbeDiagnosis(domain: d.name, headF1AtLearning: headF1AtLearning, headF1Now: headF1Now,
                              probeF1AtLearning: headF1AtLearning, probeF1Now: probeNow)
    }

    /// Refits domain `j`'s gate row and head from scratch on `items` (its buffered examples),
    /// everything else frozen; keeps the candidate only if validation F1 on `validation` rises.
    /// Values outside gate row j and head j, every AdamW moment, the optimizer step counter and
    /// which tensors train are the same afterwards as before.
    public func refitGate(_ m: ContinualModel, domain j: Int, items: [ReplayItem], validation: [IntentExample],
                          config: GateRefit.Config) throws -> (before: Double, candidate: Double, kept: Bool, examples: Int) {
        let d = m.domains[j], C = m.config.hidden, R = m.spec.bottleneck
        let oracle = Evaluator(predictor: RoutedPredictor(model: m, router: nil), tokens: tokens)
        let before = try oracle.oracleF1(domain: j, examples: validation)
        let rows = items.filter { d.classRange.contains(Int($0.label)) }
        guard rows.count >= 2, d.intents.count > 1, !m.adapterLayers.isEmpty, config.steps > 0 else { return (before, before, false, rows.count) }
        let store = m.store
        let saved = store.withArrays { v, m1, m2 in (v, m1, m2) }
        let flags = store.tensors.map { ($0.name, $0.trainable, $0.trainableRows) }
        func restore() {
            store.load(values: saved.0, moment1: saved.1, moment2: saved.2)
            for (name, trainable, rows) in flags {
                store.setTrainable(trainable) { $0.name == name }
                store.setTrainableRows(name, rows)
            }
            m.rebuildViews()
        }
        // fresh rows: the method's gate initialisation, a new head (as `addDomain` draws one)
        var rng = SplitMix64(seed: config.seed)
        let on = (0..<R).map { _ in settings.gateInit == .mask ? (rng.nextUnit() < settings.gateMaskFraction ? Float(1) : 0) : m.spec.gateInit }
        for slot in m.adapterLayers.indices {
            let g = store.value(TensorName.gates(slot)) + j * R
            for r in 0..<R { g[r] = on[r] }
        }
        let W = store.value(TensorName.headWeight) + d.classOffset * C, b = store.value(TensorName.headBias) + d.classOffset
        for i in 0..<(d.intents.count * C) { W[i] = rng.nextGaussian() * 0.02 }
        for i in 0..<d.intents.count { b[i] = 0 }
        // only gate row j and head j train, from zero moments
        store.setTrainable(false) { _ in true }
        store.setTrainable(true) { $0.name == TensorName.headWeight || $0.name == TensorName.headBias || $0.group == "gate" }
        for slot in m.adapterLayers.indices { store.setTrainableRows(TensorName.gates(slot), j..<(j + 1)) }
        store.setTrainableRows(TensorName.headWeight, d.classRange)
        store.setTrainableRows(TensorName.headBias, d.classRange)
        m.rebuildViews()
        store.withArrays { v, m1, _ in
            let zeros = [Float](repeating: 0, count: m1.count)
            store.load(values: v, moment1: zeros, moment2: zeros)
        }
        var opt = training.optimizer
        opt.learningRate = config.learningRate
        let adam = AdamWStep(config: opt)
        let segments = store.trainableSegments { $0.group != "router" }
        var order = Array(rows.indices)
        let B = max(1, min(config.batchSize, rows.count))
        var start = rows.count
        do {
            for t in 0..<config.steps {
                if start + B > rows.count { order.shuffle(using: &rng); start = 0 }
                var tb = TrainingBatch()
                for i in order[start..<(start + B)] {
                    tb.append(ids: rows[i].tokenIds, gate: Int32(j), label: rows[i].label, range: d.classRange)
                }
                start += B
                let parts = try m.computeGradients(tb, weights: LossWeights())
                guard parts.total.isFinite else { throw TrainingError.nonFinite(what: "gate refit loss", step: t + 1, domain: d.name) }
                _ = adam.apply(store, segments: segments, lr: opt.learningRate(step: t, total: config.steps), t: t + 1)
            }
        } catch {
            restore()
            throw error
        }
        let candidate = try oracle.oracleF1(domain: j, examples: validation)
        let gates = m.adapterLayers.indices.map { slot in Array(UnsafeBufferPointer(start: store.value(TensorName.gates(slot)) + j * R, count: R)) }
        let head = (Array(UnsafeBufferPointer(start: W, count: d.intents.count * C)), Array(UnsafeBufferPointer(start: b, count: d.intents.count)))
        restore()
        let kept = candidate > before
        if kept {
            for slot in m.adapterLayers.indices {
                let g = store.value(TensorName.gates(slot)) + j * R
                for r in 0..<R { g[r] = gates[slot][r] }
            }
            let W2 = store.value(TensorName.headWeight) + d.classOffset * C, b2 = store.value(TensorName.headBias) + d.classOffset
            for i in 0..<head.0.count { W2[i] = head.0[i] }
            for i in 0..<head.1.count { b2[i] = head.1[i] }
        }
        return (before, candidate, kept, rows.count)
    }

    /// The remedy for every earlier domain (before `k`) with two or more intents that the drift
    /// check classes as alignment drift; `headF1AtLearning[j]` / `headF1Now[j]` are its best and
    /// current validation F1. Each refit draws from its own generator (seeded by the domain's name
    /// and the number of domains), not the training generator.
    func refitDriftingGates(_ st: LearnerState, validation: [[IntentExample]], headF1AtLearning: [Double], headF1Now: [Double],
                            before k: Int) throws -> [GateRefit.Outcome] {
        guard let steps = settings.driftRefitSteps, steps > 0 else { return [] }
        return try (0..<k).compactMap { j in
            do {
                return try refitIfDrifting(st, domain: j, validation: validation[j], headF1AtLearning: headF1AtLearning[j],
                                           headF1Now: headF1Now[j], steps: steps)
            } catch let e as JobError {
                throw e  // a rank failed: every rank stops (a failed refit alone is only skipped)
            } catch {
                return nil
            }
        }
    }

    /// After a kept refit of domain `j`: its buffered items' stored logits (logit replay) become
    /// those of the new gate and head, so later distillation does not pull it back to the old one.
    public func refreshStoredLogits(_ st: LearnerState, domain j: Int) throws {
        guard let dual = st.dual else { return }
        let items = dual.items(of: Int32(j))
        guard items.contains(where: { $0.logits != nil }) else { return }
        dual.replaceLogits(of: Int32(j), with: try st.model.domainLogits(items.map(\.tokenIds), domain: j))
    }

    /// Diagnoses domain `j` and, if it is alignment drift, refits its gate (nil: not drifting).
    public func refitIfDrifting(_ st: LearnerState, domain j: Int, validation: [IntentExample], headF1AtLearning: Double,
                                headF1Now: Double, steps: Int) throws -> GateRefit.Outcome? {
        let m = st.model, d = m.domains[j]
        guard d.intents.count > 1 else { return nil }
        let diagnosis = try driftDiagnosis(st, domain: j, validation: validation, headF1AtLearning: headF1AtLearning, headF1Now: headF1Now)
        guard diagnosis.kind == .alignmentDrift else { return nil }
        let cfg = GateRefit.Config(steps: steps, learningRate: settings.driftRefitLearningRate ?? settings.learningRate,
                                   batchSize: settings.batchSize, seed: FNV1a.of(d.name) &+ UInt64(m.domains.count) &* 0x9E37)
        let r = try refitGate(m, domain: j, items: st.bufferedItems(of: j), validation: validation, config: cfg)
        if r.kept { try refreshStoredLogits(st, domain: j) }
        return GateRefit.Outcome(domain: d.name, diagnosis: diagnosis, examples: r.examples, validationF1Before: r.before,
                                 validationF1Candidate: r.candidate, kept: r.kept)
    }
}
