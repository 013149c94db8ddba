// The frozen encoder's forward pass: throughput at batch 32 and single-utterance latency.
import CKernels
import DualReplay
import Foundation

struct BenchRecord: Encodable {
    let bench: String
    let threads: Int
    let batch: Int
    let tokens: Int
    let value: Double
    let unit: String
    let gflops: Double?
    let sgemmGflops: Double?
    let ratioToSgemm: Double?
    let note: String
}

/// Utterances of CLINC150 (all splits, no out-of-scope) when the data is present, otherwise a
/// built-in set.
func benchUtterances(dataDir: String) -> (texts: [String], source: String) {
    let url = URL(fileURLWithPath: dataDir).appendingPathComponent("clinc150/clinc150.jsonl")
    if let data = try? Data(contentsOf: url) {
        var texts: [String] = []
        for line in data.split(separator: UInt8(ascii: "\n")) {
            if let obj = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any],
               let t = obj["text"] as? String, (obj["domain"] as? String) != "oos" {
                texts.append(t)
            }
        }
        if !texts.isEmpty { return (texts, "clinc150") }
    }
    let base = ["how do i reset my password", "what is the weather like in paris today", "transfer money to savings",
                "book a table for four at seven", "cancel my subscription please", "when is my next payment due"]
    return ((0..<2000).map { base[$0 % base.count] }, "built-in (clinc150 not found)")
}

/// GEMM flops of one encoder forward on a packed batch (linear layers + attention products).
func encoderFlops(_ cfg: BertConfig, _ batch: PackedBatch) -> Double {
    let N = Double(batch.tokenCount), C = Double(cfg.hidden), I = Double(cfg.intermediate)
    let linear = 2 * N * (3 * C * C + C * C + 2 * C * I)
    var attn = 0.0
    for b in 0..<batch.count { let T = Double(batch.length(b)); attn += 2 * 2 * T * T * C }
    return Double(cfg.layers) * (linear + attn)
}

/// The encoder's four linear shapes for N tokens, as dr_matmul_forward issues them.
func encoderGemms(_ cfg: BertConfig, tokens N: Int) -> [Gemm] {
    let C = cfg.hidden, I = cfg.intermediate
    return [(3 * C, C), (C, C), (I, C), (C, I)].map { Gemm(transA: 0, transB: 1, M: N, N: $0.0, K: $0.1) }
}

