import CKernels
import Foundation

/// The domain router: `Linear(C,Hd) → GELU → dropout → Linear(Hd,K)` on the frozen prefix's
/// mean-pooled hidden state (see `ContinualModel.routerFeatures`). Its weights live in the model's
/// parameter store (group "router"); its optimizer step counter is its own.
public final class DomainRouter {
    unowned let model: ContinualModel
    public internal(set) var step = 0
    /// Frozen features never change, so they are computed once per token sequence.
    private var featureCache: [[Int32]: [Float]] = [:]

    public init(model: ContinualModel) { self.model = model }

    public var hidden: Int { model.spec.routerHidden }
    public var domainCount: Int { model.domains.count }

    /// Router features (B,C) of sequences, cached.
    public func features(_ sequences: [[Int32]]) -> [[Float]] {
        let C = model.config.hidden
        var missing: [[Int32]] = []
        for s in sequences where featureCache[s] == nil { missing.append(s) }
        let f = uncachedFeatures(missing)
        for (i, s) in missing.enumerated() { featureCache[s] = Array(f[(i * C)..<((i + 1) * C)]) }
        return sequences.map { featureCache[$0]! }
    }

    /// Router features (B·C, flat) of sequences, in chunks of 64, not cached.
    func uncachedFeatures(_ sequences: [[Int32]]) -> [Float] {
        var out: [Float] = []
        out.reserveCapacity(sequences.count * model.config.hidden)
        for start in stride(from: 0, to: sequences.count, by: 64) {
            out += model.routerFeatures(PackedBatch(Array(sequences[start..<min(sequences.count, start + 64)])))
        }
        return out
    }

    /// Probabilities over seen domains (B,K) for feature rows (B,C): the MLP's softmax, or with
    /// prototype routing (`ModelSpec.routerPrototypes`) the prototypes' or the fused distribution.
    public func probabilities(_ feats: [Float], count B: Int) -> [Float] {
        let K = domainCount, C = model.config.hidden, Hd = hidden
        var logits = [Float](repeating: 0, count: B * K)
        let s = model.store
        let proto = model.spec.routerPrototypes
        if proto?.mode != .only {
            var hpre = [Float](repeating: 0, count: B * Hd), hact = hpre
            dr_router_forward(&logits, &hpre, &hact, feats, s.value("router.w1"), s.value("router.b1"), s.value("router.w2"),
                              s.value("router.b2"), nil, Int64(B), Int64(C), Int64(Hd), Int64(K))
        }
        if let proto {
            let lp = prototypeLogProbabilities(feats, count: B)
            switch proto.mode {
            case .only: logits = lp
            case .fused:
                // log p_mlp = logits − logsumexp(logits); the per-row constant drops out in the softmax below
                for i in 0..<(B * K) { logits[i] += proto.weight * max(lp[i], -1e4) }
            }
        }
        var probs = [Float](repeating: 0, count: B * K), losses = [Float](repeating: 0, count: B)
        let labels = [Int32](repeating: 0, count: B)
        _ = dr_softmax_xent_forward_backward(&losses, nil, &probs, logits, labels, nil, nil, nil, Int64(B), Int64(K))
        return probs
    }

    /// log p_proto(d|x) (B,K) from the intent prototypes (`dr_prototype_logprob`).
    public func prototypeLogProbabilities(_ feats: [Float], count B: Int) -> [Float] {
        let K = domainCount, C = model.config.hidden, V = model.classCount
        let tau = model.spec.routerPrototypes?.temperature ?? 0.02
        var classDomain = [Int32](repeating: 0, count: V)
        for (d, slot) in model.domains.enumerated() { for c in slot.classRange { classDomain[c] = Int32(d) } }
        var out = [Float](repeating: 0, count: B * K)
        var scratch = [Float](repeating: 0, count: Int(dr_prototype_scratch_size(Int64(B), Int64(V), Int64(K))))
        dr_prototype_logprob(&out, &scratch, feats, model.store.value("router.proto"), classDomain, tau,
                             Int64(B), Int64(C), Int64(V), Int64(K))
        return out
    }

