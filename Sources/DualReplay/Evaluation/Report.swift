import Foundation

/// The Markdown table of an experiment, in the seed's style (F1 and transfer in points).
public enum ResultsReport {
    static func pts(_ m: MeanStd?) -> String {
        guard let m, m.count > 0, m.mean.isFinite else { return "-" }
        return m.count > 1 ? String(format: "%.1f ± %.1f", 100 * m.mean, 100 * m.std) : String(format: "%.1f", 100 * m.mean)
    }

    public static func markdown(_ r: ExperimentResults) -> String {
        var s = ""
        if let i = r.interim {
            s += "**Interim: \(i.finished) of \(i.total) runs finished** (still to run: \(i.missing.isEmpty ? "none" : i.missing.joined(separator: ", "))). "
            s += i.partialProtocolHash == r.experimentProtocol.hash ? "Same protocol as this build.\n\n"
                : "The runs were written under protocol \(i.partialProtocolHash), another build or thread count of this config.\n\n"
        }
        s += "| Method | Avg F1 ± std | BWT ± std | FWT | Forgetting | oracle F1 | oracle BWT | router acc | trainable params (+/domain) | p99 ms | train s |\n"
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
        s += multiIntentDomains(r)
        let p = r.experimentProtocol
        s += "\nDomains: \(p.domainNames.count); orderings: \(p.config.resolvedOrderingSeeds.count); byte budget: \(p.byteBudget) B; "
        s += "eval split: \((p.config.evalSplit ?? ConfigDefaults.evalSplit).rawValue); protocol \(p.hash); code \(p.codeVersion).\n"
        s += "Avg F1, BWT, FWT, forgetting: routed mode (no domain given) unless marked oracle; FWT against `single`, in points.\n"
        for m in r.summaries {
            guard let floats = r.runs.first(where: { $0.method == m.method })?.prototypeFloats else { continue }
            s += "\(m.method): the router's intent prototypes hold \(floats) floats after the last domain (not trained, not counted above).\n"
        }
        for m in r.summaries {
            let refits = r.runs.filter { $0.method == m.method }.flatMap { ($0.gateRefits ?? []).joined() }
            guard r.runs.contains(where: { $0.method == m.method && $0.gateRefits != nil }) else { continue }
            s += "\(m.method): alignment-drift gate refits: \(refits.count) flagged, \(refits.filter(\.kept).count) kept (validation F1 improved).\n"
        }
        s += comparisons(r)
        s += diagnostics(r)
        return s
    }

    /// The headline figures over all domains next to those over the domains with more than one
    /// intent (`MethodSummary.multiIntentDomains`); empty when no method has that subset.
    static func multiIntentDomains(_ r: ExperimentResults) -> String {
        let rows = r.summaries.compactMap { m in m.multiIntentDomains.map { (m, $0) } }
        guard let first = rows.first else { return "" }
        var s = "\nAll domains vs. the \(first.1.domains.count) of \(r.experimentProtocol.domainNames.count) domains with more than one intent "
        s += "(a one-intent domain's oracle F1 is 100 by construction and its routed F1 measures routing alone):\n\n"
        s += "| Method | Avg F1 all | Avg F1 >1 intent | BWT all | BWT >1 intent | oracle F1 all | oracle F1 >1 intent | oracle BWT all | oracle BWT >1 intent |\n"
        s += "|---|---|---|---|---|---|---|---|---|\n"
        for (m, sub) in rows {
            s += "| \(m.method) | \(pts(m.routed.averageF1)) | \(pts(sub.routed.averageF1)) | \(pts(m.routed.backwardTransfer)) | "
            s += "\(pts(sub.routed.backwardTransfer)) | \(pts(m.oracle.averageF1)) | \(pts(sub.oracle.averageF1)) | "
            s += "\(pts(m.oracle.backwardTransfer)) | \(pts(sub.oracle.backwardTransfer)) |\n"
        }
        return s
    }

    /// The paired comparisons (`PairedComparison`): mean difference in points, wins/losses/ties
    /// over orderings, the two-sided p of the paired t-test and of the sign test.
    static func comparisons(_ r: ExperimentResults) -> String {
        guard let cs = r.comparisons, !cs.isEmpty else { return "" }
        var s = "\n### Paired comparisons (by ordering)\n\n| Method | vs | metric | orderings | mean diff | wins / losses / ties | t-test p | sign-test p |\n"
        s += "|---|---|---|---|---|---|---|---|\n"
        for c in cs {
            let p = c.tTestP.map { String(format: "%.3g", $0) } ?? "-"
            s += "| \(c.method) | \(c.baseline) | \(c.metric.rawValue) | \(c.differences.count) | \(String(format: "%+.1f", 100 * c.meanDifference)) | "
            s += "\(c.wins) / \(c.losses) / \(c.ties) | \(p) | \(String(format: "%.3g", c.signTestP)) |\n"
        }
        s += "\nTwo-sided p: a paired t-test on the per-ordering differences, and an exact sign test (ties dropped; with n orderings "
        s += "its smallest p is 2/2^n). A p above 0.05 means the difference is within the noise of the orderings.\n"
        return s
    }

    /// Failure-mode diagnostics (config `diagnostics`): per method over all orderings, then the
    /// per-domain tables of each method's first ordering.
    static func diagnostics(_ r: ExperimentResults) -> String {
        let runs = r.runs.filter { $0.probes != nil || $0.multiIntent != nil }
        guard !runs.isEmpty else { return "" }
        var s = "\n### Diagnostics\n\n"
        s += "| Method | old domains | oracle head drop | probe drop | stable | alignment drift | knowledge loss | multi-intent any-hit | single-intent acc | fragility |\n"
        s += "|---|---|---|---|---|---|---|---|---|---|\n"
        var methods: [String] = []
        for run in runs where !methods.contains(run.method) { methods.append(run.method) }
        for name in methods {
            let rs = runs.filter { $0.method == name }
            let probes = rs.flatMap { $0.probes ?? [] }, multi = rs.flatMap { $0.multiIntent ?? [] }
            func mean(_ xs: [Double]) -> String { xs.isEmpty ? "-" : String(format: "%.1f", 100 * xs.reduce(0, +) / Double(xs.count)) }
            func count(_ k: ProbeDiagnosis.Kind) -> String { String(probes.filter { $0.kind == k }.count) }
            s += "| \(name) | \(probes.count) | \(mean(probes.map(\.headDrop))) | \(mean(probes.map(\.probeDrop))) | \(count(.stable)) | "
            s += "\(count(.alignmentDrift)) | \(count(.knowledgeLoss)) | \(mean(multi.map(\.anyHit))) | \(mean(multi.map(\.singleIntentAccuracy))) | "
            s += "\(mean(multi.map(\.fragility))) |\n"
        }
        s += "\nDrops in points (when learned minus after the last domain, oracle mode). A linear probe refitted on the current "
        s += "features tells alignment drift (the head is lost but the probe is not: spurious forgetting) from knowledge loss. "
        s += "Multi-intent: routed prediction hits one of the gold intents (any-hit); fragility = single-intent accuracy − any-hit.\n"
        for name in methods {
            guard let first = runs.first(where: { $0.method == name }) else { continue }
            s += "\n#### \(name), ordering seed \(first.orderingSeed)\n\n"
            s += Diagnostics.markdown(probes: first.probes ?? [], multiIntent: first.multiIntent ?? [])
        }
        return s
    }
}
