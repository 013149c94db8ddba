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

    /// Router features (B,C) of sequences, cached. A cached feature is computed for its sequence
    /// alone (a batch of one): a batched GEMM may round a row differently depending on the rows
    /// beside it, and what a cache holds must not depend on which sequences happened to be missing
    /// together earlier in the process, or a resumed run (empty cache) would differ in the last
    /// bits from an uninterrupted one.
    public func features(_ sequences: [[Int32]]) -> [[Float]] {
        sequences.map { s in
            if let f = cacheLock.withLock({ featureCache[s] }) { return f }
            let f = model.routerFeatures(PackedBatch([s]))
            cacheLock.withLock { featureCache[s] = f }
            return f
        }
    }

    /// Router features (B·C, flat) of one canonical chunk that is routed again and again
    /// (evaluation rows after every domain), computed in one batched pass the first time and
    /// cached by the whole chunk: the same chunk always gets the same bits, however the run got
    /// there (a resumed run recomputes the identical chunk).
    public func chunkFeatures(_ batch: PackedBatch) -> [Float] {
        if let f = cacheLock.withLock({ chunkCache[batch] }) { return f }
        let f = model.routerFeatures(batch)
        cacheLock.withLock { chunkCache[batch] = f }
        return f
    }
    private var chunkCache: [PackedBatch: [Float]] = [:]
    /// The two caches are read and filled by the chunks of a parallel inference map at once.
    private let cacheLock = NSLock()

    /// The router feature of one training example: its domain and its token ids.
    public struct FeatureKey: Hashable, Sendable {
        public var domain: Int32
        public var ids: [Int32]
        public init(domain: Int32, ids: [Int32]) { self.domain = domain; self.ids = ids }
    }

    /// Router features of training examples. A domain's features are computed once, batched, in
    /// the canonical chunks of its training rows (`domainFeatures`), when it is learned; the ones
    /// of its buffered examples are kept (`retainFeatures`) and saved with a production state
    /// (`State/RouterFeatureFile.swift`), so a later retraining, in this process or in another,
    /// reads the same bits and never recomputes them.
    public private(set) var trainingFeatures: [FeatureKey: [Float]] = [:]

    /// Batched passes `domainFeatures` has run so far (for tests of the work saved).
    public private(set) var trainingFeaturePasses = 0

    /// Router features (flat, B·C) of domain `k`'s training sequences, computed in their canonical
    /// chunks (`inferenceChunk` in the order given) and kept for router training; the first
    /// occurrence of a repeated sequence is the one kept.
    /// Sharded over the ranks (a collective call): every rank keeps every feature.
    public func domainFeatures(domain k: Int, sequences: [[Int32]]) throws -> [Float] {
        let f = try uncachedFeatures(sequences)
        trainingFeaturePasses += (sequences.count + inferenceChunk - 1) / inferenceChunk
        let C = model.config.hidden
        for (i, s) in sequences.enumerated() {
            let key = FeatureKey(domain: Int32(k), ids: s)
            if trainingFeatures[key] == nil { trainingFeatures[key] = Array(f[(i * C)..<((i + 1) * C)]) }
        }
        return f
    }

    /// Drops every training feature whose example is not in `keep` (the buffered examples): memory
    /// stays bounded by the buffer, not by the number of domains learned.
    public func retainFeatures(_ keep: Set<FeatureKey>) {
        trainingFeatures = trainingFeatures.filter { keep.contains($0.key) }
    }

    /// Restores saved training features (`RouterFeatureFile`); each must have C floats.
    public func restoreFeatures(_ saved: [(key: FeatureKey, feature: [Float])]) {
        for (k, f) in saved {
            precondition(f.count == model.config.hidden, "a router feature has \(f.count) floats, the encoder \(model.config.hidden)")
            trainingFeatures[k] = f
        }
    }

    /// Router features (B·C, flat) of sequences, `inferenceChunk` at a time, not cached (sharded
    /// over the ranks: a collective call).
    func uncachedFeatures(_ sequences: [[Int32]]) throws -> [Float] {
        Array(try model.map(chunksOf: sequences) { model.routerFeatures(PackedBatch($0)) }.joined())
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
            dr_router_forward(&logits, &hpre, &hact, feats, s.value(TensorName.routerW1), s.value(TensorName.routerB1), s.value(TensorName.routerW2),
                              s.value(TensorName.routerB2), nil, Int64(B), Int64(C), Int64(Hd), Int64(K))
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
        dr_prototype_logprob(&out, &scratch, feats, model.store.value(TensorName.routerPrototypes), classDomain, tau,
                             Int64(B), Int64(C), Int64(V), Int64(K))
        return out
    }

    /// Sets the prototypes of domain `k`'s intents to the mean router feature of their examples
    /// (`label` is the global class). Uses every example given, with their features from
    /// `domainFeatures` (computed here when not given, and kept for router training). Intents
    /// without examples keep a zero prototype (cosine 0).
    public func fitPrototypes(domain k: Int, examples: [(ids: [Int32], label: Int32)], features given: [Float]? = nil) throws {
        let f = try given ?? domainFeatures(domain: k, sequences: examples.map(\.ids))
        guard model.spec.routerPrototypes != nil else { return }
        let C = model.config.hidden, r = model.domains[k].classRange
        precondition(f.count == examples.count * C, "fitPrototypes: \(f.count) feature floats for \(examples.count) examples")
        var sums = [Double](repeating: 0, count: r.count * C), counts = [Int](repeating: 0, count: r.count)
        for (i, e) in examples.enumerated() {
            precondition(r.contains(Int(e.label)), "fitPrototypes: label \(e.label) outside domain \(k)'s classes \(r)")
            let c = Int(e.label) - r.lowerBound
            counts[c] += 1
            for j in 0..<C { sums[c * C + j] += Double(f[i * C + j]) }
        }
        let p = model.store.value(TensorName.routerPrototypes)
        for c in 0..<r.count {
            for j in 0..<C { p[(r.lowerBound + c) * C + j] = counts[c] > 0 ? Float(sums[c * C + j] / Double(counts[c])) : 0 }
        }
    }

    /// The training features of (sequence, domain) pairs. A pair without one (a state saved
    /// before features were kept) gets it from its domain's missing sequences, batched in the
    /// canonical chunks of their order here, and keeps it.
    func trainingFeatures(of examples: [(ids: [Int32], domain: Int32)]) throws -> [[Float]] {
        var missing: [Int32: [[Int32]]] = [:], seen = Set<FeatureKey>()
        for e in examples {
            let key = FeatureKey(domain: e.domain, ids: e.ids)
            if trainingFeatures[key] == nil, seen.insert(key).inserted { missing[e.domain, default: []].append(e.ids) }
        }
        for d in missing.keys.sorted() { _ = try domainFeatures(domain: Int(d), sequences: missing[d]!) }
        return examples.map { trainingFeatures[FeatureKey(domain: $0.domain, ids: $0.ids)]! }
    }

    /// Trains on (sequence, domain) pairs; all router rows train (a new domain must be
    /// separable from the old ones, and the old ones come from the replay buffer).
    public func train(_ examples: [(ids: [Int32], domain: Int32)], config: RouterConfig, optimizer base: OptimizerConfig,
                      rng: inout SplitMix64) throws {
        let K = domainCount, C = model.config.hidden, Hd = hidden
        guard K > 1, !examples.isEmpty else { return }
        let feats = try trainingFeatures(of: examples)
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
                dr_router_forward(&logits, &hpre, &hact, x, s.value(TensorName.routerW1), s.value(TensorName.routerB1), s.value(TensorName.routerW2),
                                  s.value(TensorName.routerB2), mask, Int64(B), Int64(C), Int64(Hd), Int64(K))
                _ = dr_softmax_xent_forward_backward(&losses, &dlogits, nil, logits, labels, nil, nil, weights, Int64(B), Int64(K))
                dr_router_backward(nil, s.grad(TensorName.routerW1), s.grad(TensorName.routerB1), s.grad(TensorName.routerW2), s.grad(TensorName.routerB2), &scratch,
                                   dlogits, hpre, hact, x, s.value(TensorName.routerW1), s.value(TensorName.routerW2), mask,
                                   Int64(B), Int64(C), Int64(Hd), Int64(K))
                step += 1
                adam.apply(s, segments: segments, lr: opt.learningRate(step: t, total: total), t: step)
                t += 1
            }
        }
    }
}
