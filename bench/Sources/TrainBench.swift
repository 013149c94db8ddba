// One training step of a continual method on the frozen all-MiniLM-L6-v2: Dual-Replay's gated
// adapter (bottleneck 64, every layer, output placement), the LoRA baseline (q and v, rank 8) and
// a full fine-tune, on batches of real CLINC150 utterances from two domains.
//
// Figures per (method, threads): examples/s from the median step; the split forward / backward /
// optimizer; achieved GFLOP/s over the GEMM work the step actually executes (formula in
// `trainStepWork`) against OpenBLAS sgemm on exactly the same GEMM calls in the same run; peak
// memory (the planned arena sizes, VmHWM since a reset before the method, ru_maxrss). Every round
// runs the step, its parts and the sgemm replay back to back, so ratios hold on a busy machine;
// the step's CPU time is reported next to its wall time for the same reason.
import CKernels
import DualReplay
import Foundation

struct TrainRecord: Encodable {
    let bench = "train_step"
    let method: String
    let threads: Int
    let batch: Int
    let tokens: Double          // mean tokens per batch (N)
    let examplesPerSec: Double  // batch / median step time
    let stepMs: Double          // median trainStep
    let stepCpuMs: Double       // median CPU time of trainStep, all threads (robust to other load)
    let forwardMs: Double?      // median model.logits (encoder + adapters + pooling + heads)
    let backwardMs: Double?     // median computeGradients − forward (losses + all backward)
    let optimizerMs: Double?    // median AdamWStep.apply (norm, clip, AdamW)
    let forwardGflop: Double    // per step, mean over batches
    let backwardGflop: Double
    let gflops: Double          // median over rounds of step flops / trainStep time
    let sgemmGflops: Double?    // median over rounds of sgemm on the same batch's GEMM calls
    let ratioToSgemm: Double?   // median over rounds of gflops / sgemmGflops (measured back to back)
    let trainableParams: Int
    let arenaMiB: Double        // parameter store (values, grads, 2 moments) + activations + scratch
    let baseWeightsMiB: Double  // the frozen encoder (shared, counted once)
    let rssBeforeMiB: Double?   // VmRSS just before this method was built (weights, data, runtime)
    let peakRssMiB: Double?     // VmHWM after warm-up (reset before this method was built)
    let maxRssMiB: Double       // ru_maxrss of the process so far
    let loadAvg: Double?        // 1-minute load average at the end (> cores: the machine was shared)
    let note: String
}

struct TrainExample { let ids: [Int32]; let domain: Int; let intent: Int }
struct TrainData {
    var domains: [(name: String, intents: [String])] = []
    var examples: [TrainExample] = []
    var source = ""
}

