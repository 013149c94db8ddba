import CKernels
import Foundation

/// The one route-then-score path: router (MLP + prototypes) → gate → gated encoder pass → head
/// of the routed domain → softmax, with optional head rescoring of uncertain routes. `predict`,
/// the evaluator, the latency bench and the export check all go through it.
///
/// Without a router the newest domain's gates run and the argmax over every seen class decides
/// the domain (class-incremental methods).
public final class RoutedPredictor {
    public let model: ContinualModel
    public let router: DomainRouter?
    /// Head rescoring: a sequence whose top router probability is below `rescoreThreshold` also
    /// runs the gated passes of its next `rescoreTopK − 1` domains, and the domain d maximising
    /// log p_router(d) + `headEvidence`(head_d) wins (1 = off).
    public let rescoreTopK: Int
    public let rescoreThreshold: Float

    /// `rescoreTopK` 1 turns rescoring off (the threshold is then unused).
    public init(model: ContinualModel, router: DomainRouter?, rescoreTopK: Int = 1, rescoreThreshold: Float = ConfigDefaults.rescoreThreshold) {
        self.model = model
        self.router = router
        self.rescoreTopK = rescoreTopK
        self.rescoreThreshold = rescoreThreshold
    }

    /// The predictor a method's settings describe (its rescoring).
    public convenience init(model: ContinualModel, router: DomainRouter?, settings: MethodSettings) {
        self.init(model: model, router: router, rescoreTopK: settings.routerRescoreTopK, rescoreThreshold: settings.routerRescoreThreshold)
    }

    /// Where router features come from. `live`: computed by the request's own pass, which then
    /// continues from the shared frozen prefix (`ContinualModel.resumeLayer`); `cached`: the
    /// router's cache of canonical chunks (`DomainRouter.chunkFeatures`: evaluation, where the same
    /// chunks of the same rows are routed after every domain).
    public enum Features { case live, cached }

    /// Logits (B,V) already computed for the batch under one gate (the evaluator's oracle pass):
    /// rows routed to that gate reuse them; only the others run a pass of their own.
    public struct KnownLogits {
        public var gate: Int
        public var logits: [Float]
        public init(gate: Int, logits: [Float]) { self.gate = gate; self.logits = logits }
    }

    /// Per sequence: the routed domain, the predicted global class, the logits (B,V) under the
    /// routed gate and the router's probabilities (B,K; nil without a router).
    public struct Output {
        public var domains: [Int] = []
        public var classes: [Int] = []
        public var logits: [Float] = []
        public var probabilities: [Float]?
        public var count: Int { domains.count }

        /// Softmax probability of the predicted class within its domain's classes.
        public func confidence(_ b: Int, model: ContinualModel) -> Double {
            let r = model.domains[domains[b]].classRange, V = model.classCount, top = logits[b * V + classes[b]]
            var z = 0.0
            for c in r { z += exp(Double(logits[b * V + c] - top)) }
            return 1 / z
        }
    }

    /// Routes and scores every sequence, `inferenceChunk` at a time.
    public func predict(_ sequences: [[Int32]], features: Features) -> Output {
        var out = Output()
        out.probabilities = router == nil ? nil : []
        for part in sequences.chunks() {
            let o = predictChunk(Array(part), features: features)
            out.domains += o.domains
            out.classes += o.classes
            out.logits += o.logits
            if let p = o.probabilities { out.probabilities! += p }
        }
        return out
    }