    /// Sets the prototypes of domain `k`'s intents to the mean router feature of their examples
    /// (`label` is the global class). Uses every example given; features are not cached (a
    /// domain's whole training split would stay in memory). Intents without examples keep a zero
    /// prototype (cosine 0).
    public func fitPrototypes(domain k: Int, examples: [(ids: [Int32], label: Int32)]) {
        guard model.spec.routerPrototypes != nil else { return }
        let C = model.config.hidden, r = model.domains[k].classRange
        var sums = [Double](repeating: 0, count: r.count * C), counts = [Int](repeating: 0, count: r.count)
        let f = uncachedFeatures(examples.map(\.ids))
        for (i, e) in examples.enumerated() {
            precondition(r.contains(Int(e.label)), "fitPrototypes: label \(e.label) outside domain \(k)'s classes \(r)")
            let c = Int(e.label) - r.lowerBound
            counts[c] += 1
            for j in 0..<C { sums[c * C + j] += Double(f[i * C + j]) }
        }
        let p = model.store.value("router.proto")
        for c in 0..<r.count {
            for j in 0..<C { p[(r.lowerBound + c) * C + j] = counts[c] > 0 ? Float(sums[c * C + j] / Double(counts[c])) : 0 }
        }
    }

    /// Most likely domain per sequence.
    public func route(_ sequences: [[Int32]]) -> [Int32] {
        let K = domainCount
        guard K > 1 else { return [Int32](repeating: 0, count: sequences.count) }
        let feats = features(sequences).flatMap { $0 }
        let p = probabilities(feats, count: sequences.count)
        return (0..<sequences.count).map { b in
            Int32((0..<K).max { p[b * K + $0] < p[b * K + $1] }!)
        }
    }

    /// Trains on (sequence, domain) pairs; all router rows train (a new domain must be
    /// separable from the old ones, and the old ones come from the replay buffer).
    public func train(_ examples: [(ids: [Int32], domain: Int32)], config: RouterConfig, optimizer base: OptimizerConfig,
                      rng: inout SplitMix64) {
        let K = domainCount, C = model.config.hidden, Hd = hidden
        guard K > 1, !examples.isEmpty else { return }
        let feats = features(examples.map(\.ids))
        var perDomain = [Int](repeating: 0, count: K)
        for e in examples { perDomain[Int(e.domain)] += 1 }
        let s = model.store
        var opt = base
        opt.learningRate = config.learningRate
        opt.clipNorm = 5
        let adam = AdamWStep(config: opt)
        let segments = s.trainableSegments { $0.group == "router" }
        let B = min(config.batchSize, examples.count)
        let p = model.spec.routerDropout
        var x = [Float](repeating: 0, count: B * C), logits = [Float](repeating: 0, count: B * K)
        var hpre = [Float](repeating: 0, count: B * Hd), hact = hpre, mask = hpre, scratch = hpre
        var dlogits = logits, losses = [Float](repeating: 0, count: B), labels = [Int32](repeating: 0, count: B)
        var weights = [Float](repeating: 0, count: B)
        let stepsPerEpoch = (examples.count + B - 1) / B
        let total = stepsPerEpoch * config.epochs
        var order = Array(0..<examples.count)
        var t = 0
        for _ in 0..<config.epochs {
            order.shuffle(using: &rng)
            for start in stride(from: 0, to: order.count - B + 1, by: B) {
                var wsum: Float = 0
                for b in 0..<B {
                    let i = order[start + b]
                    for c in 0..<C { x[b * C + c] = feats[i][c] }
                    labels[b] = examples[i].domain
                    weights[b] = config.balanced ? 1 / Float(perDomain[Int(labels[b])]) : 1
                    wsum += weights[b]
                }
                for b in 0..<B { weights[b] /= wsum }
                for j in 0..<(B * Hd) { mask[j] = rng.nextUnit() < p ? 0 : 1 / (1 - p) }
                s.zeroGrads()
                dr_router_forward(&logits, &hpre, &hact, x, s.value("router.w1"), s.value("router.b1"), s.value("router.w2"),
                                  s.value("router.b2"), mask, Int64(B), Int64(C), Int64(Hd), Int64(K))
                _ = dr_softmax_xent_forward_backward(&losses, &dlogits, nil, logits, labels, nil, nil, weights, Int64(B), Int64(K))
                dr_router_backward(nil, s.grad("router.w1"), s.grad("router.b1"), s.grad("router.w2"), s.grad("router.b2"), &scratch,
                                   dlogits, hpre, hact, x, s.value("router.w1"), s.value("router.w2"), mask,
                                   Int64(B), Int64(C), Int64(Hd), Int64(K))
                step += 1
                adam.apply(s, segments: segments, lr: opt.learningRate(step: t, total: total), t: step)
                t += 1
            }
        }
    }