/// The training split of the first `domainCount` CLINC150 domains (file order), tokenized; a
/// small built-in set when the file is absent (said in `source`).
func loadTrainData(dataDir: String, tokenizer: BertTokenizer, domainCount: Int = 2) -> TrainData {
    var d = TrainData()
    let url = URL(fileURLWithPath: dataDir).appendingPathComponent("clinc150/clinc150.jsonl")
    if let data = try? Data(contentsOf: url) {
        var domainIndex: [String: Int] = [:], intentIndex: [[String: Int]] = []
        for line in data.split(separator: UInt8(ascii: "\n")) {
            guard let obj = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any],
                  let text = obj["text"] as? String, let intent = obj["intent"] as? String,
                  let domain = obj["domain"] as? String, domain != "oos", (obj["split"] as? String) == "train" else { continue }
            if domainIndex[domain] == nil {
                guard d.domains.count < domainCount else { continue }
                domainIndex[domain] = d.domains.count
                d.domains.append((domain, []))
                intentIndex.append([:])
            }
            let k = domainIndex[domain]!
            if intentIndex[k][intent] == nil {
                intentIndex[k][intent] = d.domains[k].intents.count
                d.domains[k].intents.append(intent)
            }
            d.examples.append(TrainExample(ids: tokenizer.encode(text), domain: k, intent: intentIndex[k][intent]!))
        }
        if !d.examples.isEmpty { d.source = "clinc150 train split, domains \(d.domains.map(\.name).joined(separator: "+"))"; return d }
    }
    let builtIn: [(String, [(String, [String])])] = [
        ("banking", [("transfer", ["transfer money to my savings account", "send fifty dollars to john"]),
                     ("balance", ["what is my checking balance", "how much money do i have left"]),
                     ("freeze", ["freeze my credit card right now", "i lost my card please block it"])]),
        ("travel", [("book_flight", ["book a flight to paris next friday", "i need a plane ticket to tokyo"]),
                    ("weather", ["what is the weather like in rome today", "will it rain in london tomorrow"]),
                    ("translate", ["how do you say thank you in italian", "translate good morning to german"])]),
    ]
    for (k, (name, intents)) in builtIn.prefix(domainCount).enumerated() {
        d.domains.append((name, intents.map(\.0)))
        for (j, (_, texts)) in intents.enumerated() {
            for t in texts { d.examples.append(TrainExample(ids: tokenizer.encode(t), domain: k, intent: j)) }
        }
    }
    d.source = "built-in sentences (clinc150 not found at \(url.path))"
    return d
}

/// `ids` cut or refilled (its own word pieces, cycled) to exactly `length` tokens, [CLS] … [SEP]
/// kept: the same work per sequence as a padded framework batch of that length.
func fixedLength(_ ids: [Int32], _ length: Int) -> [Int32] {
    let body = Array(ids.dropFirst().dropLast())
    guard let cls = ids.first, let sep = ids.last, !body.isEmpty else { return ids }
    return [cls] + (0..<(length - 2)).map { body[$0 % body.count] } + [sep]
}

/// The GEMM calls one `trainStep` issues, in order (through dr_sgemm), plus the attention
/// products, which run per sequence and head in attention.c rather than through sgemm.
///
/// With L layers, C hidden, I intermediate, N tokens, T_b the length of sequence b, R the adapter
/// bottleneck, r the LoRA rank, n_k the classes of domain k, B sequences:
///   forward, every layer:      2N(3C² + C² + 2CI)         qkv, attention-out, fc, proj
///                            + 4C ΣT_b²                    QKᵀ and PV
///                            + 4NCR          (adapter)      down, up
///                            + 8NCr per LoRA set           q and v: inp·Aᵀ, xa·Bᵀ
///   heads:                     2BC Σn_k  forward, 4BC Σn_k backward (dpooled, dW)
///   backward, adapter layers:  8NCR                         dW_up, dz, dW_down, dinp
///   backward, layers l >= stop (the first layer whose output depends on a trainable weight):
///                              2N(3C² + C² + 2CI)           input gradients only (frozen base)
///                            + 8C ΣT_b²                     dV, dP, dQ, dK
///                            + 16NCr per LoRA set           dB, dxa, dA, dinp (q and v)
///                            + 2N(3C² + C² + 2CI)           weight gradients (full fine-tune)
struct StepWork {
    var forward: [Gemm] = []
    var backward: [Gemm] = []
    var attentionForward = 0.0
    var attentionBackward = 0.0
    var forwardFlops: Double { forward.reduce(0) { $0 + $1.flops } + attentionForward }
    var backwardFlops: Double { backward.reduce(0) { $0 + $1.flops } + attentionBackward }
    var total: Double { forwardFlops + backwardFlops }
}

