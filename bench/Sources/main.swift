// dr-bench — kernel and end-to-end benchmarks (`make bench`, release build).
// Every figure comes with its ceiling measured in the same run: OpenBLAS sgemm GFLOP/s on the
// same GEMM shapes. Results: a table on stdout and JSON lines (also appended to bench/results.jsonl
// when --out is given).
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

var records: [BenchRecord] = []
let args = CommandLine.arguments.dropFirst()
func option(_ name: String) -> String? {
    guard let i = args.firstIndex(of: name), args.index(after: i) < args.endIndex else { return nil }
    return args[args.index(after: i)]
}
let modelDir = option("--model") ?? ProcessInfo.processInfo.environment["DR_MODEL"] ?? "models/all-MiniLM-L6-v2"
let dataDir = option("--data") ?? ProcessInfo.processInfo.environment["DR_DATA"] ?? "../shared/data"
let only = option("--only")
let latencyRuns = Int(option("--latency-runs") ?? "") ?? 1000

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

func median(_ xs: [Double]) -> Double { let s = xs.sorted(); return s[s.count / 2] }
func percentile(_ xs: [Double], _ p: Double) -> Double {
    let s = xs.sorted()
    return s[min(s.count - 1, Int((Double(s.count - 1) * p).rounded()))]
}

/// Utterances of CLINC150's test split when the data is present, otherwise a built-in set.
func benchUtterances() -> (texts: [String], source: String) {
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

/// sgemm GFLOP/s on the encoder's linear shapes for N tokens (the ceiling our kernels chase).
func sgemmCeiling(_ cfg: BertConfig, tokens N: Int, minSeconds: Double = 0.3) -> Double {
    let C = cfg.hidden, I = cfg.intermediate
    let shapes = [(N, 3 * C, C), (N, C, C), (N, I, C), (N, C, I)]
    let maxElems = shapes.map { max($0.0 * $0.2, $0.1 * $0.2, $0.0 * $0.1) }.max()!
    let a = FloatArena(count: maxElems), b = FloatArena(count: maxElems), c = FloatArena(count: maxElems)
    for i in 0..<maxElems { a.base[i] = Float(i % 7) * 0.01; b.base[i] = Float(i % 5) * 0.01 }
    var flops = 0.0
    for (m, n, k) in shapes { flops += 2 * Double(m * n * k) }
    func once() {
        for (m, n, k) in shapes {
            dr_sgemm(0, 1, Int64(m), Int64(n), Int64(k), 1, a.base, Int64(k), b.base, Int64(k), 0, c.base, Int64(n))
        }
    }
    once()
    var times: [Double] = []
    let start = now()
    while now() - start < minSeconds || times.count < 5 {
        let t0 = now(); once(); times.append(now() - t0)
    }
    return flops / median(times) / 1e9
}

func report(_ r: BenchRecord) {
    records.append(r)
    let enc = JSONEncoder()
    enc.outputFormatting = [.sortedKeys]
    print(String(decoding: try! enc.encode(r), as: UTF8.self))
}

// MARK: - encoder forward

func benchEncoder() throws {
    let encoder = try SentenceEncoder(modelDirectory: URL(fileURLWithPath: modelDir))
    let (texts, source) = benchUtterances()
    let ids = encoder.encode(texts)
    let meanLen = Double(ids.reduce(0) { $0 + $1.count }) / Double(ids.count)
    print("# encoder forward: \(ids.count) utterances from \(source), mean length \(String(format: "%.1f", meanLen)) tokens")
    for threads in [1, 2] {
        setComputeThreads(threads)
        // throughput at batch 32
        var batches: [PackedBatch] = []
        for s in stride(from: 0, to: min(ids.count, 32 * 40), by: 32) {
            batches.append(PackedBatch(Array(ids[s..<min(ids.count, s + 32)])))
        }
        for b in batches.prefix(3) { _ = encoder.forward(b) }
        var times: [Double] = [], flops: [Double] = []
        for _ in 0..<3 {
            for b in batches {
                let t0 = now(); _ = encoder.forward(b); times.append(now() - t0)
                flops.append(encoderFlops(encoder.config, b))
            }
        }
        let totalT = times.reduce(0, +), totalF = flops.reduce(0, +)
        let examplesPerSec = Double(batches.count * 3 * 32) / totalT
        let gf = totalF / totalT / 1e9
        let tokensPerBatch = batches.map(\.tokenCount).reduce(0, +) / batches.count
        let ceil = sgemmCeiling(encoder.config, tokens: tokensPerBatch)
        report(BenchRecord(bench: "encoder_forward_throughput", threads: threads, batch: 32, tokens: tokensPerBatch,
                           value: examplesPerSec, unit: "examples/s", gflops: gf, sgemmGflops: ceil, ratioToSgemm: gf / ceil,
                           note: "median-free aggregate over \(times.count) batches of \(source)"))
    }
    // single-utterance latency at 1 thread
    setComputeThreads(1)
    var lat: [Double] = [], fl: [Double] = []
    for i in 0..<(latencyRuns + 50) {
        let text = texts[(i * 7919) % texts.count]
        let t0 = now()
        let b = PackedBatch([encoder.tokenizer.encode(text)])
        let e = encoder.forward(b).sentenceEmbeddings()
        let t1 = now()
        precondition(e.count == encoder.config.hidden)
        if i >= 50 { lat.append(t1 - t0); fl.append(encoderFlops(encoder.config, b)) }
    }
    let p50 = percentile(lat, 0.5) * 1e3, p99 = percentile(lat, 0.99) * 1e3
    let gf = fl.reduce(0, +) / lat.reduce(0, +) / 1e9
    let ceil = sgemmCeiling(encoder.config, tokens: Int(meanLen.rounded()))
    report(BenchRecord(bench: "encoder_latency_p50", threads: 1, batch: 1, tokens: Int(meanLen.rounded()), value: p50, unit: "ms",
                       gflops: gf, sgemmGflops: ceil, ratioToSgemm: gf / ceil, note: "\(lat.count) runs, tokenize+forward+pool"))
    report(BenchRecord(bench: "encoder_latency_p99", threads: 1, batch: 1, tokens: Int(meanLen.rounded()), value: p99, unit: "ms",
                       gflops: nil, sgemmGflops: nil, ratioToSgemm: nil, note: "\(lat.count) runs"))
}

if only == nil || only == "encoder" { try benchEncoder() }

print("\n| bench | threads | batch | tokens | value | GFLOP/s | sgemm GFLOP/s | ratio |")
print("|---|---|---|---|---|---|---|---|")
for r in records {
    func f(_ x: Double?) -> String { x.map { String(format: "%.1f", $0) } ?? "-" }
    let ratio = r.ratioToSgemm.map { String(format: "%.2f", $0) } ?? "-"
    print("| \(r.bench) | \(r.threads) | \(r.batch) | \(r.tokens) | \(String(format: "%.2f", r.value)) \(r.unit) | \(f(r.gflops)) | \(f(r.sgemmGflops)) | \(ratio) |")
}
