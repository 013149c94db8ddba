import CKernels
import Foundation

/// One training batch as the step sees it. Rows with label -1 carry no classification loss
/// (general text); `logitTargets[i]` (over the row's class range) adds logit replay (DER);
/// `anchorTargets[i]` (C floats) adds the representation-anchoring loss. `extraLabels[i]`: the
/// further gold classes of a multi-intent row (empty for single-intent rows); a row with extras
/// trains the soft-target loss over {labels[i]} ∪ extraLabels[i].
public struct TrainingBatch {
    public var sequences: [[Int32]] = []
    public var gateIds: [Int32] = []
    public var labels: [Int32] = []
    public var extraLabels: [[Int32]] = []
    public var rangeLo: [Int32] = []
    public var rangeHi: [Int32] = []
    public var logitTargets: [[Float]?] = []
    public var anchorTargets: [[Float]?] = []
    public init() {}
    /// Per-row class range of the stored logits (DER), when it differs from the loss range.
    public var logitLo: [Int32]? = nil
    public var logitHi: [Int32]? = nil
    public var count: Int { sequences.count }

    /// Rows `r` of the batch (a data-parallel chunk).
    public func rows(_ r: Range<Int>) -> TrainingBatch {
        var c = TrainingBatch()
        c.sequences = Array(sequences[r]); c.gateIds = Array(gateIds[r]); c.labels = Array(labels[r])
        c.extraLabels = Array(extraLabels[r])
        c.rangeLo = Array(rangeLo[r]); c.rangeHi = Array(rangeHi[r])
        c.logitTargets = Array(logitTargets[r]); c.anchorTargets = Array(anchorTargets[r])
        c.logitLo = logitLo.map { Array($0[r]) }; c.logitHi = logitHi.map { Array($0[r]) }
        return c
    }

    /// Widens every row's classification range to all `classCount` seen classes, keeping the
    /// stored logits' own ranges for logit replay.
    public mutating func scopeToAllSeen(classCount: Int) {
        logitLo = rangeLo
        logitHi = rangeHi
        rangeLo = [Int32](repeating: 0, count: count)
        rangeHi = [Int32](repeating: Int32(classCount), count: count)
    }
    public mutating func append(ids: [Int32], gate: Int32, label: Int32, range: Range<Int>, logits: [Float]? = nil, anchor: [Float]? = nil,
                                extraLabels extra: [Int32] = []) {
        sequences.append(ids); gateIds.append(gate); labels.append(label); extraLabels.append(extra)
        rangeLo.append(Int32(range.lowerBound)); rangeHi.append(Int32(range.upperBound))
        logitTargets.append(logits); anchorTargets.append(anchor)
    }
}

public struct LossWeights: Codable, Equatable, Sendable {
    public var classification: Float = 1
    public var logitReplay: Float = 0
    public var anchor: Float = 0
    public var orthogonality: Float = 0
    public init() {}
}

public struct LossParts: Sendable {
    public var classification = 0.0, logitReplay = 0.0, anchor = 0.0, orthogonality = 0.0
    public var gradNorm: Float = 0
    public var total: Double { classification + logitReplay + anchor + orthogonality }
}

public enum TrainingError: LocalizedError, Equatable {
    case nonFinite(what: String, step: Int, domain: String)
    case invalidBatch(String)
    public var errorDescription: String? {
        switch self {
        case let .nonFinite(what, step, domain): return "\(what) is NaN or Inf at step \(step) of domain '\(domain)': training stopped"
        case .invalidBatch(let s): return "invalid batch: \(s)"
        }
    }
}

extension ContinualModel {
    /// Forward, losses, backward and one AdamW update of the trainable segments.
    /// `beforeUpdate` may reshape the gradients (e.g. protect bottleneck channels of earlier domains).
    public func trainStep(_ tb: TrainingBatch, weights: LossWeights, optimizer: AdamWStep, lr: Float,
                          beforeUpdate: () -> Void = {}) throws -> LossParts {
        var parts = try computeGradients(tb, weights: weights)
        guard parts.total.isFinite else {
            throw TrainingError.nonFinite(what: "loss", step: optimizerStep + 1, domain: domains.last?.name ?? "?")
        }
        beforeUpdate()
        optimizerStep += 1
        let segments = store.trainableSegments { $0.group != "router" }
        var scales: [Float]? = nil
        if sharedLRScale != 1 {
            let shared = Set(store.trainableSegments { $0.group != "router" && TensorName.isSharedAdapter($0.name) }.map(\.offset))
            scales = segments.map { shared.contains($0.offset) ? sharedLRScale : 1 }
        }
        parts.gradNorm = optimizer.apply(store, segments: segments, lr: lr, t: optimizerStep, scales: scales)
        guard parts.gradNorm.isFinite else {
            throw TrainingError.nonFinite(what: "gradient norm", step: optimizerStep, domain: domains.last?.name ?? "?")
        }
        return parts
    }