    /// What a live request costs: router features (uncached), the routed gate, then the gated
    /// pass continuing from the shared frozen prefix (`ContinualModel.resumeLayer`), so routing
    /// adds only the frozen layers between the prefix and `routerLayer`. Returns per sequence the
    /// routed domain and logits over all seen classes (B,V).
    public func routeAndScore(_ sequences: [[Int32]]) -> (domains: [Int32], logits: [Float]) {
        if rescoreTopK > 1 { return routeRescored(sequences, cached: false) }
        let batch = PackedBatch(sequences)
        let K = domainCount
        var gates = [Int32](repeating: 0, count: batch.count)
        if K > 1 {
            let feats = model.routerFeatures(batch)
            let p = probabilities(feats, count: batch.count)
            for b in 0..<batch.count { gates[b] = Int32((0..<K).max { p[b * K + $0] < p[b * K + $1] }!) }
        }
        return (gates, model.continueLogits(batch, gateIds: gates, fromLayer: K > 1 ? model.resumeLayer : 0))
    }

    /// Head rescoring of uncertain routes (`routeRescored`): off when `rescoreTopK` is 1.
    public var rescoreTopK = 1
    public var rescoreThreshold: Float = 0.9

    /// Routing with head rescoring: a sequence whose top router probability is below
    /// `rescoreThreshold` also runs the gated pass of its next `rescoreTopK − 1` domains, and the
    /// domain d maximising log p_router(d) + log max softmax(head_d) wins, so the domains' own
    /// heads settle what the router is unsure of. Costs one extra gated pass per extra candidate,
    /// for the uncertain sequences only. `cached` reuses router features (evaluation); a live
    /// request computes them (`routeAndScore`). Returns the domains and logits (B,V) under them.
    public func routeRescored(_ sequences: [[Int32]], cached: Bool = true) -> (domains: [Int32], logits: [Float]) {
        let B = sequences.count, K = domainCount
        guard K > 1 else { return ([Int32](repeating: 0, count: B), model.logits(sequences, gateIds: [Int32](repeating: 0, count: B))) }
        let feats = cached ? features(sequences).flatMap { $0 } : model.routerFeatures(PackedBatch(sequences))
        return rescore(sequences, probabilities: probabilities(feats, count: B))
    }

    /// `routeRescored` with the router's probabilities (B,K) already computed.
    public func rescore(_ sequences: [[Int32]], probabilities p: [Float]) -> (domains: [Int32], logits: [Float]) {
        let B = sequences.count, K = domainCount, V = model.classCount
        let ranked = (0..<B).map { b in (0..<K).sorted { p[b * K + $0] > p[b * K + $1] } }
        var gates = ranked.map { Int32($0[0]) }
        var logits = model.logits(sequences, gateIds: gates)
        let extra = min(rescoreTopK, K) - 1
        let uncertain = (0..<B).filter { p[$0 * K + ranked[$0][0]] < rescoreThreshold }
        guard extra > 0, !uncertain.isEmpty else { return (gates, logits) }
        func score(_ row: ArraySlice<Float>, domain d: Int, prob: Float) -> Float {
            let r = model.domains[d].classRange
            let top = r.map { row[row.startIndex + $0] }.max()!
            var z: Float = 0
            for c in r { z += expf(row[row.startIndex + c] - top) }
            return logf(max(prob, 1e-12)) - logf(z)  // log p(d) + log max softmax
        }
        var best = uncertain.map { b in score(logits[(b * V)..<((b + 1) * V)], domain: Int(gates[b]), prob: p[b * K + Int(gates[b])]) }
        for rank in 1...extra {
            let cand = uncertain.map { Int32(ranked[$0][rank]) }
            let lg = model.logits(uncertain.map { sequences[$0] }, gateIds: cand)
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

    /// Drops cached features (e.g. when the base model changes — it never does for adapters).
    public func clearCache() { featureCache.removeAll() }
}
