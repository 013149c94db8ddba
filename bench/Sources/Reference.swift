// `--reference FILE`: the PyTorch and onnxruntime figures of `make bench-reference`
// (bench/reference/step_reference.py), next to ours. A ratio between two machines, or two boots of
// one machine, means nothing, so the file's `sitting` record must name this machine's boot and
// CPU and be recent; otherwise no ratio is printed and the reason is.
import Foundation

/// What the reference measured, keyed the way our records are.
struct ReferenceFigures {
    /// examples/s of the torch training step per (method, threads): adapter, adapter-t16.
    var trainStep: [String: Double] = [:]
    /// Single-utterance encoder latency at 1 thread, per engine (torch, onnxruntime): p50, p99 in ms.
    var latency: [String: (p50: Double, p99: Double)] = [:]
    var measuredAt = ""

    static func key(_ method: String, _ threads: Int) -> String { "\(method)@\(threads)" }

    /// Our figure ÷ the reference's, as a speed ratio: > 1 means ours is faster.
    func trainRatio(method: String, threads: Int, examplesPerSec: Double) -> Double? {
        trainStep[Self.key(method, threads)].map { examplesPerSec / $0 }
    }
    func latencyRatio(engine: String, percentile: String, ms: Double) -> Double? {
        guard let l = latency[engine], ms > 0 else { return nil }
        return (percentile == "p99" ? l.p99 : l.p50) / ms
    }
}

/// This machine's CPU model (/proc/cpuinfo's first "model name") and boot id.
func currentSitting() -> (cpuModel: String, bootId: String) {
    var cpu = "unknown"
    if let s = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
       let line = s.split(separator: "\n").first(where: { $0.hasPrefix("model name") }),
       let colon = line.firstIndex(of: ":") {
        cpu = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
    }
    let boot = (try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8))?
        .trimmingCharacters(in: .whitespacesAndNewlines) ?? "unknown"
    return (cpu, boot)
}

/// Reads the reference's JSON lines. Returns the figures, or nil and prints why they cannot be
/// compared with this run (another machine or boot, older than `maxAgeHours`, unreadable).
func loadReference(_ path: String, maxAgeHours: Double = 12) -> ReferenceFigures? {
    func refuse(_ why: String) -> ReferenceFigures? {
        print("# --reference \(path): no ratios printed: \(why). Rerun `make bench-reference` on this machine, in this sitting.")
        return nil
    }
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return refuse("the file cannot be read") }
    var figures = ReferenceFigures()
    var sitting: [String: Any]?
    for (i, line) in text.split(separator: "\n").enumerated() where !line.trimmingCharacters(in: .whitespaces).isEmpty {
        guard let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
            return refuse("line \(i + 1) is not a JSON object")
        }
        switch obj["record"] as? String {
        case "sitting": sitting = obj
        case "train_step":
            if let m = obj["method"] as? String, let t = obj["threads"] as? Int, let v = obj["examplesPerSec"] as? Double {
                figures.trainStep[ReferenceFigures.key(m, t)] = v
            }
        case "encoder_latency":
            if let e = obj["engine"] as? String, let p50 = obj["p50Ms"] as? Double, let p99 = obj["p99Ms"] as? Double {
                figures.latency[e] = (p50, p99)
            }
        default: break
        }
    }
    guard let s = sitting else { return refuse("it has no `sitting` record") }
    let here = currentSitting()
    let boot = s["bootId"] as? String ?? "?", cpu = s["cpuModel"] as? String ?? "?"
    if boot != here.bootId || cpu != here.cpuModel {
        return refuse("it was measured on \(s["hostname"] as? String ?? "?") (CPU \"\(cpu)\", boot \(boot)), "
            + "this run is on CPU \"\(here.cpuModel)\", boot \(here.bootId)")
    }
    guard let at = s["unixTime"] as? Double else { return refuse("its sitting has no time") }
    let age = (Date().timeIntervalSince1970 - at) / 3600
    if age > maxAgeHours || age < -0.1 {
        return refuse(String(format: "it was measured %.1f h ago (limit %.0f h)", age, maxAgeHours))
    }
    figures.measuredAt = s["timestamp"] as? String ?? "?"
    print("# reference: \(path), measured \(figures.measuredAt) on this machine and boot (\(String(format: "%.1f", age)) h ago): "
        + "\(figures.trainStep.count) training-step cases, encoder latency for \(figures.latency.keys.sorted().joined(separator: ", "))")
    return figures
}

/// One ratio, also written as a JSON line.
struct ReferenceComparison: Encodable {
    let bench = "reference_comparison"
    let case_: String
    let threads: Int
    let ours: Double
    let reference: Double
    let engine: String
    let unit: String
    /// Speed ratio: > 1 means ours is faster (examples/s ÷ theirs; their ms ÷ our ms).
    let speedRatio: Double
    let referenceMeasuredAt: String
    enum CodingKeys: String, CodingKey { case bench, case_ = "case", threads, ours, reference, engine, unit, speedRatio, referenceMeasuredAt }
}

/// The comparisons this run's records allow, emitted as JSON lines.
func emitReferenceComparisons(_ ref: ReferenceFigures, encoder: [BenchRecord], train: [TrainRecord], _ out: Reporter) {
    for r in train {
        if let theirs = ref.trainStep[ReferenceFigures.key(r.method, r.threads)] {
            out.emit(ReferenceComparison(case_: "train_step/\(r.method)", threads: r.threads, ours: r.examplesPerSec, reference: theirs,
                                         engine: "torch", unit: "examples/s", speedRatio: r.examplesPerSec / theirs,
                                         referenceMeasuredAt: ref.measuredAt))
        }
    }
    for r in encoder where r.bench.hasPrefix("encoder_latency_") {
        let p = r.bench.hasSuffix("p99") ? "p99" : "p50"
        for engine in ["torch", "onnxruntime"] {
            guard let l = ref.latency[engine] else { continue }
            let theirs = p == "p99" ? l.p99 : l.p50
            out.emit(ReferenceComparison(case_: r.bench, threads: r.threads, ours: r.value, reference: theirs, engine: engine, unit: "ms",
                                         speedRatio: theirs / r.value, referenceMeasuredAt: ref.measuredAt))
        }
    }
}
