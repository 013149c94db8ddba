// Where a training step's time goes, kernel by kernel: every kernel the Dual-Replay adapter step
// calls, timed alone on the sizes of a real batch (its packed lengths, N tokens), times the number
// of calls one step makes. Rounds run every kernel once, back to back; medians over rounds. The
// step itself (median trainStep, same batch, same run) minus the sum is the glue: model.c's
// copies, memsets and bias loops, pooling, heads, losses and the Swift around them.
import CKernels
import DualReplay
import Foundation

struct KernelRecord: Encodable {
    let bench = "step_kernel"
    let kernel: String
    let threads: Int
    let tokens: Int
    let callsPerStep: Int
    let usPerCall: Double
    let msPerStep: Double
    let shareOfStep: Double
    let gflops: Double?
}

func benchKernels(_ o: BenchOptions, _ out: Reporter) throws -> [KernelRecord] {
    let encoder = try SentenceEncoder(modelDirectory: URL(fileURLWithPath: o.modelDir))
    let cfg = encoder.config
    let data = loadTrainData(dataDir: o.dataDir, tokenizer: encoder.tokenizer)
    var spec = ModelSpec()
    spec.adapter = true
    let model = ContinualModel(base: encoder.weights, spec: spec, seed: 7)
    for d in data.domains { model.addDomain(name: d.name, intents: d.intents) }
    var tb = TrainingBatch()
    for e in data.examples.prefix(o.batch) {
        let slot = model.domains[e.domain]
        tb.append(ids: e.ids, gate: Int32(e.domain), label: Int32(slot.classOffset + e.intent), range: slot.classRange)
    }
    let batch = PackedBatch(tb.sequences)
    let L = cfg.layers, C = cfg.hidden, I = cfg.intermediate, NH = cfg.heads, R = spec.bottleneck
    let N = batch.tokenCount, B = batch.count, K = model.domains.count
    let backLayers = L - model.firstTrainableLayer  // layers whose internals the backward pass runs
    print("# step kernels: adapter method, batch \(B), \(N) tokens; backward through \(backLayers) of \(L) layers")

    var rng = SplitMix64(seed: 99)
    func arena(_ n: Int, _ scale: Float = 1) -> KernelBuffer {
        let a = KernelBuffer(count: n)
        for i in 0..<n { a.base[i] = scale * (2 * rng.nextUnit() - 1) }
        return a
    }
    var p = dr_bert_params()
    var kc = kernelConfig(cfg)
    encoder.weights.arena.withUnsafeMutablePointer { dr_bert_params_point(&p, $0, &kc) }  // the encoder keeps its arena alive
    let PS = batch.cuSeqlens.withUnsafeBufferPointer { Int(dr_attention_prob_size($0.baseAddress, Int64(B), Int64(NH))) }
    let maxT = (0..<B).map { batch.length($0) }.max()!
    let x = arena(N * I), y = arena(N * I), dy = arena(N * I), qkv = arena(N * 3 * C), dqkv = arena(N * 3 * C)
    let probs = arena(PS), scratch = arena(max(maxT, N * R + B * R) + N * C), stats = arena(2 * N, 0.5)
    let wDown = arena(R * C, 0.05), bDown = arena(R), wUp = arena(C * R, 0.05), bUp = arena(C), G = arena(K * R)
    let gW = arena(R * C), gbDown = arena(R), gUp = arena(C * R), gbUp = arena(C), gG = arena(K * R)
    let pre = arena(N * R), act = arena(N * R), gmix = arena(B * R)
    for i in 0..<N { stats.base[N + i] = 1 }  // rstd = 1

    struct Op { let name: String; let calls: Int; let flops: Double; let run: () -> Void }
    let n64 = Int64(N), c64 = Int64(C), i64 = Int64(I), r64 = Int64(R), b64 = Int64(B)
    // stable copies of the batch's index arrays (the closures below outlive any withUnsafe… scope)
    let cu = UnsafeMutablePointer<Int64>.allocate(capacity: B + 1)
    let g = UnsafeMutablePointer<Int32>.allocate(capacity: B)
    defer { cu.deallocate(); g.deallocate() }
    for i in 0...B { cu[i] = batch.cuSeqlens[i] }
    for i in 0..<B { g[i] = tb.gateIds[i] }
    var ops: [Op] = []
    do {
        func lin(_ name: String, _ w: UnsafeMutablePointer<Float>, _ b: UnsafeMutablePointer<Float>?, _ inC: Int, _ outC: Int) {
            ops.append(Op(name: "gemm fwd \(name) (\(N)x\(outC)x\(inC))", calls: L, flops: 2 * Double(N * inC * outC)) {
                dr_matmul_forward(y.base, x.base, w, b, n64, Int64(inC), Int64(outC))
            })
        }
        func linBack(_ name: String, _ w: UnsafeMutablePointer<Float>, _ inC: Int, _ outC: Int) {
            ops.append(Op(name: "gemm bwd dinp \(name) (\(N)x\(inC)x\(outC))", calls: backLayers, flops: 2 * Double(N * inC * outC)) {
                dr_matmul_backward(y.base, nil, nil, dy.base, x.base, w, n64, Int64(inC), Int64(outC))
            })
        }
        lin("qkv", p.qkv_w, p.qkv_b, C, 3 * C); lin("attn-out", p.ao_w, p.ao_b, C, C)
        lin("fc", p.fc_w, p.fc_b, C, I); lin("proj", p.proj_w, p.proj_b, I, C)
        linBack("proj", p.proj_w, I, C); linBack("fc", p.fc_w, C, I); linBack("attn-out", p.ao_w, C, C); linBack("qkv", p.qkv_w, C, 3 * C)
        let attnF = 4 * Double(C) * (0..<B).reduce(0.0) { $0 + Double(batch.length($1) * batch.length($1)) }
        ops.append(Op(name: "attention fwd", calls: L, flops: attnF) {
            dr_attention_forward(y.base, probs.base, qkv.base, cu, b64, c64, Int64(NH))
        })
        ops.append(Op(name: "attention bwd", calls: backLayers, flops: 2 * attnF) {
            dr_attention_backward(dqkv.base, scratch.base, dy.base, qkv.base, probs.base, cu, b64, c64, Int64(NH))
        })
        ops.append(Op(name: "layernorm fwd", calls: 2 * L, flops: 0) {
            dr_layernorm_forward(y.base, stats.base, stats.base + N, x.base, p.ln1_w, p.ln1_b, n64, c64, cfg.layerNormEps)
        })
        ops.append(Op(name: "layernorm bwd", calls: 2 * backLayers, flops: 0) {
            dr_layernorm_backward(y.base, nil, nil, dy.base, x.base, p.ln1_w, stats.base, stats.base + N, n64, c64)
        })
        ops.append(Op(name: "gelu fwd (N x I)", calls: L, flops: 0) { dr_gelu_forward(y.base, x.base, n64 * i64) })
        ops.append(Op(name: "gelu bwd (N x I)", calls: backLayers, flops: 0) { dr_gelu_backward(y.base, x.base, dy.base, n64 * i64) })
        do {
            ops.append(Op(name: "adapter fwd", calls: L, flops: 4 * Double(N * C * R)) {
                dr_adapter_forward(y.base, pre.base, act.base, gmix.base, scratch.base, x.base, cu, nil, g, wDown.base, bDown.base,
                                   wUp.base, bUp.base, G.base, DR_ACT_GELU, b64, c64, r64, Int64(K))
            })
            ops.append(Op(name: "adapter bwd", calls: L, flops: 8 * Double(N * C * R)) {
                dr_adapter_backward(y.base, gW.base, gbDown.base, gUp.base, gbUp.base, gG.base, nil, scratch.base, dy.base, pre.base, act.base,
                                    gmix.base, x.base, cu, nil, g, wDown.base, wUp.base, G.base, DR_ACT_GELU, b64, c64, r64, Int64(K))
            })
        }
    }

    var records: [KernelRecord] = []
    let optimizer = AdamWStep(config: OptimizerConfig())
    for threads in o.threads {
        setComputeThreads(threads)
        for op in ops { op.run() }
        for _ in 0..<2 { _ = try model.trainStep(tb, weights: LossWeights(), optimizer: optimizer, lr: 1e-4) }
        var times = [[Double]](repeating: [], count: ops.count), step: [Double] = []
        let start = now()
        while now() - start < o.seconds || step.count < 5 {
            for (k, op) in ops.enumerated() {
                let t0 = now()
                op.run()
                times[k].append(now() - t0)
            }
            let t0 = now()
            _ = try model.trainStep(tb, weights: LossWeights(), optimizer: optimizer, lr: 1e-4)
            step.append(now() - t0)
        }
        let stepS = median(step)
        var accounted = 0.0
        for (k, op) in ops.enumerated() {
            let t = median(times[k]), perStep = t * Double(op.calls)
            accounted += perStep
            let r = KernelRecord(kernel: op.name, threads: threads, tokens: N, callsPerStep: op.calls, usPerCall: t * 1e6,
                                 msPerStep: perStep * 1e3, shareOfStep: perStep / stepS, gflops: op.flops > 0 ? op.flops / t / 1e9 : nil)
            records.append(r); out.emit(r)
        }
        for (name, v) in [("sum of the kernels above", accounted), ("glue (step - sum)", stepS - accounted), ("trainStep", stepS)] {
            let r = KernelRecord(kernel: name, threads: threads, tokens: N, callsPerStep: 1, usPerCall: v * 1e6, msPerStep: v * 1e3,
                                 shareOfStep: v / stepS, gflops: nil)
            records.append(r); out.emit(r)
        }
    }
    return records
}

func printKernelTable(_ records: [KernelRecord]) {
    print("\n| kernel | thr | calls/step | µs/call | ms/step | share | GFLOP/s |")
    print("|---|---|---|---|---|---|---|")
    for r in records {
        print("| \(r.kernel) | \(r.threads) | \(r.callsPerStep) | \(fmt(r.usPerCall)) | \(fmt(r.msPerStep, 2)) | \(fmt(100 * r.shareOfStep))% | \(fmt(r.gflops)) |")
    }
}
