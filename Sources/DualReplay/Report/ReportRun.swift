// What the HTML report draws, gathered from an experiment's results or a state's history: one
// `ReportRun` per continual run (method × ordering, or the state's sequence of versions).
import Foundation

/// One continual run, as the report draws it.
struct ReportRun {
    /// Unique within the page; used in element ids (`fig-r-routed-<id>`).
    var id: String
    var method: String
    var kind: MethodKind
    var orderingSeed: UInt64?
    var domains: [String]
    var routed: EvalMatrix
    var oracle: EvalMatrix
    var routerAccuracy: [Double]?
    var ledger: ReplayLedger?
    var byteBudget: Int?
    var trainExamples: [Int]?
    var intentCounts: [Int]?
    var routerConfusion: [[Int]]?
    var probes: [ProbeDiagnosis]?
    var multiIntent: [MultiIntentScore]?

    var title: String { orderingSeed.map { "\(method), ordering seed \($0)" } ?? method }

    /// The first `n` domains' square of `m` (the matrix as it stood after domain n − 1).
    static func prefix(_ m: EvalMatrix, _ n: Int) -> EvalMatrix {
        EvalMatrix(domains: Array(m.domains.prefix(n)), f1: (0..<n).map { i in Array(m.f1[i].prefix(n)) })
    }

    /// Routed BWT after each domain (0 after the first).
    var runningBackwardTransfer: [Double] { (1...max(domains.count, 1)).map { Self.prefix(routed, min($0, domains.count)).backwardTransfer } }

    /// The head-vs-tail gap of routed F1 after each domain (nil where it is not defined).
    var headTailGaps: [Double?]? {
        guard let sizes = trainExamples, sizes.count == domains.count else { return nil }
        return domains.indices.map { i in RedLines.headTailGap(f1: Array(routed.f1[i].prefix(i + 1)), trainExamples: Array(sizes.prefix(i + 1))) }
    }

    /// Per domain but the last: best routed F1 before the last domain minus the final one
    /// (Chaudhry's forgetting, per domain; nil for the last domain).
    var forgettingPerDomain: [Double?] {
        let t = domains.count - 1
        return domains.indices.map { j in
            guard j < t else { return nil }
            let best = (j..<t).map { routed.f1[$0][j] }.filter { !$0.isNaN }.max() ?? .nan
            return best - routed.f1[t][j]
        }
    }
}

/// Turns element ids into safe tokens: letters, digits and '-', unique within one page.
struct IDMaker {
    private var used = Set<String>()

    mutating func make(_ parts: String...) -> String {
        let raw = parts.joined(separator: "-").lowercased()
        var s = String(raw.unicodeScalars.map { ($0.isASCII && (CharacterSet.alphanumerics.contains($0))) ? Character($0) : "-" })
        while s.contains("--") { s = s.replacingOccurrences(of: "--", with: "-") }
        s = s.trimmingCharacters(in: CharacterSet(charactersIn: "-"))
        if s.isEmpty { s = "run" }
        var candidate = s, n = 2
        while used.contains(candidate) { candidate = "\(s)-\(n)"; n += 1 }
        used.insert(candidate)
        return candidate
    }
}

extension ReportRun {
    /// The continual runs of an experiment (joint references have no sequence and are left out).
    static func runs(of results: ExperimentResults, ids: inout IDMaker) -> [ReportRun] {
        results.runs.filter { $0.kind != .joint && $0.kind != .single }.map { r in
            ReportRun(id: ids.make(r.method, "s\(r.orderingSeed)"), method: r.method, kind: r.kind, orderingSeed: r.orderingSeed,
                      domains: r.domains, routed: r.routed, oracle: r.oracle, routerAccuracy: r.routerAccuracy, ledger: r.ledger,
                      byteBudget: r.ledger == nil ? nil : results.experimentProtocol.byteBudget, trainExamples: r.trainExamples,
                      intentCounts: r.intentCounts, routerConfusion: r.routerConfusion, probes: r.probes, multiIntent: r.multiIntent)
        }
    }

    /// A state's history as one run: row i of the matrices is the evaluation after the i-th
    /// onboarding (`metrics.json`).
    static func run(ofState s: StateSnapshot, id: String) -> ReportRun {
        let mf = s.manifest, names = mf.domains.map(\.name)
        var routed = EvalMatrix(domains: names), oracle = routed
        for (i, row) in s.metrics.enumerated() where i < names.count {
            for (j, name) in row.domains.enumerated() {
                guard let k = names.firstIndex(of: name) else { continue }
                routed[afterTraining: i, domain: k] = row.routedF1[j]
                oracle[afterTraining: i, domain: k] = row.oracleF1[j]
            }
        }
        let router = s.metrics.compactMap(\.routerAccuracy)
        let ledger: ReplayLedger?
        switch s.buffer {
        case .dualStream(let b)?: ledger = b.ledger
        case .reservoir(let b)?: ledger = b.ledger
        case nil: ledger = nil
        }
        return ReportRun(id: id, method: mf.settings.name, kind: mf.settings.kind, orderingSeed: nil, domains: names, routed: routed,
                         oracle: oracle, routerAccuracy: router.count == s.metrics.count && !router.isEmpty ? router : nil, ledger: ledger,
                         byteBudget: ledger == nil ? nil : mf.byteBudget, trainExamples: mf.domains.map(\.trainExamples),
                         intentCounts: mf.domains.map(\.intents.count), routerConfusion: s.metrics.last?.routerConfusion, probes: nil, multiIntent: nil)
    }
}