    /// Routes and scores one batch (at most `inferenceChunk` sequences for evaluation's exact numbers).
    public func predictChunk(_ seqs: [[Int32]], features: Features, known: KnownLogits? = nil) -> Output {
        let m = model, B = seqs.count, K = m.domains.count, V = m.classCount
        precondition(K > 0, "RoutedPredictor: no domain learned yet")
        var out = Output()
        guard let router else {
            let lg = m.adapterLayers.isEmpty && known != nil ? known!.logits
                : m.logits(seqs, gateIds: [Int32](repeating: Int32(K - 1), count: B))
            out.logits = lg
            for b in 0..<B {
                let c = argmax(lg, row: b, width: V, in: 0..<V)
                out.classes.append(c)
                out.domains.append(m.domains.firstIndex { $0.classRange.contains(c) }!)
            }
            return out
        }
        var gates = [Int32](repeating: 0, count: B)
        var logits: [Float]
        if K == 1 {
            out.probabilities = [Float](repeating: 1, count: B)
            logits = known?.gate == 0 ? known!.logits : m.logits(seqs, gateIds: gates)
        } else {
            let batch = PackedBatch(seqs)
            let feats = features == .live ? m.routerFeatures(batch) : router.chunkFeatures(batch)
            let p = router.probabilities(feats, count: B)
            out.probabilities = p
            for b in 0..<B { gates[b] = Int32(argmax(p, row: b, width: K, in: 0..<K)) }
            if rescoreTopK > 1 {
                (gates, logits) = rescore(seqs, probabilities: p)
            } else if let known {
                logits = known.logits
                // correctly routed rows have exactly the known logits (same gate and head); only
                // the others need a gated pass of their own (none when there are no gates)
                let other = (0..<B).filter { Int(gates[$0]) != known.gate }
                if !other.isEmpty && !m.adapterLayers.isEmpty {
                    let lg = m.logits(other.map { seqs[$0] }, gateIds: other.map { gates[$0] })
                    for (i, b) in other.enumerated() { for c in 0..<V { logits[b * V + c] = lg[i * V + c] } }
                }
            } else if features == .live {
                logits = m.continueLogits(batch, gateIds: gates, fromLayer: m.resumeLayer)
            } else {
                logits = m.logits(seqs, gateIds: gates)
            }
        }
        out.logits = logits
        for b in 0..<B {
            let d = Int(gates[b])
            out.domains.append(d)
            out.classes.append(argmax(logits, row: b, width: V, in: m.domains[d].classRange))
        }
        return out
    }

    /// How sure head d is of its best intent, on a scale that does not depend on its size:
    /// 1 + log max softmax / log n = (log max softmax − log(1/n)) / log n, in [0, 1] (0: uniform over
    /// its n intents, 1: certain), and 0 for a one-intent head, which cannot tell anything.
    /// A plain log max softmax would let smaller heads win by count: a one-intent head scores
    /// log 1 = 0, the best possible, and a uniform n-intent head −log n.
    /// `row` is one sequence's logits over every class (V), `classes` head d's range in it.
    public static func headEvidence(_ row: ArraySlice<Float>, classes r: Range<Int>) -> Float {
        guard r.count > 1 else { return 0 }
        let top = r.map { row[row.startIndex + $0] }.max()!
        var z: Float = 0
        for c in r { z += expf(row[row.startIndex + c] - top) }
        return 1 - logf(z) / logf(Float(r.count))
    }

    /// Head rescoring of the uncertain sequences, given the router's probabilities (B,K):
    /// returns the domains and logits (B,V) under them. One extra gated pass per extra candidate.
    func rescore(_ sequences: [[Int32]], probabilities p: [Float]) -> (domains: [Int32], logits: [Float]) {
        let m = model, B = sequences.count, K = m.domains.count, V = m.classCount
        let ranked = (0..<B).map { b in (0..<K).sorted { p[b * K + $0] > p[b * K + $1] } }
        var gates = ranked.map { Int32($0[0]) }
        var logits = m.logits(sequences, gateIds: gates)
        let extra = min(rescoreTopK, K) - 1
        let uncertain = (0..<B).filter { p[$0 * K + ranked[$0][0]] < rescoreThreshold }
        guard extra > 0, !uncertain.isEmpty else { return (gates, logits) }
        func score(_ row: ArraySlice<Float>, domain d: Int, prob: Float) -> Float {
            logf(max(prob, 1e-12)) + RoutedPredictor.headEvidence(row, classes: m.domains[d].classRange)
        }
        var best = uncertain.map { b in score(logits[(b * V)..<((b + 1) * V)], domain: Int(gates[b]), prob: p[b * K + Int(gates[b])]) }
        for rank in 1...extra {
            let cand = uncertain.map { Int32(ranked[$0][rank]) }
            let lg = m.logits(uncertain.map { sequences[$0] }, gateIds: cand)
            for (i, b) in uncertain.enumerated() {
                let d = Int(cand[i])
                let sc = score(lg[(i * V)..<((i + 1) * V)], domain: d, prob: p[b * K + d])
                if sc > best[i] {
                    best[i] = sc
                    gates[b] = cand[i]
                    for c in 0..<V { logits[b * V + c] = lg[i * V + c] }
                }
            }
        }
        return (gates, logits)
    }
}