    /// Forward, losses and backward: gradients of every trainable tensor (router excluded) land
    /// in `store.grads` (zeroed first). Returns the loss parts. With `chunking`, the batch runs
    /// as fixed-size chunks (on several threads or ranks) whose gradients are added in chunk order.
    public func computeGradients(_ tb: TrainingBatch, weights: LossWeights) throws -> LossParts {
        guard tb.count > 0, classCount > 0 else { throw TrainingError.invalidBatch("empty batch or no domain") }
        let norms = LossNormalizers(tb, weights), C = config.hidden
        store.zeroGrads()
        // packedGemm in one pass: the big linear layers split over our executor, so OpenBLAS (the
        // small adapter and head products) runs on one thread meanwhile; its idle threads would
        // spin on the same cores (stop 17: 284-291 against 255-262 ex/s at 2 threads)
        let blasThreads = dr_blas_get_threads()
        let oneBLAS = chunking == nil && packedRows > 0 && blasThreads > 1 && dr_thread_executor() != nil
        if oneBLAS { dr_blas_set_threads(1) }
        defer { if oneBLAS { dr_blas_set_threads(blasThreads) } }
        var parts = try chunking.map { try $0.gradients(self, tb, norms) } ?? passGradients(tb, norms, in: main)
        // O-LoRA: the newest set's A matrices orthogonal to all earlier ones. Σ|A_old·A_newᵀ| is
        // separable over the earlier sets' rows, so each frozen set is read in place (no stacking).
        if spec.loraPerDomain && loraSets > 1 && weights.orthogonality > 0 {
            let k = loraSets - 1, r = spec.loraRank
            var scratch = [Float](repeating: 0, count: Int(dr_olora_scratch_size(Int64(r), Int64(r))))
            for l in 0..<config.layers {
                for part in ["q", "v"] {
                    let newA = store.value(TensorName.lora(k, l, part, "A")), dNewA = store.grad(TensorName.lora(k, l, part, "A"))
                    for j in 0..<k {
                        parts.orthogonality += dr_olora_penalty_forward_backward(
                            dNewA, &scratch, store.value(TensorName.lora(j, l, part, "A")), newA,
                            weights.orthogonality, Int64(r), Int64(r), Int64(C))
                    }
                }
            }
        }
        return parts
    }
}

