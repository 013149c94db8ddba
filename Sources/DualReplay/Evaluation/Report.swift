import Foundation

/// The Markdown table of an experiment, in the seed's style (F1 and transfer in points).
public enum ResultsReport {
    static func pts(_ m: MeanStd?) -> String {
        guard let m, m.count > 0, m.mean.isFinite else { return "-" }
        return m.count > 1 ? String(format: "%.1f ± %.1f", 100 * m.mean, 100 * m.std) : String(format: "%.1f", 100 * m.mean)
    }

    public static func markdown(_ r: ExperimentResults) -> String {
        var s = "| Method | Avg F1 ± std | BWT ± std | FWT | Forgetting | oracle F1 | oracle BWT | router acc | trainable params (+/domain) | p99 ms | train s |\n"
        s += "|---|---|---|---|---|---|---|---|---|---|---|\n"
        for m in r.summaries {
            let router = m.routerAccuracy.map { pts($0) } ?? "-"
            let p99 = m.latencyP99ms.map { String(format: "%.1f", $0) } ?? "-"
            s += "| \(m.method) | \(pts(m.routed.averageF1)) | \(pts(m.routed.backwardTransfer)) | \(pts(m.routed.forwardTransfer)) | "
            s += "\(pts(m.routed.forgetting)) | \(pts(m.oracle.averageF1)) | \(pts(m.oracle.backwardTransfer)) | \(router) | "
            s += "\(m.trainableParameters) (+\(m.parametersPerNewDomain)) | \(p99) | \(String(format: "%.0f", m.trainSeconds.mean)) |\n"
        }
        if let j = r.jointF1, !j.isEmpty {
            let mean = j.values.reduce(0, +) / Double(j.count)
            s += "| joint (reference, oracle) | \(String(format: "%.1f", 100 * mean)) | - | - | - | \(String(format: "%.1f", 100 * mean)) | - | - | - | - | - |\n"
        }
        let p = r.experimentProtocol
        s += "\nDomains: \(p.domainNames.count); orderings: \(p.config.resolvedOrderingSeeds.count); byte budget: \(p.byteBudget) B; "
        s += "eval split: \(p.config.evalSplit ?? "test"); protocol \(p.hash); code \(p.codeVersion).\n"
        s += "Avg F1, BWT, FWT, forgetting: routed mode (no domain given) unless marked oracle; FWT against `single`, in points.\n"
        return s
    }
}
