import CKernels
import Foundation

public enum AdapterPlacement: String, Codable, Sendable { case output, ffn }
public enum AdapterActivation: String, Codable, Sendable {
    case gelu, relu, identity
    var kernel: dr_act {
        switch self { case .gelu: DR_ACT_GELU; case .relu: DR_ACT_RELU; case .identity: DR_ACT_IDENTITY }
    }
}

/// What a method trains on top of the frozen base.
public struct ModelSpec: Codable, Equatable, Sendable {
    /// Gated adapter (Dual-Replay). nil layers = every layer.
    public var adapter: Bool = false
    public var bottleneck: Int = 64
    public var adapterLayers: [Int]? = nil
    public var placement: AdapterPlacement = .output
    public var activation: AdapterActivation = .gelu
    /// Initial value of a new domain's gate entries; `copyPreviousGate` starts it from the last
    /// domain's gate instead (forward transfer).
    public var gateInit: Float = 1
    public var copyPreviousGate: Bool = false
    /// LoRA on query and value (baselines): rank, alpha.
    public var lora: Bool = false
    public var loraRank: Int = 8
    public var loraAlpha: Float = 16
    /// A new LoRA set per domain, earlier ones frozen (O-LoRA).
    public var loraPerDomain: Bool = false
    /// Train every base weight (sequential full fine-tune baseline).
    public var fullFineTune: Bool = false
    /// Domain router: MLP hidden size and the layer whose mean-pooled frozen hidden state it
    /// reads. nil = the last layer (see `ContinualModel.routerLayer`); a layer at or below the
    /// first adapter layer shares the frozen prefix and costs nothing extra.
    public var routerHidden: Int = 256
    public var routerLayer: Int? = nil
    public var routerDropout: Float = 0.1
    /// Prototype routing (nil = off): the router also keeps, per seen intent, the mean router
    /// feature of its training utterances (`router.proto`, not trained) and scores domains by
    /// cosine similarity to them (`DomainRouter.probabilities`).
    public var routerPrototypes: PrototypeRouting? = nil

    public init() {}
}

/// How the router uses its intent prototypes. Router features come from the frozen encoder, so a
/// prototype computed when its domain is learned stays exact however many domains follow: unlike
/// the MLP, which sees earlier domains only through the replay buffer, it cannot forget.
public struct PrototypeRouting: Codable, Equatable, Sendable {
    public enum Mode: String, Codable, Sendable, CaseIterable {
        /// p(d|x) = p_proto(d|x): the MLP is trained and reported but does not decide.
        case only
        /// log p(d|x) = log p_mlp(d|x) + weight · log p_proto(d|x), renormalised over domains.
        case fused
    }
    public var mode: Mode
    /// p_proto(d|x) = Σ_{c ∈ d} softmax_c(cos(x, P_c) / temperature).
    public var temperature: Float
    public var weight: Float
    public init(mode: Mode, temperature: Float = 0.02, weight: Float = 2) {
        self.mode = mode
        self.temperature = temperature
        self.weight = weight
    }
}

/// A seen domain: its global class range in the head matrix.
public struct DomainSlot: Codable, Equatable, Sendable {
    public let name: String
    public let intents: [String]
    public let classOffset: Int
    public var classRange: Range<Int> { classOffset..<(classOffset + intents.count) }
}

/// The frozen encoder plus a method's trainable extensions (adapter + gate table, LoRA sets,
/// per-domain heads, router), with the workspaces of one training step. Swift owns the
/// schedule; every numeric pass is a C kernel.
public final class ContinualModel {
    public let spec: ModelSpec
    public let base: BertWeights
    public let store = ParameterStore()
    public private(set) var domains: [DomainSlot] = []
    public var config: BertConfig { base.config }
    public var classCount: Int { domains.last.map { $0.classOffset + $0.intents.count } ?? 0 }
    /// Floats of the router's intent prototypes (frozen statistics, not trained; 0 when off).
    public var prototypeFloats: Int { store.contains(TensorName.routerPrototypes) ? store.tensor(TensorName.routerPrototypes).count : 0 }
    public let adapterLayers: [Int]
    public private(set) var loraSets = 0
    public var optimizerStep = 0

