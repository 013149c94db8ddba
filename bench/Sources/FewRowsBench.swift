// The few-rows linear layers of the single-utterance path, kernel by kernel: the encoder's four
// weight shapes at N = 1..24 token rows, each through the packed kernel (`dr_packed_matmul`, every
// instruction set this CPU has), the unpacked few-rows kernel (`dr_small_matmul`) and OpenBLAS
// sgemm, interleaved call by call so that all see the same load. Medians over rounds.
import CKernels
import DualReplay
import Foundation

struct FewRowsRecord: Encodable {
    let bench = "fewrows_linear"
    let shape: String
    let rows: Int
    let path: String
    let usPerCall: Double
    let gflops: Double
    let vsSgemm: Double
}

func benchFewRows(_ o: BenchOptions, _ out: Reporter) -> [FewRowsRecord] {
    setComputeThreads(1)
    let shapes = [("qkv 384→1152", 384, 1152), ("attn out 384→384", 384, 384), ("ffn in 384→1536", 384, 1536),
                  ("ffn out 1536→384", 1536, 384)]
    let best = dr_packed_matmul_isa()
    var paths = ["sgemm"]
    if dr_small_matmul_available() != 0 { paths.append("unpacked") }
    if best >= DR_ISA_AVX2 { paths.append("packed-avx2") }
    if best >= DR_ISA_AVX512 { paths.append("packed-avx512") }
    print("# few-rows linear layers, 1 thread: \(paths.joined(separator: ", ")), interleaved")
    var rng = SplitMix64(seed: 5)
    var records: [FewRowsRecord] = []
    for (name, C, OC) in shapes {
        let w = (0..<(OC * C)).map { _ in Float(2 * rng.nextUnit() - 1) * 0.05 }
        let b = (0..<OC).map { _ in Float(2 * rng.nextUnit() - 1) * 0.05 }
        var packed = [Float](repeating: 0, count: Int(dr_packed_linear_size(Int64(C), Int64(OC))))
        dr_pack_linear(&packed, w, Int64(C), Int64(OC))
        for N in [1, 4, 11, 24] {
            let x = (0..<(N * C)).map { _ in Float(2 * rng.nextUnit() - 1) }
            var y = [Float](repeating: 0, count: N * OC)
            func call(_ path: String) {
                switch path {
                case "sgemm": dr_sgemm(0, 1, Int64(N), Int64(OC), Int64(C), 1, x, Int64(C), w, Int64(C), 0, &y, Int64(OC))
                case "unpacked": _ = dr_small_matmul(&y, x, w, b, Int64(N), Int64(C), Int64(OC))
                case "packed-avx2": _ = dr_packed_matmul(&y, x, packed, b, nil, Int64(N), Int64(C), Int64(OC), DR_ISA_AVX2)
                default: _ = dr_packed_matmul(&y, x, packed, b, nil, Int64(N), Int64(C), Int64(OC), DR_ISA_AVX512)
                }
            }
            var times: [String: [Double]] = [:]
            let reps = max(4, 2_000_000 / (N * C * OC / 64 + 1))  // about 1-10 ms per timed block
            for round in 0..<(12 + 3) {
                for path in paths {
                    let t0 = now()
                    for _ in 0..<reps { call(path) }
                    if round >= 3 { times[path, default: []].append((now() - t0) / Double(reps)) }
                }
            }
            let flops = 2.0 * Double(N * C * OC)
            let sg = median(times["sgemm"]!)
            for path in paths {
                let t = median(times[path]!)
                let r = FewRowsRecord(shape: name, rows: N, path: path, usPerCall: t * 1e6, gflops: flops / t / 1e9, vsSgemm: sg / t)
                out.emit(r)
                records.append(r)
            }
        }
    }
    return records
}

func printFewRowsTable(_ records: [FewRowsRecord]) {
    var paths: [String] = []
    for r in records where !paths.contains(r.path) { paths.append(r.path) }
    print("\n| shape | rows | " + paths.map { "\($0) µs (GFLOP/s)" }.joined(separator: " | ") + " | best ÷ sgemm |")
    print("|---|---|" + String(repeating: "---|", count: paths.count + 1))
    var seen: [String] = []
    for r in records where !seen.contains("\(r.shape)/\(r.rows)") {
        seen.append("\(r.shape)/\(r.rows)")
        let row = records.filter { $0.shape == r.shape && $0.rows == r.rows }
        let cells = paths.map { p in row.first { $0.path == p }.map { String(format: "%.1f (%.1f)", $0.usPerCall, $0.gflops) } ?? "-" }
        let bestRatio = row.filter { $0.path != "sgemm" }.map(\.vsSgemm).max() ?? 1
        print("| \(r.shape) | \(r.rows) | " + cells.joined(separator: " | ") + String(format: " | %.2f |", bestRatio))
    }
}