func trainStepWork(_ cfg: BertConfig, _ model: ContinualModel, _ batch: PackedBatch) -> StepWork {
    let L = cfg.layers, C = cfg.hidden, I = cfg.intermediate, N = batch.tokenCount, B = batch.count
    let R = model.spec.bottleneck, r = model.spec.loraRank, sets = model.loraSets
    let adapters = Set(model.adapterLayers), full = model.spec.fullFineTune, stop = model.firstTrainableLayer
    precondition(model.spec.placement == .output || adapters.isEmpty, "the flop count models the output placement only")
    var sumT2 = 0.0
    for b in 0..<B { let T = Double(batch.length(b)); sumT2 += T * T }
    func fw(_ m: Int, _ n: Int, _ k: Int) -> Gemm { Gemm(transA: 0, transB: 1, M: m, N: n, K: k) }   // x · Wᵀ
    func dx(_ m: Int, _ n: Int, _ k: Int) -> Gemm { Gemm(transA: 0, transB: 0, M: m, N: n, K: k) }   // dy · W
    func dw(_ m: Int, _ n: Int, _ k: Int) -> Gemm { Gemm(transA: 1, transB: 0, M: m, N: n, K: k) }   // dyᵀ · x
    var w = StepWork()
    for l in 0..<L {
        w.forward.append(fw(N, 3 * C, C))
        for _ in 0..<sets { w.forward += [fw(N, r, C), fw(N, C, r), fw(N, r, C), fw(N, C, r)] }
        w.attentionForward += 4 * Double(C) * sumT2
        w.forward += [fw(N, C, C), fw(N, I, C), fw(N, C, I)]
        if adapters.contains(l) { w.forward += [fw(N, R, C), fw(N, C, R)] }
    }
    for d in model.domains {
        w.forward.append(fw(B, d.intents.count, C))
        w.backward += [dx(B, C, d.intents.count), dw(d.intents.count, C, B)]
    }
    for l in stride(from: L - 1, through: 0, by: -1) {
        if adapters.contains(l) { w.backward += [dw(C, R, N), dx(N, R, C), dw(R, C, N), dx(N, C, R)] }
        if l < stop { break }
        w.backward.append(dx(N, I, C)); if full { w.backward.append(dw(C, I, N)) }          // proj
        w.backward.append(dx(N, C, I)); if full { w.backward.append(dw(I, C, N)) }          // fc
        w.backward.append(dx(N, C, C)); if full { w.backward.append(dw(C, C, N)) }          // attention out
        w.attentionBackward += 8 * Double(C) * sumT2
        for _ in 0..<sets {
            for _ in 0..<2 { w.backward += [dw(C, r, N), dx(N, r, C), dw(r, C, N), dx(N, C, r)] }
        }
        w.backward.append(dx(N, C, 3 * C)); if full { w.backward.append(dw(3 * C, C, N)) }  // qkv
    }
    return w
}

/// Bytes of the arenas one step of `model` uses for a batch of N tokens: parameter store (values,
/// gradients, two moments), encoder activations, extension activations, forward and backward
/// scratch — computed with the kernels' own planners.
func arenaBytes(_ cfg: BertConfig, _ model: ContinualModel, tokens N: Int, probs PS: Int, batch B: Int, maxT: Int) -> Int {
    var c = kernelConfig(cfg)
    var sizes = [size_t](repeating: 0, count: Int(DR_BERT_NUM_ACTS))
    var floats = Int(dr_bert_act_sizes(&c, Int64(N), Int64(PS), &sizes))
    var ext = dr_bert_ext()
    let S = model.adapterLayers.count
    ext.adapter_place = S == 0 ? Int32(DR_ADAPTER_NONE.rawValue)
        : Int32(model.spec.placement == .output ? DR_ADAPTER_OUTPUT.rawValue : DR_ADAPTER_FFN.rawValue)
    ext.R = Int64(model.spec.bottleneck)
    ext.K = Int64(model.domains.count)
    ext.n_lora = Int64(model.loraSets)
    ext.lora_R = Int64(model.spec.loraRank)
    let hasExt = S > 0 || model.loraSets > 0
    withUnsafePointer(to: &ext) { e in
        let ep = hasExt ? e : nil
        floats += Int(dr_ext_act_size(&c, ep, Int64(S), Int64(N), Int64(B)))
        floats += Int(dr_bert_forward_scratch_size(&c, ep, Int64(N), Int64(B)))
        floats += Int(dr_bert_backward_scratch_size(&c, ep, Int64(N), Int64(B), Int64(maxT)))
    }
    floats += 4 * model.store.count
    return floats * MemoryLayout<Float>.size
}