extension ContinualModel {
    /// The pass of one batch (or one chunk of a batch) in `ctx`: forward, losses weighted by the
    /// whole batch's `norms`, backward; gradients ADDED into the context's gradients.
    func passGradients(_ tb: TrainingBatch, _ norms: LossNormalizers, in ctx: PassContext) throws -> LossParts {
        let B = tb.count, C = config.hidden, V = classCount
        let batch = PackedBatch(tb.sequences)
        let N = batch.tokenCount
        forward(batch, gateIds: tb.gateIds, in: ctx)
        var parts = LossParts()
        // classification (rows with a label), logit replay, anchoring
        if ctx.dlogits.count < B * V { ctx.dlogits = [Float](repeating: 0, count: B * V); ctx.targetsBuf = ctx.dlogits }
        if ctx.losses.count < B { ctx.losses = [Float](repeating: 0, count: B) }
        if ctx.dpooled.count < B * C { ctx.dpooled = [Float](repeating: 0, count: B * C) }
        for i in 0..<(B * C) { ctx.dpooled[i] = 0 }
        var labels = tb.labels, ceW = [Float](repeating: 0, count: B)
        for b in 0..<B {
            if labels[b] < 0 { labels[b] = tb.rangeLo[b] } else { ceW[b] = norms.classification }
        }
        let rc: Int32
        if tb.extraLabels.contains(where: { !$0.isEmpty }) {
            // multi-intent rows: soft targets over each row's gold set (a set of one is the plain loss)
            var offsets: [Int64] = [0], sets: [Int32] = []
            for b in 0..<B {
                sets.append(labels[b])
                if tb.labels[b] >= 0 { sets += tb.extraLabels[b] }
                offsets.append(Int64(sets.count))
            }
            rc = dr_softmax_set_xent_forward_backward(&ctx.losses, &ctx.dlogits, nil, ctx.logitsBuf, offsets, sets, tb.rangeLo, tb.rangeHi,
                                                      ceW, Int64(B), Int64(V))
        } else {
            rc = dr_softmax_xent_forward_backward(&ctx.losses, &ctx.dlogits, nil, ctx.logitsBuf, labels, tb.rangeLo, tb.rangeHi, ceW, Int64(B), Int64(V))
        }
        guard rc == DR_OK else { throw TrainingError.invalidBatch("a label lies outside its domain's class range or a label set is malformed (code \(rc))") }
        for b in 0..<B where tb.labels[b] >= 0 { parts.classification += Double(ctx.losses[b]) * Double(ceW[b]) }
        if norms.logitReplay > 0, tb.logitTargets.contains(where: { $0 != nil }) {
            var w = [Float](repeating: 0, count: B)
            for b in 0..<B {
                guard let t = tb.logitTargets[b] else { continue }
                let lo = Int((tb.logitLo ?? tb.rangeLo)[b])
                precondition(t.count == Int((tb.logitHi ?? tb.rangeHi)[b]) - lo, "stored logits do not match the class range")
                for j in 0..<t.count { ctx.targetsBuf[b * V + lo + j] = t[j] }
                w[b] = norms.logitReplay
            }
            parts.logitReplay = dr_mse_forward_backward(&ctx.dlogits, ctx.logitsBuf, ctx.targetsBuf, tb.logitLo ?? tb.rangeLo, tb.logitHi ?? tb.rangeHi,
                                                        w, Int64(B), Int64(V))
        }
        if norms.anchor > 0, tb.anchorTargets.contains(where: { $0 != nil }) {
            var t = [Float](repeating: 0, count: B * C), w = [Float](repeating: 0, count: B)
            for b in 0..<B {
                guard let a = tb.anchorTargets[b] else { continue }
                for j in 0..<C { t[b * C + j] = a[j] }
                w[b] = norms.anchor
            }
            parts.anchor = dr_mse_forward_backward(&ctx.dpooled, ctx.pooledBuf, t, nil, nil, w, Int64(B), Int64(C))
        }
        // heads backward: dpooled += dlogits·head.w; d head.w += dlogitsᵀ·pooled; d head.b += Σ rows
        let headTrains = store.tensor(TensorName.headWeight).trainable
        dr_matmul_backward(&ctx.dpooled, headTrains ? ctx.grad(store, TensorName.headWeight) : nil, headTrains ? ctx.grad(store, TensorName.headBias) : nil,
                           ctx.dlogits, ctx.pooledBuf, store.value(TensorName.headWeight), Int64(B), Int64(C), Int64(V))
        // encoder backward
        let stop = firstTrainableLayer
        if stop < config.layers || !adapterLayers.isEmpty {
            if ctx.dtop.count < N * C { ctx.dtop = [Float](repeating: 0, count: N * C) }
            for i in 0..<(N * C) { ctx.dtop[i] = 0 }
            batch.cuSeqlens.withUnsafeBufferPointer { cu in
                dr_mean_pool_backward(&ctx.dtop, ctx.dpooled, cu.baseAddress, Int64(B), Int64(C))
            }
            var cfg = config.kernelConfig
            let maxT = (0..<B).map { batch.length($0) }.max() ?? 1
            tb.gateIds.withUnsafeBufferPointer { gids in
                withExt(ctx, gateIds: gids.baseAddress, probs: nil, dP: nil) { ext, xg in
                    let need = dr_bert_backward_scratch_size(&cfg, ext, Int64(N), Int64(B), Int64(maxT))
                    if need > ctx.bwdScratch.count { ctx.bwdScratch = FloatArena(count: Int(need)) }
                    var p = baseParams
                    batch.tokenIds.withUnsafeBufferPointer { ids in
                        batch.cuSeqlens.withUnsafeBufferPointer { cu in
                            if spec.fullFineTune {
                                dr_bert_backward(&ctx.baseGrads, xg, nil, ctx.bwdScratch.base, ctx.dtop, &ctx.workspace.acts, &ctx.xacts, &p, ext, &cfg,
                                                 ids.baseAddress, nil, cu.baseAddress, Int64(B), Int64(stop))
                            } else {
                                dr_bert_backward(nil, xg, nil, ctx.bwdScratch.base, ctx.dtop, &ctx.workspace.acts, &ctx.xacts, &p, ext, &cfg,
                                                 ids.baseAddress, nil, cu.baseAddress, Int64(B), Int64(stop))
                            }
                        }
                    }
                }
            }
        }
        return parts
    }
}

/// Per-row loss weights of a batch: each loss is a mean over the rows that carry it, so a chunk
/// of the batch weighs its rows by the whole batch's counts.
struct LossNormalizers {
    var classification: Float, logitReplay: Float, anchor: Float
    init(_ tb: TrainingBatch, _ weights: LossWeights) {
        let ceRows = tb.labels.filter { $0 >= 0 }.count
        let replayRows = tb.logitTargets.filter { $0 != nil }.count
        let anchorRows = tb.anchorTargets.filter { $0 != nil }.count
        classification = weights.classification / Float(max(ceRows, 1))
        logitReplay = replayRows > 0 && weights.logitReplay > 0 ? weights.logitReplay / Float(replayRows) : 0
        anchor = anchorRows > 0 && weights.anchor > 0 ? weights.anchor / Float(anchorRows) : 0
    }
}