func benchEncoder(_ o: BenchOptions, _ out: Reporter) throws -> [BenchRecord] {
    var records: [BenchRecord] = []
    func report(_ r: BenchRecord) { records.append(r); out.emit(r) }
    let encoder = try SentenceEncoder(modelDirectory: URL(fileURLWithPath: o.modelDir))
    let (texts, source) = benchUtterances(dataDir: o.dataDir)
    let ids = encoder.encode(texts)
    let meanLen = Double(ids.reduce(0) { $0 + $1.count }) / Double(ids.count)
    print("# encoder forward: \(ids.count) utterances from \(source), mean length \(String(format: "%.1f", meanLen)) tokens")
    for threads in o.threads {
        setComputeThreads(threads)
        // throughput at batch 32
        var batches: [PackedBatch] = []
        for s in stride(from: 0, to: min(ids.count, 32 * 40), by: 32) {
            batches.append(PackedBatch(Array(ids[s..<min(ids.count, s + 32)])))
        }
        for b in batches.prefix(3) { _ = encoder.forward(b) }
        // each forward is followed by an sgemm replay of its own linear layers (same load)
        let replays = batches.map { SgemmReplay(encoderGemms(encoder.config, tokens: $0.tokenCount)) }
        var times: [Double] = [], flops: [Double] = [], ceilings: [Double] = [], ratios: [Double] = []
        for _ in 0..<3 {
            for (k, b) in batches.enumerated() {
                let t0 = now(); _ = encoder.forward(b); times.append(now() - t0)
                flops.append(encoderFlops(encoder.config, b))
                ceilings.append(replays[k].flops / replays[k].run())
                ratios.append(flops.last! / times.last! / ceilings.last!)
            }
        }
        let totalT = times.reduce(0, +), totalF = flops.reduce(0, +)
        let examplesPerSec = Double(batches.count * 3 * 32) / totalT
        let gf = totalF / totalT / 1e9
        let tokensPerBatch = batches.map(\.tokenCount).reduce(0, +) / batches.count
        report(BenchRecord(bench: "encoder_forward_throughput", threads: threads, batch: 32, tokens: tokensPerBatch,
                           value: examplesPerSec, unit: "examples/s", gflops: gf, sgemmGflops: median(ceilings) / 1e9,
                           ratioToSgemm: median(ratios),
                           note: "aggregate over \(times.count) batches of \(source); ceiling and ratio: medians of per-batch replays"))
    }
    // single-utterance latency at 1 thread, three paths alternating per utterance so all see the
    // same load: the default (packed frozen weights, `dr_packed_matmul`), the unpacked few-rows
    // kernel (`dr_small_matmul`, the default before stop 16) and OpenBLAS for every GEMM
    setComputeThreads(1)
    enum Path: CaseIterable { case packed, small, openblas }
    func select(_ p: Path) {
        dr_set_small_matmul(p == .openblas ? 0 : 1)
        dr_set_packed_matmul(p == .packed ? 1 : 0)
    }
    var lat: [Path: [Double]] = [:], fl: [Double] = []
    for i in 0..<(o.latencyRuns + 50) {
        let text = texts[(i * 7919) % texts.count]
        for path in Path.allCases {
            select(path)
            let t0 = now()
            let b = PackedBatch([encoder.tokenizer.encode(text)])
            let e = encoder.forward(b).sentenceEmbeddings()
            let t1 = now()
            precondition(e.count == encoder.config.hidden)
            guard i >= 50 else { continue }
            lat[path, default: []].append(t1 - t0)
            if path == .packed { fl.append(encoderFlops(encoder.config, b)) }
        }
    }
    select(.packed)
    let main = lat[.packed]!
    let p50 = percentile(main, 0.5) * 1e3, p99 = percentile(main, 0.99) * 1e3
    let gf = fl.reduce(0, +) / main.reduce(0, +) / 1e9
    let ceil = sgemmCeiling(encoderGemms(encoder.config, tokens: Int(meanLen.rounded())))
    let isa = ["none (the unpacked path)", "AVX2", "AVX-512"][Int(dr_packed_matmul_isa())]
    let packedNote = encoder.weights.packedBytes > 0 ? "packed weights (\(isa), \(encoder.weights.packedBytes / 1_000_000) MB)" : "no packed weights"
    report(BenchRecord(bench: "encoder_latency_p50", threads: 1, batch: 1, tokens: Int(meanLen.rounded()), value: p50, unit: "ms",
                       gflops: gf, sgemmGflops: ceil, ratioToSgemm: gf / ceil, note: "\(main.count) runs, tokenize+forward+pool, \(packedNote)"))
    report(BenchRecord(bench: "encoder_latency_p99", threads: 1, batch: 1, tokens: Int(meanLen.rounded()), value: p99, unit: "ms",
                       gflops: nil, sgemmGflops: nil, ratioToSgemm: nil, note: "\(main.count) runs"))
    let available = dr_small_matmul_available() != 0
    for (path, name, note) in [(Path.small, "encoder_latency_unpacked", available ? "the unpacked few-rows kernel (qkv and fc; OpenBLAS for the others), alternating with the rows above" : "the few-rows kernels are not available on this CPU: the same path as above"),
                               (Path.openblas, "encoder_latency_openblas", available ? "every GEMM through OpenBLAS, alternating with the rows above" : "the few-rows kernels are not available on this CPU: the same path as above")] {
        let l = lat[path]!
        report(BenchRecord(bench: name + "_p50", threads: 1, batch: 1, tokens: Int(meanLen.rounded()),
                           value: percentile(l, 0.5) * 1e3, unit: "ms", gflops: nil, sgemmGflops: nil, ratioToSgemm: nil, note: note))
        report(BenchRecord(bench: name + "_p99", threads: 1, batch: 1, tokens: Int(meanLen.rounded()),
                           value: percentile(l, 0.99) * 1e3, unit: "ms", gflops: nil, sgemmGflops: nil, ratioToSgemm: nil, note: note))
    }
    return records
}

/// With `reference` (measured in this sitting): vsPyTorch and vsOnnxruntime for the latency rows,
/// as speed ratios (their ms ÷ ours; > 1 means ours is faster).
func printEncoderTable(_ records: [BenchRecord], reference: ReferenceFigures? = nil) {
    let extra = reference == nil ? "" : " vsPyTorch | vsOnnxruntime |"
    print("\n| bench | threads | batch | tokens | value | GFLOP/s | sgemm GFLOP/s | ratio |" + extra)
    print("|---|---|---|---|---|---|---|---|" + (reference == nil ? "" : "---|---|"))
    for r in records {
        let ratio = r.ratioToSgemm.map { String(format: "%.2f", $0) } ?? "-"
        var row = "| \(r.bench) | \(r.threads) | \(r.batch) | \(r.tokens) | \(String(format: "%.2f", r.value)) \(r.unit) | \(fmt(r.gflops)) | \(fmt(r.sgemmGflops)) | \(ratio) |"
        if let reference {
            let p = r.bench.hasSuffix("p99") ? "p99" : "p50"
            let isLatency = r.bench.hasPrefix("encoder_latency_")
            for engine in ["torch", "onnxruntime"] {
                row += " \(fmt(isLatency ? reference.latencyRatio(engine: engine, percentile: p, ms: r.value) : nil, 2)) |"
            }
        }
        print(row)
    }
}