/// `chunk`: data-parallel chunks of that many rows on the bench's threads (`ChunkedReduction`,
/// single-threaded BLAS per chunk) instead of one pass with BLAS's own threads.
/// `packed`: every frozen linear layer through the packed kernel (`training.packedGemm`).
/// `bf16`: and in bfloat16 (`training.frozenPrecision` "bf16"; skipped without AVX512-BF16).
struct MethodCase { let name: String; let spec: ModelSpec; let fixedLength: Int?; var chunk: Int? = nil; var packed = false; var bf16 = false }

func trainCases(_ o: BenchOptions) -> [MethodCase] {
    var adapter = ModelSpec()
    adapter.adapter = true          // bottleneck 64, every layer, output placement, GELU
    var lora = ModelSpec()
    lora.lora = true                // rank 8, alpha 16, on query and value
    var full = ModelSpec()
    full.fullFineTune = true
    var upper = adapter
    upper.adapterLayers = [3, 4, 5]  // adapters on the upper half: the backward stops at layer 3
    let all = [MethodCase(name: "adapter", spec: adapter, fixedLength: nil),
               MethodCase(name: "adapter-packed", spec: adapter, fixedLength: nil, packed: true),
               MethodCase(name: "adapter-t16", spec: adapter, fixedLength: 16),
               MethodCase(name: "adapter-c8", spec: adapter, fixedLength: nil, chunk: 8),
               MethodCase(name: "adapter-c16", spec: adapter, fixedLength: nil, chunk: 16),
               MethodCase(name: "adapter-packed-c16", spec: adapter, fixedLength: nil, chunk: 16, packed: true),
               MethodCase(name: "adapter-bf16", spec: adapter, fixedLength: nil, packed: true, bf16: true),
               MethodCase(name: "adapter-bf16-c16", spec: adapter, fixedLength: nil, chunk: 16, packed: true, bf16: true),
               MethodCase(name: "adapter-upper", spec: upper, fixedLength: nil),
               MethodCase(name: "adapter-upper-c8", spec: upper, fixedLength: nil, chunk: 8),
               MethodCase(name: "lora", spec: lora, fixedLength: nil),
               MethodCase(name: "full", spec: full, fixedLength: nil)]
    guard let m = o.methods else { return all }
    return all.filter { m.contains($0.name) }
}