    // C views, rebuilt after every structural change (`rebuildViews`)
    var baseParams = dr_bert_params()
    var ptrs: [UnsafeMutablePointer<Float>?] = []
    var gradientSlots = Set<Int>()
    var slotOfLayer: [Int32]
    var loraScales: [Float] = []

    /// The buffers of the model's own passes (gradients into the store), and the worker
    /// contexts of data-parallel chunks (`ChunkedReduction`), created on demand.
    let main: PassContext
    var workers: [PassContext] = []
    /// The context of the calling thread's passes: a worker's inside a chunk of a parallel
    /// inference map (`inferenceWorkers`), the main one everywhere else.
    var current: PassContext { PassContext.bound(to: self) ?? main }
    var workspace: EncoderWorkspace { current.workspace }

    public init(base: BertWeights, spec: ModelSpec, seed: UInt64) {
        self.base = base
        if !spec.fullFineTune { base.pack() }  // the base never changes: the few-rows path may pack it
        self.spec = spec
        let L = base.config.layers, C = base.config.hidden
        adapterLayers = spec.adapter ? (spec.adapterLayers ?? Array(0..<L)).sorted() : []
        slotOfLayer = [Int32](repeating: -1, count: L)
        for (s, l) in adapterLayers.enumerated() { slotOfLayer[l] = Int32(s) }
        main = PassContext(config: base.config, privateGradients: false)
        rngState = SplitMix64(seed: seed)
        var rng = rngState
        let R = spec.bottleneck
        if spec.fullFineTune {
            let n = base.arena.count
            store.add(TensorName.base, shape: [n], group: "base", decay: true) { base.arena.base[$0] }
        }
        for s in adapterLayers.indices {
            // down: small random; up: zero so a fresh adapter is the identity
            let sd = 1 / Float(C).squareRoot()
            store.add(TensorName.adapter(s, "down.w"), shape: [R, C], group: "adapter", decay: true) { _ in sd * rng.nextGaussian() }
            store.add(TensorName.adapter(s, "down.b"), shape: [R], group: "adapter") { _ in 0 }
            store.add(TensorName.adapter(s, "up.w"), shape: [C, R], group: "adapter", decay: true) { _ in 0 }
            store.add(TensorName.adapter(s, "up.b"), shape: [C], group: "adapter") { _ in 0 }
            store.add(TensorName.gates(s), shape: [0, R], group: "gate") { _ in 0 }
        }
        if spec.lora && !spec.loraPerDomain { addLoRASet(&rng) }
        let Hd = spec.routerHidden
        store.add(TensorName.routerW1, shape: [Hd, C], group: "router", decay: true) { _ in rng.nextGaussian() / Float(C).squareRoot() }
        store.add(TensorName.routerB1, shape: [Hd], group: "router") { _ in 0 }
        store.add(TensorName.routerW2, shape: [0, Hd], group: "router", decay: true) { _ in 0 }
        store.add(TensorName.routerB2, shape: [0], group: "router") { _ in 0 }
        if spec.routerPrototypes != nil {
            store.add(TensorName.routerPrototypes, shape: [0, C], group: "router", trainable: false) { _ in 0 }
        }
        // the heads: ONE linear layer over every seen class; a domain adds its intents' rows
        store.add(TensorName.headWeight, shape: [0, C], group: "head", decay: true) { _ in 0 }
        store.add(TensorName.headBias, shape: [0], group: "head") { _ in 0 }
        rngState = rng
        rebuildViews()
    }

    /// The model's private generator (initialisation of new tensors; checkpointed).
    public var rngState: SplitMix64

    /// The layer whose frozen, mean-pooled hidden state the router reads. Default: the last
    /// layer (the frozen sentence embedding: on CLINC150 validation it routed 8-10 points more
    /// accurately than the embedding layer). Routing then costs the frozen layers above the
    /// gate-free prefix once more; a value <= `gateFreePrefix` makes routing free.
    public var routerLayer: Int {
        if let l = spec.routerLayer { return min(max(0, l), config.layers) }
        return config.layers
    }
    /// The lowest layer whose output depends on trainable weights (everything below is a
    /// frozen prefix, shared by routing and cacheable).
    public var firstTrainableLayer: Int {
        if spec.fullFineTune { return 0 }
        var l = config.layers
        if spec.lora || spec.loraPerDomain { l = 0 }
        if let first = adapterLayers.first { l = min(l, spec.placement == .output ? first + 1 : first) }
        return l
    }

