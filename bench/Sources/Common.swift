// Shared pieces of dr-bench: options, clocks, statistics, memory probes, the sgemm ceiling and
// the JSON-lines output.
import CKernels
import DualReplay
import Foundation

struct BenchOptions {
    var modelDir = ProcessInfo.processInfo.environment["DR_MODEL"] ?? "models/all-MiniLM-L6-v2"
    var dataDir = ProcessInfo.processInfo.environment["DR_DATA"] ?? "../shared/data"
    /// Benches to run: encoder, train (nil = all).
    var only: Set<String>? = nil
    var latencyRuns = 1000
    var threads = [1, 2]
    /// Training-step methods: adapter, lora, full, adapter-t16 (nil = all).
    var methods: [String]? = nil
    /// Minimum seconds each timed quantity of the training bench runs.
    var seconds = 2.0
    var batch = 32
    /// JSON lines are also appended here.
    var out: String? = nil
    /// Training bench: time trainStep only (no split, no sgemm replay), e.g. under a profiler.
    var stepOnly = false
    /// JSON lines of `make bench-reference` (PyTorch, onnxruntime): ratios when measured in this sitting.
    var reference: String? = nil
    /// Predict bench: extra dual-replay states whose router reads these frozen layers (the
    /// default state's router reads the last one).
    var routerLayers: [Int] = []

    static func parse(_ args: [String]) -> BenchOptions {
        var o = BenchOptions()
        func value(_ name: String) -> String? {
            guard let i = args.firstIndex(of: name), i + 1 < args.count else { return nil }
            return args[i + 1]
        }
        if let v = value("--model") { o.modelDir = v }
        if let v = value("--data") { o.dataDir = v }
        if let v = value("--only") { o.only = Set(v.split(separator: ",").map(String.init)) }
        if let v = value("--latency-runs"), let n = Int(v) { o.latencyRuns = n }
        if let v = value("--threads") { o.threads = v.split(separator: ",").compactMap { Int($0) } }
        if let v = value("--methods") { o.methods = v.split(separator: ",").map(String.init) }
        if let v = value("--seconds"), let s = Double(v) { o.seconds = s }
        if let v = value("--batch"), let n = Int(v) { o.batch = n }
        if let v = value("--out") { o.out = v }
        if let v = value("--reference") { o.reference = v }
        if let v = value("--router-layers") { o.routerLayers = v.split(separator: ",").compactMap { Int($0) } }
        o.stepOnly = args.contains("--step-only")
        return o
    }

    func runs(_ bench: String) -> Bool { only == nil || only!.contains(bench) }
}

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

/// CPU seconds this process has used (all its threads): unlike the wall clock, not inflated when
/// other processes take the cores, so a 1-thread figure stays comparable on a busy machine.
func cpuTime() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : 0.5 * (s[s.count / 2 - 1] + s[s.count / 2])
}
func percentile(_ xs: [Double], _ p: Double) -> Double {
    let s = xs.sorted()
    return s[min(s.count - 1, Int((Double(s.count - 1) * p).rounded()))]
}

/// The C view of a model configuration (the library keeps its own internal).
func kernelConfig(_ cfg: BertConfig) -> dr_bert_config {
    dr_bert_config(n_layers: Int64(cfg.layers), hidden: Int64(cfg.hidden), n_heads: Int64(cfg.heads),
                   intermediate: Int64(cfg.intermediate), vocab: Int64(cfg.vocabSize),
                   max_positions: Int64(cfg.maxPositions), type_vocab: Int64(cfg.typeVocabSize),
                   ln_eps: cfg.layerNormEps)
}

/// The 1-minute load average (/proc/loadavg): above the core count, other processes were
/// competing for the cores while a figure was measured.
func loadAverage() -> Double? {
    guard let s = try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8) else { return nil }
    return s.split(separator: " ").first.flatMap { Double($0) }
}

// MARK: - memory

/// Resets the kernel's peak-RSS mark of this process (Linux clear_refs "5"); false if refused.
@discardableResult
func resetPeakRSS() -> Bool {
    guard let f = fopen("/proc/self/clear_refs", "w") else { return false }
    defer { fclose(f) }
    return fputs("5", f) >= 0
}