func benchTrainStep(_ o: BenchOptions, _ out: Reporter) throws -> [TrainRecord] {
    let encoder = try SentenceEncoder(modelDirectory: URL(fileURLWithPath: o.modelDir))
    let cfg = encoder.config
    let data = loadTrainData(dataDir: o.dataDir, tokenizer: encoder.tokenizer)
    let meanLen = Double(data.examples.reduce(0) { $0 + $1.ids.count }) / Double(data.examples.count)
    print("# training step: \(data.examples.count) utterances, \(data.source), mean length \(String(format: "%.1f", meanLen)) tokens, batch \(o.batch)")
    // A fixed, shuffled list of batches mixing both domains, cycled by every timed loop.
    var rng = SplitMix64(seed: 2024)
    var order = Array(data.examples.indices)
    for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
    let nBatches = 16
    let picks = (0..<(nBatches * o.batch)).map { data.examples[order[$0 % order.count]] }
    let baseMiB = Double(encoder.weights.arena.count * 4) / 1048576
    var records: [TrainRecord] = []

    for c in trainCases(o) {
        if c.bf16 && dr_bf16_available() == 0 { print("# \(c.name): skipped, this CPU has no AVX512-BF16"); continue }
        for threads in o.threads {
            setComputeThreads(threads)
            resetPeakRSS()
            let rssBefore = currentRSSMiB()
            // the model and its workspaces live in this scope only, so the next case starts clean
            let rec: TrainRecord = try {
                let model = ContinualModel(base: encoder.weights, spec: c.spec, seed: 7)
                if c.packed {
                    var t = TrainingDefaults()
                    t.packedGemm = true
                    if c.bf16 { t.frozenPrecision = "bf16" }
                    model.useParallelism(t, inference: model.inference)
                }
                model.chunking = c.chunk.map { ChunkedReduction(chunkSize: $0, threads: threads) }  // after: useParallelism sets it
                for d in data.domains { model.addDomain(name: d.name, intents: d.intents) }
                var batches: [TrainingBatch] = [], packed: [PackedBatch] = []
                for b in 0..<nBatches {
                    var tb = TrainingBatch()
                    for e in picks[(b * o.batch)..<((b + 1) * o.batch)] {
                        let slot = model.domains[e.domain]
                        tb.append(ids: c.fixedLength.map { fixedLength(e.ids, $0) } ?? e.ids, gate: Int32(e.domain),
                                  label: Int32(slot.classOffset + e.intent), range: slot.classRange)
                    }
                    batches.append(tb)
                    packed.append(PackedBatch(tb.sequences))
                }
                let work = packed.map { trainStepWork(cfg, model, $0) }
                let optimizer = AdamWStep(config: OptimizerConfig())
                var lossW = LossWeights()
                lossW.classification = 1
                // warm-up, starting with the batches that size the workspaces (most tokens, largest
                // attention), so that nothing grows inside the timed loop
                let maxPS = packed.map { p in p.cuSeqlens.withUnsafeBufferPointer { dr_attention_prob_size($0.baseAddress, Int64(p.count), Int64(cfg.heads)) } }
                let warm = [packed.indices.max { packed[$0].tokenCount < packed[$1].tokenCount }!, maxPS.indices.max { maxPS[$0] < maxPS[$1] }!, 0, 1]
                for k in warm {
                    _ = try model.trainStep(batches[k], weights: lossW, optimizer: optimizer, lr: 1e-4)
                    _ = model.logits(batches[k].sequences, gateIds: batches[k].gateIds)
                }

                // Each round, on batch i: trainStep; then forward alone (model.logits), forward +
                // backward (computeGradients), the optimizer (AdamWStep.apply) and an sgemm replay of
                // the step's GEMM calls, back to back so that every figure of a round sees the same
                // machine load; medians over rounds.
                let peakRss = peakRSSMiB()  // the model's own peak, before the replay's buffers exist
                let segments = model.store.trainableSegments { $0.group != "router" }
                let buffers = GemmBuffers(for: work.flatMap { $0.forward + $0.backward })
                let replays = work.map { SgemmReplay($0.forward + $0.backward, buffers: buffers) }
                func med(_ xs: [Double], _ scale: Double = 1) -> Double? { xs.isEmpty ? nil : median(xs) * scale }
                var stepCpu: [Double] = []
                var step: [Double] = [], fwd: [Double] = [], grads: [Double] = [], opt: [Double] = []
                var rate: [Double] = [], ceilingRate: [Double] = [], ratio: [Double] = []
                let start = now()
                var i = 0
                while now() - start < o.seconds || i < 8 {
                    let k = i % nBatches, tb = batches[k]
                    let c0 = cpuTime()
                    var t0 = now()
                    _ = try model.trainStep(tb, weights: lossW, optimizer: optimizer, lr: 1e-4)
                    step.append(now() - t0)
                    stepCpu.append(cpuTime() - c0)
                    rate.append(work[k].total / step.last!)
                    i += 1
                    if o.stepOnly { continue }
                    t0 = now()
                    _ = model.logits(tb.sequences, gateIds: tb.gateIds)
                    fwd.append(now() - t0)
                    t0 = now()
                    _ = try model.computeGradients(tb, weights: lossW)
                    grads.append(now() - t0)
                    t0 = now()
                    _ = optimizer.apply(model.store, segments: segments, lr: 1e-4, t: model.optimizerStep + 1)
                    opt.append(now() - t0)
                    let tg = replays[k].run()
                    ceilingRate.append(replays[k].flops / tg)
                    ratio.append(rate.last! / ceilingRate.last!)
                }

                let meanN = Double(packed.reduce(0) { $0 + $1.tokenCount }) / Double(nBatches)
                let gf = median(rate) / 1e9, ceiling = med(ceilingRate, 1e-9)
                let big = packed.max { $0.tokenCount < $1.tokenCount }!
                let maxT = packed.map { p in (0..<p.count).map { p.length($0) }.max()! }.max()!
                let arena = arenaBytes(cfg, model, tokens: big.tokenCount, probs: Int(maxPS.max()!), batch: o.batch, maxT: maxT)
                let stepMs = median(step) * 1e3, fwdMs = med(fwd, 1e3), gradMs = med(grads, 1e3)
                let exs = Double(o.batch) / median(step)
                return TrainRecord(
                    method: c.name, threads: threads, batch: o.batch, tokens: meanN, examplesPerSec: exs, stepMs: stepMs, stepCpuMs: median(stepCpu) * 1e3,
                    forwardMs: fwdMs, backwardMs: gradMs.flatMap { g in fwdMs.map { g - $0 } }, optimizerMs: med(opt, 1e3),
                    forwardGflop: work.reduce(0) { $0 + $1.forwardFlops } / Double(nBatches) / 1e9,
                    backwardGflop: work.reduce(0) { $0 + $1.backwardFlops } / Double(nBatches) / 1e9,
                    gflops: gf, sgemmGflops: ceiling, ratioToSgemm: med(ratio),
                    trainableParams: model.store.trainableCount, arenaMiB: Double(arena) / 1048576, baseWeightsMiB: baseMiB,
                    rssBeforeMiB: rssBefore, peakRssMiB: peakRss, maxRssMiB: maxRSSMiB(), loadAvg: loadAverage(),
                    note: "\(step.count) rounds over \(nBatches) batches of \(data.source)"
                        + (c.fixedLength.map { ", every sequence \($0) tokens" } ?? ""))
            }()
            records.append(rec)
            out.emit(rec)
        }
    }
    return records
}