    func addLoRASet(_ rng: inout SplitMix64) {
        let k = loraSets, C = config.hidden, r = spec.loraRank
        for l in 0..<config.layers {
            for part in ["q", "v"] {
                store.add(TensorName.lora(k, l, part, "A"), shape: [r, C], group: "lora", decay: true) { _ in rng.nextGaussian() / Float(C).squareRoot() }
                store.add(TensorName.lora(k, l, part, "B"), shape: [C, r], group: "lora", decay: true) { _ in 0 }
            }
        }
        loraSets += 1
    }

    /// Adds a domain: one gate row per adapter slot, one head, one router output; for O-LoRA a
    /// new LoRA set (earlier sets frozen). Returns its index.
    @discardableResult
    public func addDomain(name: String, intents: [String]) -> Int {
        let k = domains.count
        let C = config.hidden
        domains.append(DomainSlot(name: name, intents: intents, classOffset: classCount))
        var rng = rngState
        for s in adapterLayers.indices {
            let name = TensorName.gates(s)
            let prev = store.array(name)
            let R = spec.bottleneck
            store.appendRows(name, rows: 1) { i in
                spec.copyPreviousGate && k > 0 ? prev[(k - 1) * R + i] : spec.gateInit
            }
        }
        let n = intents.count
        store.appendRows(TensorName.headWeight, rows: n) { _ in rng.nextGaussian() * 0.02 }
        store.appendRows(TensorName.headBias, rows: n) { _ in 0 }
        store.appendRows(TensorName.routerW2, rows: 1) { _ in rng.nextGaussian() / Float(spec.routerHidden).squareRoot() }
        store.appendRows(TensorName.routerB2, rows: 1) { _ in 0 }
        if spec.routerPrototypes != nil { store.appendRows(TensorName.routerPrototypes, rows: n) { _ in 0 } }
        if spec.loraPerDomain {
            store.setTrainable(false) { $0.group == "lora" }
            addLoRASet(&rng)
        }
        rngState = rng
        rebuildViews()
        return k
    }

    // MARK: - C views

    /// Rebuilds the kernels' pointer tables; call after changing which tensors train (a frozen
    /// tensor gets no gradient pointer, so its weight-gradient GEMMs are skipped).
    func rebuildViews() {
        let L = config.layers
        var cfg = config.kernelConfig
        let baseValues = spec.fullFineTune ? store.value(TensorName.base) : base.arena.base
        dr_bert_params_point(&baseParams, baseValues, &cfg)
        if !spec.fullFineTune {  // frozen: packed in init
            baseParams.packed = frozenPacks ?? base.params.packed
            baseParams.packed_rows = packedRows
        }

        // pointer table: adapter (5 values + 5 grads per slot), LoRA (A,B values + grads)
        ptrs.removeAll()
        let S = adapterLayers.count
        for field in ["down.w", "down.b", "up.w", "up.b", "gates"] {
            for s in 0..<S { ptrs.append(store.value(TensorName.adapter(s, field))) }
        }
        gradientSlots.removeAll()
        for field in ["down.w", "down.b", "up.w", "up.b", "gates"] {
            for s in 0..<S { gradientSlots.insert(ptrs.count); ptrs.append(store.gradIfTrainable(TensorName.adapter(s, field))) }
        }
        for which in ["A", "B"] {
            for k in 0..<loraSets { for l in 0..<L { for part in ["q", "v"] { ptrs.append(store.value(TensorName.lora(k, l, part, which))) } } }
        }
        for which in ["A", "B"] {
            for k in 0..<loraSets { for l in 0..<L { for part in ["q", "v"] {
                gradientSlots.insert(ptrs.count); ptrs.append(store.gradIfTrainable(TensorName.lora(k, l, part, which)))
            } } }
        }
        for ctx in [main] + workers { rebuildContext(ctx) }
        loraScales = [Float](repeating: spec.loraAlpha / Float(spec.loraRank), count: loraSets)
    }

