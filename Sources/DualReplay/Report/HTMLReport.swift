// The HTML report: one self-contained page (inline SVG and CSS; no script, font or image from
// anywhere) for an experiment's results.json or a state directory. The same input gives the same
// bytes: the only dates are those in the input, numbers have fixed decimals, order is the input's.
import Foundation

public enum ReportError: LocalizedError, Equatable {
    case unreadable(file: String, reason: String)
    case notAReport(path: String)
    case wrongSchema(file: String, found: String)

    public var errorDescription: String? {
        switch self {
        case let .unreadable(f, r): return "\(f): cannot read it for a report: \(r)"
        case let .notAReport(p):
            return "\(p): neither a results.json of `dualreplay run` (or a directory holding one) nor a state directory of `dualreplay onboard`"
        case let .wrongSchema(f, found): return "\(f): schema \(found), expected \(ExperimentResults.schema)"
        }
    }
}

public enum HTMLReport {
    /// Figure kinds (the `data-kind` of every `<figure>`), for checks.
    public enum Kind: String, CaseIterable, Sendable {
        case runCard = "run-card", summary, routedMatrix = "r-routed", oracleMatrix = "r-oracle", f1Curves = "f1-curves"
        case forgetting, ledger, headTail = "head-tail", routerAccuracy = "router-accuracy", routerConfusion = "router-confusion"
        case dropAttribution = "drop-attribution", multiIntent = "multi-intent", parameterAudit = "parameter-audit"
        case bwt, versions
    }