/// With `reference` (measured in this sitting): vsPyTorch = our examples/s ÷ the PyTorch step's at
/// the same method and thread count.
func printTrainTable(_ records: [TrainRecord], reference: ReferenceFigures? = nil) {
    print("\n| method | thr | tokens/batch | examples/s | step ms (CPU ms) | fwd ms | bwd ms | opt ms | GFLOP/step | GFLOP/s | sgemm GFLOP/s | ratio | arenas MiB | RSS before → peak MiB | load |"
        + (reference == nil ? "" : " vsPyTorch |"))
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + (reference == nil ? "" : "---|"))
    for r in records {
        let vs = reference.map { " \(fmt($0.trainRatio(method: r.method, threads: r.threads, examplesPerSec: r.examplesPerSec), 2)) |" } ?? ""
        print("| \(r.method) | \(r.threads) | \(fmt(r.tokens, 0)) | \(fmt(r.examplesPerSec)) | \(fmt(r.stepMs)) (\(fmt(r.stepCpuMs))) | "
            + "\(fmt(r.forwardMs)) | \(fmt(r.backwardMs)) | \(fmt(r.optimizerMs, 2)) | \(fmt(r.forwardGflop + r.backwardGflop, 2)) | "
            + "\(fmt(r.gflops)) | \(fmt(r.sgemmGflops)) | \(fmt(r.ratioToSgemm, 2)) | \(fmt(r.arenaMiB)) | "
            + "\(fmt(r.rssBeforeMiB, 0)) → \(fmt(r.peakRssMiB, 0)) | \(fmt(r.loadAvg)) |" + vs)
    }
}