    func rebuildContext(_ ctx: PassContext) {
        ctx.rebuild(from: ptrs, gradientSlots: gradientSlots, store: store)
        if spec.fullFineTune {
            var cfg = config.kernelConfig
            dr_bert_params_point(&ctx.baseGrads, ctx.grad(store, TensorName.base), &cfg)
        }
    }

    /// `n` worker contexts (data-parallel chunks), their gradient arenas in the store's layout.
    func ensureWorkers(_ n: Int) {
        while workers.count < n {
            let w = PassContext(config: config, privateGradients: true)
            rebuildContext(w)
            workers.append(w)
        }
    }

    /// Builds the C description of the extensions for one batch and calls `body` with it.
    func withExt<T>(_ ctx: PassContext, gateIds: UnsafePointer<Int32>?, probs: UnsafePointer<Float>?, dP: UnsafeMutablePointer<Float>?,
                            _ body: (UnsafePointer<dr_bert_ext>?, UnsafeMutablePointer<dr_bert_ext_grads>?) -> T) -> T {
        let S = adapterLayers.count, L = config.layers
        if S == 0 && loraSets == 0 { return body(nil, nil) }
        let ptrArena = ctx.table
        let raw = UnsafeMutableRawPointer(ptrArena)
        func table(_ i: Int) -> UnsafePointer<UnsafePointer<Float>?> {
            UnsafePointer(raw.assumingMemoryBound(to: UnsafePointer<Float>?.self) + i)
        }
        func gtable(_ i: Int) -> UnsafePointer<UnsafeMutablePointer<Float>?> { UnsafePointer(ptrArena + i) }
        let loraBase = 10 * S, LN = loraSets * L * 2
        return slotOfLayer.withUnsafeBufferPointer { slots in
            loraScales.withUnsafeBufferPointer { scales in
                var ext = dr_bert_ext()
                ext.adapter_place = S == 0 ? Int32(DR_ADAPTER_NONE.rawValue)
                    : Int32(spec.placement == .output ? DR_ADAPTER_OUTPUT.rawValue : DR_ADAPTER_FFN.rawValue)
                ext.adapter_act = Int32(spec.activation.kernel.rawValue)
                ext.R = Int64(spec.bottleneck)
                ext.K = Int64(domains.count)
                ext.slot = slots.baseAddress
                if S > 0 {
                    ext.W_down = table(0); ext.b_down = table(S); ext.W_up = table(2 * S); ext.b_up = table(3 * S); ext.G = table(4 * S)
                }
                ext.P = probs
                ext.gate_ids = gateIds
                ext.n_lora = Int64(loraSets)
                ext.lora_R = Int64(spec.loraRank)
                if loraSets > 0 {
                    ext.lora_A = table(loraBase); ext.lora_B = table(loraBase + LN)
                }
                ext.lora_scale = scales.baseAddress
                var g = dr_bert_ext_grads()
                if S > 0 {
                    g.dW_down = gtable(5 * S); g.db_down = gtable(6 * S); g.dW_up = gtable(7 * S); g.db_up = gtable(8 * S); g.dG = gtable(9 * S)
                }
                g.dP = dP
                if loraSets > 0 { g.dlora_A = gtable(loraBase + 2 * LN); g.dlora_B = gtable(loraBase + 3 * LN) }
                return withUnsafePointer(to: &ext) { e in withUnsafeMutablePointer(to: &g) { gp in body(e, gp) } }
            }
        }
    }

    // MARK: - forward

    var pooledBuf: [Float] { current.pooledBuf }
    var logitsBuf: [Float] { current.logitsBuf }