    /// The page for `path`: a results.json (or a directory holding one) or a state directory.
    public static func page(at path: URL) throws -> String {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path.path, isDirectory: &isDir) else {
            throw ReportError.unreadable(file: path.path, reason: "no such file or directory")
        }
        if isDir.boolValue {
            if StateDirectory.exists(path) { return page(state: try StateDirectory.load(path).snapshot) }
            let results = path.appendingPathComponent("results.json")
            guard FileManager.default.fileExists(atPath: results.path) else { throw ReportError.notAReport(path: path.path) }
            return page(results: try loadResults(results))
        }
        return page(results: try loadResults(path))
    }

    /// An experiment's results.json, its schema checked.
    public static func loadResults(_ url: URL) throws -> ExperimentResults {
        let data: Data
        do { data = try Data(contentsOf: url) } catch { throw ReportError.unreadable(file: url.path, reason: error.localizedDescription) }
        struct Schema: Decodable { var schema: String? }
        guard let s = try? JSONDecoder().decode(Schema.self, from: data) else { throw ReportError.notAReport(path: url.path) }
        guard s.schema == ExperimentResults.schema else { throw ReportError.wrongSchema(file: url.path, found: s.schema ?? "(none)") }
        do {
            return try JSONDecoder().decode(ExperimentResults.self, from: data)
        } catch {
            throw ReportError.unreadable(file: url.path, reason: "\(error)")
        }
    }

    // MARK: - Experiment

    public static func page(results r: ExperimentResults) -> String {
        var ids = IDMaker()
        let runs = ReportRun.runs(of: r, ids: &ids)
        let p = r.experimentProtocol
        var body = "<h1>DualReplay report: \(xmlEscaped(p.config.name))</h1>\n"
        body += "<p class=\"lead\">\(p.domainNames.count) domains, \(r.summaries.count) methods × \(p.config.resolvedOrderingSeeds.count) orderings; "
        body += "F1 and transfer in points, routed mode (no domain given) unless marked oracle. Hover a mark for its value.</p>\n"
        if let i = r.interim {
            body += "<p class=\"lead\"><strong>Interim: \(i.finished) of \(i.total) runs finished.</strong> Still to run: "
            body += "\(xmlEscaped(i.missing.isEmpty ? "none" : i.missing.joined(separator: ", "))).</p>\n"
        }
        body += nav(r.summaries.map(\.method), runs: runs)
        body += runCard(r)
        body += summaryTable(r)
        body += comparisonFigures(runs, methods: r.summaries.map(\.method))
        body += parameterAudit(r, runs: runs)
        for m in r.summaries.map(\.method) {
            let rs = runs.filter { $0.method == m }
            guard !rs.isEmpty else { continue }
            body += "<section class=\"method\" id=\"method-\(rs[0].id)\"><h2>\(xmlEscaped(m))</h2>\n"
            for run in rs { body += runFigures(run) }
            body += "</section>\n"
        }
        return document(title: "DualReplay report: \(p.config.name)", body: body)
    }

    static func nav(_ methods: [String], runs: [ReportRun]) -> String {
        var s = "<nav><a href=\"#run-card\">run card</a> · <a href=\"#summary\">summary</a> · <a href=\"#comparison\">side by side</a>"
        s += " · <a href=\"#parameter-audit\">parameter audit</a>"
        for m in methods { if let r = runs.first(where: { $0.method == m }) { s += " · <a href=\"#method-\(r.id)\">\(xmlEscaped(m))</a>" } }
        return s + "</nav>\n"
    }

    static func runCard(_ r: ExperimentResults) -> String {
        let p = r.experimentProtocol
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        let config = (try? enc.encode(p.config)).map { String(decoding: $0, as: UTF8.self) } ?? "-"
        let seeds = p.config.resolvedOrderingSeeds
        var rows: [(String, String)] = [
            ("protocol hash", p.hash), ("code version", p.codeVersion), ("experiment", p.config.name),
            ("data fingerprint", p.dataFingerprint), ("domains", p.domainNames.joined(separator: ", ")),
            ("model", "\(p.config.model ?? ConfigDefaults.model) (fingerprint \(p.modelFingerprint))"),
        ]
        if let b = r.baseModel { rows.append(("base model shape", "\(b.layers) layers, width \(b.hidden), \(b.parameters) weights")) }
        rows += [
            ("threads and ranks", "\(p.threads) threads per process, " + (r.ranks.map { $0 == 1 ? "1 process" : "\($0) MPI ranks (\(r.parallel ?? "data")-parallel)" }
                                                                            ?? "1 process (rank count not recorded in these results)")),
            ("orderings", seeds.map { s in "seed \(s): " + (r.runs.first { $0.orderingSeed == s && $0.kind != .joint }?.domains.joined(separator: " → ") ?? "-") }
                .joined(separator: "\n")),
            ("byte budget", "\(p.byteBudget) B"), ("eval split", (p.config.evalSplit ?? ConfigDefaults.evalSplit).rawValue),
            ("date", r.createdAt),
        ]
        var s = "<figure id=\"run-card\" data-kind=\"run-card\" class=\"card\"><figcaption>Run card</figcaption><table class=\"kv\">"
        for (k, v) in rows {
            s += "<tr><th>\(xmlEscaped(k))</th><td>\(xmlEscapedLines(v, separator: "<br/>"))</td></tr>"
        }
        s += "<tr><th>config</th><td><details><summary>resolved config (JSON)</summary><pre>\(xmlEscapedLines(config))</pre></details></td></tr>"
        return s + "</table></figure>\n"
    }

    static func summaryTable(_ r: ExperimentResults) -> String {
        let pts = ResultsReport.pts
        var s = "<figure id=\"summary\" data-kind=\"summary\"><figcaption>Summary (mean ± std over orderings)</figcaption><table class=\"grid\">"
        s += "<tr><th>Method</th><th>Avg F1 ± std</th><th>BWT ± std</th><th>FWT</th><th>Forgetting</th><th>oracle F1</th><th>router acc</th>"
        s += "<th>trainable params (+/domain)</th><th>p99 ms</th></tr>"
        for m in r.summaries {
            let bwtBad = m.routed.backwardTransfer.mean < RedLines.backwardTransferLimit
            s += "<tr><td>\(xmlEscaped(m.method))</td><td>\(pts(m.routed.averageF1))</td>"
            s += "<td\(bwtBad ? " class=\"red\"" : "")>\(pts(m.routed.backwardTransfer))</td><td>\(pts(m.routed.forwardTransfer))</td>"
            s += "<td>\(pts(m.routed.forgetting))</td><td>\(pts(m.oracle.averageF1))</td><td>\(m.routerAccuracy.map(pts) ?? "-")</td>"
            s += "<td>\(m.trainableParameters) (+\(m.parametersPerNewDomain))</td><td>\(m.latencyP99ms.map { fixed($0) } ?? "-")</td></tr>"
        }
        if let j = r.jointF1, !j.isEmpty {
            let mean = j.keys.sorted().reduce(0) { $0 + j[$1]! } / Double(j.count)  // a fixed order: the same bytes every time
            s += "<tr><td>joint (reference, oracle)</td><td>\(fixed(100 * mean))</td><td>-</td><td>-</td><td>-</td><td>\(fixed(100 * mean))</td>"
            s += "<td>-</td><td>-</td><td>-</td></tr>"
        }
        s += "</table><p class=\"note\">BWT in red: below the −5 point red line. FWT against the `single` reference when it ran.</p></figure>\n"
        return s
    }

    /// Mean over runs at each step index (runs may have different orderings: step k = after k + 1 domains).
    static func meanByStep(_ values: [[Double?]]) -> [Double?] {
        let n = values.map(\.count).max() ?? 0
        return (0..<n).map { i in
            let xs = values.compactMap { i < $0.count ? $0[i] : nil }.filter(\.isFinite)
            return xs.isEmpty ? nil : xs.reduce(0, +) / Double(xs.count)
        }
    }

    /// Methods side by side: running BWT, router accuracy, head-vs-tail gap, forgetting per domain.
    static func comparisonFigures(_ runs: [ReportRun], methods: [String], heading: String = "Side by side",
                                  note: String = "Mean over orderings after the k-th domain.") -> String {
        guard let steps = runs.map(\.domains.count).max(), steps > 0 else { return "" }
        let xs = (1...steps).map { "\($0)" }
        var s = "<section id=\"comparison\"><h2>\(xmlEscaped(heading))</h2><p class=\"note\">\(xmlEscaped(note))</p><div class=\"row\">\n"
        func series(_ value: (ReportRun) -> [Double?]?) -> [ChartSeries] {
            methods.enumerated().compactMap { i, m in
                let rs = runs.filter { $0.method == m }.compactMap(value)
                return rs.isEmpty ? nil : ChartSeries(name: m, color: seriesColor(i), values: meanByStep(rs).map { $0.map { 100 * $0 } })
            }
        }
        let bwt = series { $0.runningBackwardTransfer.map { Optional($0) } }
        let lo = min(-10, (bwt.flatMap { $0.values.compactMap { $0 } }.min() ?? 0) - 2)
        s += figure("fig-bwt", .bwt, "Routed BWT after each domain (points); red line −5",
                    lineChart(xLabels: xs, series: bwt, yRange: lo...max(5, (bwt.flatMap { $0.values.compactMap { $0 } }.max() ?? 0) + 2),
                              yTitle: "BWT (points)", thresholds: [Threshold(value: 100 * RedLines.backwardTransferLimit, label: "red line −5")],
                              label: "routed backward transfer after each domain"))
        let router = series { $0.routerAccuracy.map { $0.map { Optional($0) } } }
        if !router.isEmpty {
            s += figure("fig-router-accuracy", .routerAccuracy, "Router accuracy after each domain (%)",
                        lineChart(xLabels: xs, series: router, yRange: 0...100, yTitle: "router accuracy (%)", label: "router accuracy after each domain"))
        }
        let gaps = series { $0.headTailGaps }
        if !gaps.isEmpty {
            let values = gaps.flatMap { $0.values.compactMap { $0 } }
            s += figure("fig-head-tail", .headTail, "Head-vs-tail routed F1 gap after each domain (points); red line 5",
                        lineChart(xLabels: xs, series: gaps, yRange: min(-5, (values.min() ?? 0) - 2)...max(10, (values.max() ?? 0) + 2),
                                  yTitle: "gap (points)", thresholds: [Threshold(value: 100 * RedLines.headTailGapLimit, label: "red line 5")],
                                  label: "head versus tail F1 gap after each domain"))
        }
        // forgetting per domain name (orderings differ), mean over orderings
        var names: [String] = []
        for r in runs { for d in r.domains where !names.contains(d) { names.append(d) } }
        let forgetting: [ChartSeries] = methods.enumerated().compactMap { i, m in
            let rs = runs.filter { $0.method == m }
            guard !rs.isEmpty else { return nil }
            let values: [Double?] = names.map { name in
                let xs = rs.compactMap { r in r.domains.firstIndex(of: name).flatMap { r.forgettingPerDomain[$0] } }.filter(\.isFinite)
                return xs.isEmpty ? nil : 100 * xs.reduce(0, +) / Double(xs.count)
            }
            return ChartSeries(name: m, color: seriesColor(i), values: values)
        }
        let fv = forgetting.flatMap { $0.values.compactMap { $0 } }
        s += figure("fig-forgetting", .forgetting, "Forgetting per domain (points: best routed F1 before the last domain − final; mean over orderings, the last domain has none)",
                    barChart(categories: names, series: forgetting, yRange: min(0, (fv.min() ?? 0) - 1)...max(5, (fv.max() ?? 0) + 2),
                             yTitle: "forgetting (points)", label: "forgetting per domain", width: max(560, Double(names.count) * 40 + 100)))
        return s + "</div></section>\n"
    }

    static func figure(_ id: String, _ kind: Kind, _ caption: String, _ content: String) -> String {
        "<figure id=\"\(id)\" data-kind=\"\(kind.rawValue)\"><figcaption>\(xmlEscaped(caption))</figcaption>\(content)</figure>\n"
    }

    // MARK: - one run

    /// The figures of one run: R matrices, F1 curves with running BWT, ledger, router confusion,
    /// drop attribution and multi-intent fragility when they were recorded.
    static func runFigures(_ r: ReportRun) -> String {
        var s = "<h3>\(xmlEscaped(r.title))</h3><div class=\"row\">\n"
        s += figure("fig-r-routed-\(r.id)", .routedMatrix, "R matrix, routed (F1 points; row: after training domain, column: evaluated domain)",
                    matrixHeatmap(r.routed, label: "routed R matrix of \(r.title)"))
        s += figure("fig-r-oracle-\(r.id)", .oracleMatrix, "R matrix, oracle (true domain given)", matrixHeatmap(r.oracle, label: "oracle R matrix of \(r.title)"))
        s += figure("fig-f1-curves-\(r.id)", .f1Curves, "Per-domain routed F1 over the sequence, and BWT after each domain with its red line (−5)", f1Curves(r))
        if let l = r.ledger, !l.entries.isEmpty { s += figure("fig-ledger-\(r.id)", .ledger, "Replay buffer ledger: bytes per domain after each domain (dashed: each domain's floor)", ledgerChart(r, l)) }
        if let gaps = r.headTailGaps, gaps.contains(where: { $0 != nil }) {
            s += figure("fig-head-tail-\(r.id)", .headTail, "Head-vs-tail routed F1 gap (points); red line 5",
                        lineChart(xLabels: r.domains, series: [ChartSeries(name: "head − tail", color: seriesColor(0), values: gaps.map { $0.map { 100 * $0 } })],
                                  yRange: min(-5, (gaps.compactMap { $0 }.min() ?? 0) * 100 - 2)...max(10, (gaps.compactMap { $0 }.max() ?? 0) * 100 + 2),
                                  yTitle: "gap (points)", thresholds: [Threshold(value: 100 * RedLines.headTailGapLimit, label: "red line 5")],
                                  label: "head versus tail gap of \(r.title)"))
        }
        if let acc = r.routerAccuracy {
            s += figure("fig-router-accuracy-\(r.id)", .routerAccuracy, "Router accuracy after each domain (%)",
                        lineChart(xLabels: Array(r.domains.prefix(acc.count)), series: [ChartSeries(name: "router", color: seriesColor(0), values: acc.map { 100 * $0 })],
                                  yRange: 0...100, yTitle: "accuracy (%)", label: "router accuracy of \(r.title)"))
        }
        if let c = r.routerConfusion, !c.isEmpty { s += figure("fig-router-confusion-\(r.id)", .routerConfusion, "Router confusion after the last domain (row: true domain, column: chosen; counts, shade: row share)", confusion(c, domains: r.domains, title: r.title)) }
        if let p = r.probes, !p.isEmpty { s += figure("fig-drop-\(r.id)", .dropAttribution, "Drop attribution per earlier domain (oracle head drop vs linear-probe drop, points)", dropAttribution(p, title: r.title)) }
        if let m = r.multiIntent, !m.isEmpty { s += figure("fig-multi-intent-\(r.id)", .multiIntent, "Multi-intent fragility (single-intent accuracy vs any-hit and exact-set, %)", multiIntent(m, title: r.title)) }
        return s + "</div>\n"
    }

    /// R[i][j] in points in every evaluated cell.
    static func matrixHeatmap(_ m: EvalMatrix, label: String) -> String {
        heatmap(rows: m.domains.map { "after \($0)" }, columns: m.domains, rowTitle: "after training", columnTitle: "evaluated domain", label: label,
                cellText: { i, j in m.f1[i][j].isNaN ? nil : fixed(100 * m.f1[i][j]) },
                shade: { i, j in m.f1[i][j].isNaN ? nil : m.f1[i][j] },
                tooltip: { i, j in "\(m.domains[j]) after \(m.domains[i]): F1 \(fixed(100 * m.f1[i][j], 2))" })
    }

    static func f1Curves(_ r: ReportRun) -> String {
        let series = r.domains.enumerated().map { j, d in
            ChartSeries(name: d, color: seriesColor(j), values: r.domains.indices.map { i in i >= j && !r.routed.f1[i][j].isNaN ? 100 * r.routed.f1[i][j] : nil })
        }
        let curves = lineChart(xLabels: r.domains.map { "after \($0)" }, series: series, yRange: 0...100, yTitle: "routed F1", label: "per-domain F1 of \(r.title)")
        let bwt = r.runningBackwardTransfer.map { 100 * $0 }
        let bwtChart = lineChart(xLabels: r.domains.map { "after \($0)" }, series: [ChartSeries(name: "BWT", color: "#333333", values: bwt)],
                                 yRange: min(-10, (bwt.min() ?? 0) - 2)...max(5, (bwt.max() ?? 0) + 2), yTitle: "BWT (points)",
                                 thresholds: [Threshold(value: 100 * RedLines.backwardTransferLimit, label: "red line −5")],
                                 label: "backward transfer of \(r.title)", height: 200)
        return "<div class=\"stack\">\(curves)\(bwtChart)</div>"
    }

    static func ledgerChart(_ r: ReportRun, _ l: ReplayLedger) -> String {
        let steps = l.entries
        let xs = steps.map { e in e.newDomain.map { Int($0) < r.domains.count ? "after \(r.domains[Int($0)])" : "step \(e.step + 1)" } ?? "step \(e.step + 1)" }
        var ids: [Int32] = []
        for e in steps { for d in e.domains where !ids.contains(d.domain) { ids.append(d.domain) } }
        var layers: [ChartSeries] = ids.map { d in
            ChartSeries(name: Int(d) < r.domains.count ? r.domains[Int(d)] : "domain \(d)", color: seriesColor(Int(d)),
                        values: steps.map { e in Double(e.domains.first { $0.domain == d }?.bytes ?? 0) })
        }
        var floors: [[Double?]] = ids.map { d in steps.map { e in e.domains.first { $0.domain == d }?.floor.map(Double.init) } }
        if steps.contains(where: { $0.generalBytes > 0 }) {
            layers.append(ChartSeries(name: "general stream", color: "#d9d9d9", values: steps.map { Double($0.generalBytes) }))
            floors.append(steps.map { _ in nil })
        }
        return stackedArea(xLabels: xs, layers: layers, floors: floors, budget: r.byteBudget.map(Double.init), yTitle: "bytes",
                           label: "replay buffer occupancy of \(r.title)", format: { fixed($0, 0) })
    }

    static func confusion(_ c: [[Int]], domains: [String], title: String) -> String {
        let cols = c.map(\.count).max() ?? 0
        let names = (0..<cols).map { $0 < domains.count ? domains[$0] : "domain \($0)" }
        return heatmap(rows: Array(names.prefix(c.count)), columns: names, rowTitle: "true domain", columnTitle: "chosen domain",
                       label: "router confusion of \(title)",
                       cellText: { i, j in j < c[i].count ? "\(c[i][j])" : nil },
                       shade: { i, j in
                           let total = c[i].reduce(0, +)
                           return j < c[i].count && total > 0 ? Double(c[i][j]) / Double(total) : nil
                       },
                       tooltip: { i, j in "\(names[i]) routed to \(names[j]): \(j < c[i].count ? c[i][j] : 0) of \(c[i].reduce(0, +))" })
    }

    static func dropAttribution(_ p: [ProbeDiagnosis], title: String) -> String {
        let head = ChartSeries(name: "oracle head drop", color: seriesColor(0), values: p.map { 100 * $0.headDrop })
        let probe = ChartSeries(name: "linear-probe drop", color: seriesColor(1), values: p.map { 100 * $0.probeDrop })
        let values = p.flatMap { [100 * $0.headDrop, 100 * $0.probeDrop] }.filter(\.isFinite)
        let chart = barChart(categories: p.map { "\($0.domain): \($0.kind.rawValue)" }, series: [head, probe],
                             yRange: min(-2, (values.min() ?? 0) - 1)...max(5, (values.max() ?? 0) + 2), yTitle: "drop (points)",
                             thresholds: [Threshold(value: 100 * ProbeDiagnosis.defaultThreshold, label: "stable below 2")],
                             label: "drop attribution of \(title)")
        var t = "<table class=\"grid small\"><tr><th>domain</th><th>head drop</th><th>probe drop</th><th>kind</th></tr>"
        for d in p {
            t += "<tr><td>\(xmlEscaped(d.domain))</td><td>\(fixed(100 * d.headDrop))</td><td>\(fixed(100 * d.probeDrop))</td>"
            t += "<td class=\"kind-\(d.kind.rawValue)\">\(d.kind.rawValue)</td></tr>"
        }
        let counts = ProbeDiagnosis.Kind.allCases.map { k in "\(k.rawValue) \(p.filter { $0.kind == k }.count)" }.joined(separator: ", ")
        return "<div class=\"stack\">\(chart)\(t)</table><p class=\"note\">\(xmlEscaped(counts)). Alignment drift: the head lost ≥ 2 points but a fresh probe less than half as much (spurious forgetting).</p></div>"
    }

    static func multiIntent(_ m: [MultiIntentScore], title: String) -> String {
        let single = ChartSeries(name: "single-intent accuracy", color: seriesColor(0), values: m.map { 100 * $0.singleIntentAccuracy })
        let any = ChartSeries(name: "multi-intent any-hit", color: seriesColor(1), values: m.map { $0.count > 0 ? 100 * $0.anyHit : nil })
        var series = [single, any]
        if m.contains(where: { $0.exactSet != nil }) {
            // results made before set prediction have no exact-set rate: no bar for them
            series.append(ChartSeries(name: "multi-intent exact-set", color: seriesColor(2),
                                      values: m.map { s in s.exactSet.flatMap { s.count > 0 ? 100 * $0 : nil } }))
        }
        return barChart(categories: m.map { "\($0.domain) (fragility \(fixed(100 * $0.fragility)))" }, series: series, yRange: 0...100,
                        yTitle: "%", label: "multi-intent fragility of \(title)")
    }

    // MARK: - parameter audit

    struct AuditLine {
        var name: String
        var settings: MethodSettings
        var measured: (domains: Int, trainable: Int)?
    }

    static func parameterAudit(_ r: ExperimentResults, runs: [ReportRun]) -> String {
        let p = r.experimentProtocol
        let training = p.config.training ?? TrainingDefaults()
        var lines: [AuditLine] = []
        for m in p.config.methods {
            guard let s = try? MethodSettings.resolve(m, training: training) else { continue }
            let run = r.runs.first { $0.method == s.name && $0.kind != .joint }
            lines.append(AuditLine(name: s.name, settings: s, measured: run.map { ($0.domains.count, $0.trainableParameters) }))
        }
        let rank = p.config.methods.first { $0.kind == .lora || $0.kind == .olora || $0.kind == .loraReplay }?.lora.rank ?? ConfigDefaults.loraRank
        let base = r.baseModel ?? ParameterAudit.defaultBase
        var ipd = 0.0
        if let counts = runs.first(where: { $0.intentCounts != nil })?.intentCounts, !counts.isEmpty {
            ipd = Double(counts.reduce(0, +)) / Double(counts.count)
        } else if let l = lines.first, let (k, measured) = l.measured, k > 0 {
            // not recorded: the heads' share of the measured count, (C + 1) per intent
            let none = ParameterAudit.trainableParameters(l.settings, base: base, domains: k, intentsPerDomain: 0)
            ipd = max(1, Double(measured - none) / Double(base.hidden + 1) / Double(k))
        }
        return auditSection(lines: lines, loraRank: rank, base: r.baseModel, intentsPerDomain: ipd, byteBudget: p.byteBudget)
    }

    static func auditSection(lines: [AuditLine], loraRank: Int, base recorded: BaseModelShape?, intentsPerDomain ipd: Double, byteBudget: Int) -> String {
        let base = recorded ?? ParameterAudit.defaultBase
        var all = lines
        if let lora = ParameterAudit.perDomainLoRA(rank: loraRank) { all.append(AuditLine(name: lora.name, settings: lora, measured: nil)) }
        let K = ParameterAudit.projectedDomains
        let ks = Array(1...K)
        let xs = ks.map { $0 % 10 == 0 || $0 == 1 ? "\($0)" : "" }
        func count(_ l: AuditLine, _ b: BaseModelShape, _ k: Int) -> Int { ParameterAudit.trainableParameters(l.settings, base: b, domains: k, intentsPerDomain: ipd) }
        let small = all.enumerated().map { i, l in
            ChartSeries(name: l.name, color: seriesColor(i), values: ks.map { Double(count(l, base, $0)) / 1e6 }, dash: l.measured == nil ? "5 3" : nil)
        }
        let top = small.flatMap { $0.values.compactMap { $0 } }.filter { $0 < 1e5 }.max() ?? 1
        var s = "<section id=\"parameter-audit\"><h2>Parameter audit</h2><div class=\"row\">\n"
        s += figure("fig-param-audit", .parameterAudit, "Trainable parameters (millions) against the number of domains K, projected to K = \(K), on this base",
                    lineChart(xLabels: xs, series: small, yRange: 0...(top * 1.1), yTitle: "trainable (M)", label: "trainable parameters against K",
                              format: { fixed($0, 3) + " M" }, width: 620))
        let big = all.enumerated().map { i, l in
            ChartSeries(name: l.name, color: seriesColor(i), values: ks.map { ParameterAudit.memoryBytes(trainable: count(l, ParameterAudit.base7B, $0), base: ParameterAudit.base7B, baseTrains: l.settings.spec.fullFineTune) / 1e9 },
                        dash: l.measured == nil ? "5 3" : nil)
        }
        let capped = big.flatMap { $0.values.compactMap { $0 } }.filter { $0 < 40 }.max() ?? 16
        s += figure("fig-memory-7b", .parameterAudit, "Training memory on a 7B base (GB) against K; red line: the 16 GB budget",
                    lineChart(xLabels: xs, series: big, yRange: 0...max(20, capped * 1.1), yTitle: "memory (GB)",
                              thresholds: [Threshold(value: ParameterAudit.memoryBudgetBytes / 1e9, label: "16 GB budget")],
                              label: "training memory on a 7B base against K", format: { fixed($0, 2) + " GB" }, width: 620))
        s += "</div><table class=\"grid\"><tr><th>method</th><th>measured trainable (K)</th><th>estimate at that K</th><th>at K = \(K)</th>"
        s += "<th>memory at K = \(K), this base</th><th>at K = \(K), 7B base</th><th>7B within 16 GB?</th></tr>"
        for l in all {
            let atK = count(l, base, K), big = count(l, ParameterAudit.base7B, K)
            let memSmall = ParameterAudit.memoryBytes(trainable: atK, base: base, baseTrains: l.settings.spec.fullFineTune)
            let memBig = ParameterAudit.memoryBytes(trainable: big, base: ParameterAudit.base7B, baseTrains: l.settings.spec.fullFineTune)
            let fits = memBig <= ParameterAudit.memoryBudgetBytes
            s += "<tr><td>\(xmlEscaped(l.name))</td><td>\(l.measured.map { "\($0.trainable) (K = \($0.domains))" } ?? "-")</td>"
            s += "<td>\(l.measured.map { "\(count(l, base, $0.domains))" } ?? "-")</td><td>\(atK)</td>"
            s += "<td>\(fixed(memSmall / 1e6)) MB</td><td>\(fixed(memBig / 1e9, 2)) GB</td><td class=\"\(fits ? "ok" : "red")\">\(fits ? "yes" : "no")</td></tr>"
        }
        s += "</table><p class=\"note\">How it is computed: trainable parameters = `MethodSettings.estimatedTrainingBytes` / 16 for the method's "
        s += "resolved settings at K domains of \(fixed(ipd)) intents each (the experiment's mean), without the router's intent prototypes "
        s += "(frozen statistics). The shared adapter is O(1) in K plus one gate row per domain and layer; a per-domain LoRA adds rank \(loraRank) "
        s += "A and B on query and value of every layer for each domain. Memory = frozen base weights (this base: \(base.parameters) weights × 4 B, fp32; "
        s += "7B: \(ParameterAudit.base7B.parameters) weights × 2 B, bf16, \(ParameterAudit.base7B.layers) layers of width \(ParameterAudit.base7B.hidden)) "
        s += "+ 16 B per trainable parameter (fp32 value, gradient and two AdamW moments; full fine-tuning trains the base itself). "
        s += "Activations and the replay buffer (\(byteBudget) B) are not counted. Measured: the run's parameter store after its last domain."
        if recorded == nil { s += " This results file does not record the base model's shape: all-MiniLM-L6-v2 is assumed." }
        return s + "</p></section>\n"
    }

    // MARK: - State

    /// The page of a state directory's current version: its history of versions and the figures
    /// of its sequence of domains.
    public static func page(state s: StateSnapshot) -> String {
        let mf = s.manifest
        let run = ReportRun.run(ofState: s, id: "state")
        var body = "<h1>DualReplay state report: version \(mf.version)</h1>\n"
        body += "<p class=\"lead\">\(mf.domains.count) domains onboarded with \(xmlEscaped(mf.settings.name)); F1 in points, routed mode unless marked oracle. "
        body += "Hover a mark for its value.</p>\n"
        body += "<nav><a href=\"#run-card\">state card</a> · <a href=\"#versions\">versions</a> · <a href=\"#comparison\">metrics</a> · <a href=\"#parameter-audit\">parameter audit</a></nav>\n"
        let rows: [(String, String)] = [
            ("state version", "\(mf.version)"), ("code version", mf.codeVersion ?? "unknown"), ("method", "\(mf.settings.name) (\(mf.settings.kind.rawValue))"),
            ("model", "\(mf.baseModel.path ?? "-") (fingerprint \(mf.baseModel.fingerprint), \(mf.baseModel.layers) layers, width \(mf.baseModel.hidden))"),
            ("domains", mf.domains.map { "\($0.name) (\($0.trainExamples) train)" }.joined(separator: " → ")), ("seed", "\(mf.seed)"),
            ("byte budget", "\(mf.byteBudget) B"), ("eval split", (mf.config.evalSplit ?? ConfigDefaults.evalSplit).rawValue),
            ("created", mf.createdAt), ("last onboarding", s.metrics.last?.createdAt ?? "-"),
        ]
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        let config = (try? enc.encode(mf.config)).map { String(decoding: $0, as: UTF8.self) } ?? "-"
        body += "<figure id=\"run-card\" data-kind=\"run-card\" class=\"card\"><figcaption>State card</figcaption><table class=\"kv\">"
        for (k, v) in rows { body += "<tr><th>\(xmlEscaped(k))</th><td>\(xmlEscaped(v))</td></tr>" }
        body += "<tr><th>config</th><td><details><summary>config (JSON)</summary><pre>\(xmlEscapedLines(config))</pre></details></td></tr></table></figure>\n"
        body += versions(s, run)
        body += comparisonFigures([run], methods: [run.method], heading: "Metrics after each onboarding",
                                  note: "After the k-th domain onboarded (version history order).")
        body += "<section class=\"method\" id=\"method-state\"><h2>Sequence of domains</h2>\n" + runFigures(run) + "</section>\n"
        let ipd = mf.domains.isEmpty ? 6 : Double(mf.domains.reduce(0) { $0 + $1.intents.count }) / Double(mf.domains.count)
        let trainable = mf.tensors.filter { $0.name != TensorName.routerPrototypes }.reduce(0) { $0 + $1.count }
        let base = BaseModelShape.estimatedBERT(layers: mf.baseModel.layers, hidden: mf.baseModel.hidden, vocabSize: mf.baseModel.vocabSize)
        body += auditSection(lines: [AuditLine(name: mf.settings.name, settings: mf.settings, measured: (mf.domains.count, trainable))],
                             loraRank: mf.settings.spec.loraRank, base: base, intentsPerDomain: ipd, byteBudget: mf.byteBudget)
        return document(title: "DualReplay state report: version \(mf.version)", body: body)
    }

    /// Per-domain routed F1 after each onboarding, with the red lines each version raised.
    static func versions(_ s: StateSnapshot, _ run: ReportRun) -> String {
        let rows = s.metrics
        let xs = rows.map { "v\($0.version)" }
        let series = run.domains.enumerated().map { j, d in
            ChartSeries(name: d, color: seriesColor(j), values: rows.map { r in r.domains.firstIndex(of: d).map { 100 * r.routedF1[$0] } })
        }
        var chart = lineChart(xLabels: xs, series: series, yRange: 0...100, yTitle: "routed F1", label: "per-domain F1 after each version")
        // a red mark over every version that raised a red line
        var marks = SVGCanvas(width: 560, height: 22)
        let f = PlotFrame(plotWidth: 450, plotHeight: 1, yMin: 0, yMax: 1, count: xs.count)
        for (i, r) in rows.enumerated() {
            let lines = r.redLines ?? []
            if lines.isEmpty {
                marks.circle(f.x(i), 11, r: 4, fill: r.redLines == nil ? "#bbbbbb" : "#59a14f",
                             title: r.redLines == nil ? "v\(r.version): red lines not recorded" : "v\(r.version): no red line")
            } else {
                marks.rect(f.x(i) - 6, 5, 12, 12, fill: redLineColor, title: "v\(r.version): " + lines.joined(separator: "; "))
            }
        }
        chart += marks.svg(label: "red lines per version")
        var t = "<table class=\"grid\"><tr><th>version</th><th>domain added</th><th>date</th><th>BWT</th><th>router acc</th><th>red lines</th></tr>"
        for (i, r) in rows.enumerated() {
            let bwt = ReportRun.prefix(run.routed, min(i + 1, run.domains.count)).backwardTransfer
            let lines = r.redLines.map { $0.isEmpty ? "none" : $0.joined(separator: "; ") } ?? "not recorded"
            t += "<tr><td>\(r.version)</td><td>\(xmlEscaped(r.domainAdded))</td><td>\(xmlEscaped(r.createdAt))</td><td>\(fixed(100 * bwt))</td>"
            t += "<td>\(r.routerAccuracy.map { fixed(100 * $0) } ?? "-")</td><td\(r.redLines?.isEmpty == false ? " class=\"red\"" : "")>\(xmlEscaped(lines))</td></tr>"
        }
        t += "</table>"
        return "<section id=\"versions\"><h2>History of versions</h2>"
            + figure("fig-versions", .versions, "Per-domain routed F1 after each onboarding; squares: versions that raised a red line (hover for which)",
                     "<div class=\"stack\">\(chart)\(t)</div>") + "</section>\n"
    }

    // MARK: - Document

    static let css = """
    body{font-family:sans-serif;margin:24px;color:#222;background:#fff;max-width:1400px}
    h1{font-size:22px;margin:0 0 6px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}h3{font-size:15px;margin:18px 0 6px}
    nav{margin:8px 0 16px;font-size:13px}nav a{color:#1f5fa8}
    .lead,.note{font-size:12px;color:#555;max-width:1100px}
    figure{display:inline-block;vertical-align:top;margin:8px 16px 16px 0;padding:8px;border:1px solid #e5e5e5;border-radius:4px;background:#fff}
    figcaption{font-size:12px;font-weight:bold;margin-bottom:6px;max-width:600px}
    table{border-collapse:collapse;font-size:12px}th,td{padding:3px 8px;text-align:left;vertical-align:top}
    table.grid th,table.grid td{border:1px solid #ddd}table.grid th{background:#f4f4f4}
    table.kv th{color:#555;font-weight:normal;white-space:nowrap}
    td.red,.kind-knowledge-loss{color:#d62728;font-weight:bold}td.ok{color:#2b7a2b}.kind-alignment-drift{color:#b07a00}
    pre{font-size:11px;max-height:320px;overflow:auto;background:#f8f8f8;padding:6px}
    .stack{display:flex;flex-direction:column;gap:6px}
    svg text{font-family:sans-serif}
    """

    static func document(title: String, body: String) -> String {
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n<title>\(xmlEscaped(title))</title>\n<style>\n\(css)\n</style>\n</head>\n<body>\n"
            + body + "<footer class=\"note\">Written by `dualreplay report`: one file, inline SVG and CSS, nothing loaded from anywhere.</footer>\n</body>\n</html>\n"
    }
}
