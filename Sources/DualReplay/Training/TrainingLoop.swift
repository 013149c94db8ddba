import Foundation

/// Where a training phase (one domain's epochs) stands after a step: with the parameter store's
/// three arrays, enough to continue it bit for bit (`TrainingLoop.resume`).
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

/// Errors of a training or experiment run.
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

/// A labelled training example: token ids, the gate (domain index) it trains and its global class.
/// A synthesized multi-intent example (`MultiIntentSynthesis`) also has `extraLabels`, its other
/// gold classes (all in the same domain); single-intent rows have none.
public struct TrainingRow: Sendable {
    public var ids: [Int32]
    public var domain: Int
    public var label: Int32
    public var extraLabels: [Int32]
    public init(ids: [Int32], domain: Int, label: Int32, extraLabels: [Int32] = []) {
        self.ids = ids; self.domain = domain; self.label = label; self.extraLabels = extraLabels
    }
}

/// The checkpointed loop of one phase: epochs of shuffled new examples, each batch topped up with
/// replay, one AdamW step per batch. Checkpoints every `checkpointEvery` steps (0: never) and
/// when `shouldStop` asks; `resume` continues a checkpointed phase instead of starting over.
public final class TrainingLoop {
    public var checkpointEvery = 0
    public var onCheckpoint: ((PhaseCheckpoint) throws -> Void)?
    public var shouldStop: () -> Bool = { false }
    /// Sees the phase's step count after every step (crash tests).
    public var afterStep: ((Int) -> Void)?
    /// Consumed by the next phase.
    public var resume: PhaseCheckpoint?
    public var progress: (String) -> Void = { _ in }

    public init() {}

    /// Trains `m` on `examples` for `s.epochs`, mixing `replay(batch, count, rng)` rows into every
    /// batch; `policies` shape each step's gradients. Returns the examples seen (new + replay).
    public func run(_ m: ContinualModel, _ s: MethodSettings, optimizer base: OptimizerConfig, examples: [TrainingRow],
                    policies: [TrainingPolicy], replay: (inout TrainingBatch, Int, inout SplitMix64) -> Void,
                    rng: inout SplitMix64, label: String) throws -> Int {
        let newPerBatch = max(1, Int((Double(s.batchSize) * (1 - s.replayShare)).rounded()))
        let replayPerBatch = s.batchSize - newPerBatch
        let stepsPerEpoch = (examples.count + newPerBatch - 1) / newPerBatch
        let total = stepsPerEpoch * s.epochs
        var opt = base
        opt.learningRate = s.learningRate
        let adam = AdamWStep(config: opt)
        var order = Array(examples.indices)
        var step = 0, seen = 0, firstEpoch = 0, firstNext = 0
        let currentDomain = m.domains.count - 1
        let domainName = m.domains.last?.name ?? "?"
        if let r = resume {
            resume = nil
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
            try onCheckpoint(m.store.withArrays { v, m1, m2 in PhaseCheckpoint(progress: p, values: v, moment1: m1, moment2: m2) })
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
                    tb.append(ids: e.ids, gate: Int32(e.domain), label: e.label, range: m.domains[e.domain].classRange, extraLabels: e.extraLabels)
                }
                if replayPerBatch > 0 { replay(&tb, replayPerBatch, &rng) }
                if s.lossOverSeen {
                    // class-incremental: the softmax covers every intent seen so far (logit
                    // targets keep their own domain's range through `logitRanges`)
                    tb.scopeToAllSeen(classCount: m.classCount)
                }
                let parts = try m.trainStep(tb, weights: s.loss, optimizer: adam, lr: opt.learningRate(step: step, total: total)) {
                    for p in policies { p.gradientsReady(m, domain: currentDomain) }
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
}