    /// Runs the encoder on `batch` with hard gates `gateIds` (one per sequence) and computes
    /// pooled outputs (B,C) and logits over all seen classes (B,V) into the context's buffers.
    /// `fromLayer` > 0 reuses hidden[fromLayer] already in the workspace (routing pass).
    /// `reusePrefix`: the batch is a canonical chunk that recurs (evaluation, validation): its
    /// frozen prefix comes from, or goes to, `prefixCache`.
    func forward(_ batch: PackedBatch, gateIds: [Int32], fromLayer: Int = 0, upToLayer: Int? = nil, in ctx: PassContext? = nil,
                 reusePrefix: Bool = false) {
        let ctx = ctx ?? current
        let workspace = ctx.workspace
        let B = batch.count, N = batch.tokenCount, C = config.hidden
        var cfg = config.kernelConfig
        let PS = batch.cuSeqlens.withUnsafeBufferPointer { dr_attention_prob_size($0.baseAddress, Int64(B), Int64(config.heads)) }
        var fromLayer = fromLayer
        let p = gateFreePrefix
        let cache = reusePrefix && fromLayer == 0 && upToLayer == nil && p >= 1 ? prefixCache : nil
        if fromLayer == 0 { workspace.prepare(tokens: N, probs: Int(PS)) }
        if let cache, let h = cache.lookup(batch) {
            h.withUnsafeBufferPointer { (workspace.acts.hidden + p * N * C).update(from: $0.baseAddress!, count: N * C) }
            fromLayer = p
        }
        defer {
            if let cache, fromLayer == 0 { cache.store(batch, hidden: UnsafeBufferPointer(start: workspace.acts.hidden + p * N * C, count: N * C)) }
        }
        let S = Int64(adapterLayers.count)
        gateIds.withUnsafeBufferPointer { gids in
            withExt(ctx, gateIds: gids.baseAddress, probs: nil, dP: nil) { ext, _ in
                let xn = dr_ext_act_size(&cfg, ext, S, Int64(N), Int64(B))
                if xn > ctx.extArena.count { ctx.extArena = FloatArena(count: Int(xn)) }
                dr_ext_acts_point(&ctx.xacts, ctx.extArena.base, &cfg, ext, S, Int64(N), Int64(B))
                let fs = dr_bert_forward_scratch_size(&cfg, ext, Int64(N), Int64(B))
                if fs > ctx.fwdScratch.count { ctx.fwdScratch = FloatArena(count: Int(fs)) }
                var runCfg = cfg
                if let up = upToLayer { runCfg.n_layers = Int64(up) }
                var bp = baseParams  // a copy: passes on several threads read it at once
                batch.tokenIds.withUnsafeBufferPointer { ids in
                    batch.cuSeqlens.withUnsafeBufferPointer { cu in
                        dr_bert_forward(&workspace.acts, &ctx.xacts, ctx.fwdScratch.base, &bp, ext, &runCfg, ids.baseAddress, nil,
                                        cu.baseAddress, Int64(B), Int64(fromLayer))
                    }
                }
            }
        }
        if upToLayer != nil { return }
        // pooled = mean over tokens of the last layer; logits = heads
        if ctx.pooledBuf.count < B * C { ctx.pooledBuf = [Float](repeating: 0, count: B * C) }
        let V = classCount
        if ctx.logitsBuf.count < B * V { ctx.logitsBuf = [Float](repeating: 0, count: B * V) }
        let last = workspace.acts.hidden + config.layers * N * C
        ctx.pooledBuf.withUnsafeMutableBufferPointer { pooled in
            batch.cuSeqlens.withUnsafeBufferPointer { cu in
                dr_mean_pool_forward(pooled.baseAddress, last, cu.baseAddress, Int64(B), Int64(C))
            }
            // logits (B,V) = pooled (B,C) · head.wᵀ + head.b
            ctx.logitsBuf.withUnsafeMutableBufferPointer { logits in
                dr_matmul_forward(logits.baseAddress, pooled.baseAddress, store.value(TensorName.headWeight), store.value(TensorName.headBias),
                                  Int64(B), Int64(C), Int64(V))
            }
        }
    }

    /// Mean-pooled hidden state at the router layer (B,C) for the batch in the workspace.
    func poolLayer(_ l: Int, _ batch: PackedBatch) -> [Float] {
        let B = batch.count, N = batch.tokenCount, C = config.hidden
        var out = [Float](repeating: 0, count: B * C)
        out.withUnsafeMutableBufferPointer { o in
            batch.cuSeqlens.withUnsafeBufferPointer { cu in
                dr_mean_pool_forward(o.baseAddress, workspace.acts.hidden + l * N * C, cu.baseAddress, Int64(B), Int64(C))
            }
        }
        return out
    }