/// A "Vm…:" line of /proc/self/status in MiB.
private func procStatusMiB(_ key: String) -> Double? {
    guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
    for line in s.split(separator: "\n") where line.hasPrefix(key + ":") {
        let kb = line.split(separator: " ").compactMap { Double($0) }.first
        return kb.map { $0 / 1024 }
    }
    return nil
}
/// VmHWM: the peak resident set since start or the last `resetPeakRSS`.
func peakRSSMiB() -> Double? { procStatusMiB("VmHWM") }
/// VmRSS: the resident set now.
func currentRSSMiB() -> Double? { procStatusMiB("VmRSS") }

/// getrusage's ru_maxrss (the process's high-water mark, never reset) in MiB.
func maxRSSMiB() -> Double {
    var u = rusage()
    getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &u)
    return Double(u.ru_maxrss) / 1024
}

// MARK: - GEMM shapes and the sgemm ceiling

/// One sgemm call of a pass, as the kernels issue it through dr_sgemm (row-major):
/// C (M,N) = op(A) · op(B), K the inner size.
struct Gemm {
    var transA: Int32, transB: Int32
    var M: Int, N: Int, K: Int
    var flops: Double { 2 * Double(M) * Double(N) * Double(K) }
}

/// Operand buffers big enough for every call of a set of GEMMs (values irrelevant, finite).
final class GemmBuffers {
    let a: KernelBuffer, b: KernelBuffer, c: KernelBuffer
    init(for gemms: [Gemm]) {
        let n = gemms.map { max($0.M * $0.K, $0.K * $0.N, $0.M * $0.N) }.max() ?? 1
        a = KernelBuffer(count: n); b = KernelBuffer(count: n); c = KernelBuffer(count: n)
        for i in 0..<n { a.base[i] = Float(i % 7) * 0.01; b.base[i] = Float(i % 5) * 0.01 }
    }
}

/// Runs exactly these sgemm calls, in this order, at the current thread count, accumulating into
/// C (beta = 1, as the encoder's linear layers do after writing the bias): the ceiling a pass
/// made of them could reach if everything else were free.
struct SgemmReplay {
    let gemms: [Gemm]
    let flops: Double
    let buffers: GemmBuffers

    init(_ gemms: [Gemm], buffers: GemmBuffers? = nil) {
        self.gemms = gemms
        flops = gemms.reduce(0) { $0 + $1.flops }
        self.buffers = buffers ?? GemmBuffers(for: gemms)
    }

    /// Seconds one replay takes.
    func run() -> Double {
        let a = buffers.a.base, b = buffers.b.base, c = buffers.c.base
        let t0 = now()
        for g in gemms {
            let lda = g.transA == 0 ? g.K : g.M, ldb = g.transB == 0 ? g.N : g.K
            dr_sgemm(g.transA, g.transB, Int64(g.M), Int64(g.N), Int64(g.K), 1, a, Int64(lda), b, Int64(ldb), 1, c, Int64(g.N))
        }
        return now() - t0
    }
}

/// OpenBLAS sgemm GFLOP/s on these calls (median of repeated replays).
func sgemmCeiling(_ gemms: [Gemm], minSeconds: Double = 0.3) -> Double {
    let r = SgemmReplay(gemms)
    _ = r.run()
    var times: [Double] = []
    let start = now()
    while now() - start < minSeconds || times.count < 5 { times.append(r.run()) }
    return r.flops / median(times) / 1e9
}

// MARK: - output

/// Appends JSON lines to stdout (and to --out) and keeps them for the closing tables.
final class Reporter {
    private(set) var lines: [String] = []
    let outPath: String?
    init(outPath: String?) { self.outPath = outPath }

    func emit<T: Encodable>(_ record: T) {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        let line = String(decoding: try! enc.encode(record), as: UTF8.self)
        print(line)
        lines.append(line)
        if let path = outPath {
            if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
            if let h = FileHandle(forWritingAtPath: path) {
                h.seekToEndOfFile()
                h.write(Data((line + "\n").utf8))
                h.closeFile()
            }
        }
    }
}

func fmt(_ x: Double?, _ digits: Int = 1) -> String { x.map { String(format: "%.\(digits)f", $0) } ?? "-" }

/// A zeroed float buffer the kernels write into directly (the library keeps its arenas' pointers
/// internal; a kernel bench needs them).
final class KernelBuffer {
    let count: Int
    let base: UnsafeMutablePointer<Float>
    init(count: Int) {
        self.count = count
        base = .allocate(capacity: max(count, 1))
        base.initialize(repeating: 0, count: max(count, 1))
    }
    deinit { base.deallocate() }
}