    /// Hidden states hidden[0...gateFreePrefix] do not depend on any trainable weight or gate
    /// (-1 when even the embeddings train).
    public var gateFreePrefix: Int {
        if spec.fullFineTune { return -1 }
        var l = config.layers
        if loraSets > 0 || spec.lora || spec.loraPerDomain { l = 0 }
        if let first = adapterLayers.first { l = min(l, first) }
        return l
    }

    /// Router features of sequences: the frozen encoder's mean-pooled hidden state at
    /// `routerLayer` (B,C). When that layer lies in the gate-free prefix it is computed by the
    /// same pass that continues with the chosen gates (`forward(_:gateIds:fromLayer:)` with
    /// `resumeLayer`), so routing costs no extra encoder layers; otherwise the frozen layers up to
    /// it run once more.
    public func routerFeatures(_ batch: PackedBatch) -> [Float] {
        let l = routerLayer
        if l <= gateFreePrefix {
            forward(batch, gateIds: [Int32](repeating: 0, count: batch.count), upToLayer: l)
            return poolLayer(l, batch)
        }
        var cfg = config.kernelConfig
        let PS = batch.cuSeqlens.withUnsafeBufferPointer { dr_attention_prob_size($0.baseAddress, Int64(batch.count), Int64(config.heads)) }
        workspace.prepare(tokens: batch.tokenCount, probs: Int(PS))
        cfg.n_layers = Int64(l)
        var bp = base.params
        batch.tokenIds.withUnsafeBufferPointer { ids in
            batch.cuSeqlens.withUnsafeBufferPointer { cu in
                dr_bert_forward(&workspace.acts, nil, nil, &bp, nil, &cfg, ids.baseAddress, nil, cu.baseAddress, Int64(batch.count), 0)
            }
        }
        return poolLayer(l, batch)
    }

    /// After `routerFeatures`, the layer from which the gated pass may continue.
    public var resumeLayer: Int { max(0, min(routerLayer, gateFreePrefix)) }

    // MARK: - one training step (TrainingStep.swift)

    /// Learning-rate multiplier of the shared adapter projections (`TensorName.isSharedAdapter`).
    public var sharedLRScale: Float = 1

    /// Data-parallel training (`ChunkedReduction`): nil = one pass over the whole batch.
    public var chunking: ChunkedReduction?
    /// Frozen prefixes of recurring evaluation chunks (nil = off; useless without a gate-free prefix).
    public var prefixCache: PrefixCache?
    /// Where this model's inference passes over many rows run (evaluation, validation scores,
    /// prototypes' features, stored logits): one process, or sharded over the ranks of a
    /// data-parallel job (`ShardedInference`). The sharded functions are collective calls.
    public var inference = ShardedInference()
    /// Threads a one-process inference map runs its chunks on (1: in order on the calling
    /// thread, BLAS with its own threads); `training.parallelInference` sets it to the compute threads.
    public var inferenceThreads = 1

    /// The job's parallelism for this model, from a run's `training` settings: chunked gradients
    /// (`gradientChunk`) over `inference`'s collective, the inference maps sharded over its ranks,
    /// and their chunks on the compute threads (`parallelInference`). A new learner and a loaded
    /// state both get it here, so the two cannot drift apart.
    public func useParallelism(_ training: TrainingDefaults, inference: ShardedInference) {
        chunking = training.gradientChunk > 0
            ? ChunkedReduction(chunkSize: training.gradientChunk, threads: Parallelism.threads, collective: inference.collective) : nil
        self.inference = inference
        inferenceThreads = training.parallelInference ?? false ? Parallelism.threads : 1
        packedRows = training.packedGemm || training.frozenBF16 ? Int64.max : 0
        if training.packedGemm && !spec.fullFineTune { base.packTransposed() }
        frozenPacks = training.frozenBF16 && !spec.fullFineTune ? base.packBF16() : nil
        if !spec.fullFineTune { baseParams.packed = frozenPacks ?? base.params.packed }
        baseParams.packed_rows = spec.fullFineTune ? 0 : packedRows
    }

    /// The bfloat16 pack table of `training.frozenPrecision` "bf16" (`BertWeights.packBF16`);
    /// nil: the base's fp32 packs.
    var frozenPacks: UnsafePointer<dr_bert_packed>?

    /// The largest batch (token rows) whose frozen linear layers take the packed kernel
    /// (`dr_bert_params.packed_rows`; 0: the single-utterance path only, `training.packedGemm`: all).
    public internal(set) var packedRows: Int64 = 0

    /// The workers of this model's inference maps: worker t runs its chunks in worker context
    /// t's buffers. nil at one thread, and inside a worker (a map nested in a chunk runs in order).
    var inferenceWorkers: ShardedInference.Workers? {
        guard inferenceThreads > 1, PassContext.bound(to: self) == nil else { return nil }
        ensureWorkers(inferenceThreads)
        let contexts = workers
        return .init(threads: inferenceThreads) { [unowned self] t, run in contexts[t].bind(to: self, run) }
    }

    /// `ShardedInference.map` with this model's workers.
    func map<T: BitwiseCopyable>(_ count: Int, rows: (Int) -> Int, key: UInt64, _ body: (Int) throws -> [T]) throws -> [[T]] {
        try inference.map(count, rows: rows, key: key, workers: inferenceWorkers, body)
    }
    func map<T: BitwiseCopyable>(chunksOf sequences: [[Int32]], _ body: ([[Int32]]) throws -> [T]) throws -> [[T]] {
        try inference.map(chunksOf: sequences, workers: inferenceWorkers, body)
    }

    // MARK: - inference

    /// Class scores for sequences with given gates: (B,V) logits.
    /// `reusePrefix`: `sequences` is a canonical chunk scored again and again (`PrefixCache`).
    public func logits(_ sequences: [[Int32]], gateIds: [Int32], reusePrefix: Bool = false) -> [Float] {
        let batch = PackedBatch(sequences)
        forward(batch, gateIds: gateIds, reusePrefix: reusePrefix)
        return Array(logitsBuf[0..<(batch.count * classCount)])
    }

    /// Logits (B,V) of a batch whose hidden[fromLayer] is already in the workspace (left there by
    /// `routerFeatures` on the same batch).
    public func continueLogits(_ batch: PackedBatch, gateIds: [Int32], fromLayer: Int) -> [Float] {
        forward(batch, gateIds: gateIds, fromLayer: fromLayer)
        return Array(logitsBuf[0..<(batch.count * classCount)])
    }

    /// Pooled outputs (B,C) for sequences with given gates.
    public func pooled(_ sequences: [[Int32]], gateIds: [Int32]) -> [Float] {
        let batch = PackedBatch(sequences)
        forward(batch, gateIds: gateIds)
        return Array(pooledBuf[0..<(batch.count * config.hidden)])
    }
}

extension ContinualModel {
    /// Pooled outputs (B·C, flat) of sequences all under gate `gate`, `inferenceChunk` at a time
    /// (sharded over the ranks: a collective call).
    public func pooled(_ sequences: [[Int32]], gate: Int) throws -> [Float] {
        let parts = try map(chunksOf: sequences) { pooled($0, gateIds: [Int32](repeating: Int32(gate), count: $0.count)) }
        return Array(parts.joined())
    }

    /// Per sequence, domain k's logits (its class range) under gate k, `inferenceChunk` at a time:
    /// what the buffers store for logit replay (sharded over the ranks: a collective call).
    public func domainLogits(_ sequences: [[Int32]], domain k: Int) throws -> [[Float]] {
        let r = domains[k].classRange, V = classCount
        let parts = try map(chunksOf: sequences) { part -> [Float] in
            let lg = logits(part, gateIds: [Int32](repeating: Int32(k), count: part.count))
            return (0..<part.count).flatMap { b in lg[(b * V + r.lowerBound)..<(b * V + r.upperBound)] }
        }
        return parts.flatMap { flat in stride(from: 0, to: flat.count, by: r.count).map { Array(flat[$0..<($0 + r.count)]) } }
    }
}
