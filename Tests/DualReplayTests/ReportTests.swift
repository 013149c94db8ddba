import Foundation
import Testing
@testable import DualReplay
#if canImport(FoundationXML)
import FoundationXML
#endif

/// The HTML report: it parses as XML, every figure is there for an experiment with several methods
/// and orderings and for a state with several versions, nothing is loaded from anywhere, the
/// heatmap cells hold the results' numbers, and the same input gives the same bytes. Also the
/// numbers the report needs that the run now records (router confusion, domain sizes, floors).
@Suite struct ReportTests {
    /// Elements of a parsed page: id → data-kind of every figure, and the heatmap cells by figure id.
    final class PageScan: NSObject, XMLParserDelegate {
        var figures: [String: String] = [:]
        var cells: [String: [(row: Int, col: Int, text: String)]] = [:]
        var ids: [String] = []
        private var figure: String?
        private var cell: (Int, Int)?
        private var text = ""

        func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                    attributes a: [String: String] = [:]) {
            if let id = a["id"] { ids.append(id) }
            if name == "figure", let id = a["id"] {
                figures[id] = a["data-kind"] ?? ""
                figure = id
            }
            if name == "text", a["class"] == "cell", let r = a["data-row"].flatMap(Int.init), let c = a["data-col"].flatMap(Int.init) {
                cell = (r, c)
                text = ""
            }
        }

        func parser(_ parser: XMLParser, foundCharacters string: String) { if cell != nil { text += string } }

        func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
            if name == "text", let (r, c) = cell, let f = figure { cells[f, default: []].append((r, c, text)); cell = nil }
            if name == "figure" { figure = nil }
        }
    }

    static func scan(_ html: String, sourceLocation: SourceLocation = #_sourceLocation) -> PageScan {
        let parser = XMLParser(data: Data(html.utf8))
        let scan = PageScan()
        parser.delegate = scan
        let ok = parser.parse()
        #expect(ok, "the page does not parse as XML: \(parser.parserError.map { "\($0)" } ?? "?") at line \(parser.lineNumber)",
                sourceLocation: sourceLocation)
        return scan
    }

    /// Nothing that a browser would fetch: no URL, script, external image, stylesheet or font.
    static func expectSelfContained(_ html: String, sourceLocation: SourceLocation = #_sourceLocation) {
        let lower = html.lowercased()
        for bad in ["http://", "https://", "<script", "<img", "<link", "src=", "@import", "url(", "<iframe", "<object"] {
            #expect(!lower.contains(bad), "the page holds \(bad)", sourceLocation: sourceLocation)
        }
    }

    // MARK: - a hand-made experiment

    static func matrix(_ domains: [String], seed: UInt64) -> EvalMatrix {
        var rng = SplitMix64(seed: seed)
        var m = EvalMatrix(domains: domains)
        for i in domains.indices { for j in 0...i { m[afterTraining: i, domain: j] = 0.5 + 0.5 * Double(rng.nextUnit()) } }
        return m
    }

    static func ledger(_ count: Int) -> ReplayLedger {
        var l = ReplayLedger()
        for k in 0..<count {
            let rows = (0...k).map { d in
                ReplayLedger.DomainRow(domain: Int32(d), items: 10 - d, bytes: 900 / (k + 1) - 10 * d, labels: 3, quota: 900 / (k + 1), floor: 120)
            }
            l.append(ReplayLedger.Entry(step: k, newDomain: Int32(k), byteBudget: 1300, domainBudget: 900, generalBudget: 400, domains: rows,
                                        generalItems: 5, generalBytes: 380, totalBytes: rows.reduce(380) { $0 + $1.bytes }))
        }
        return l
    }

    /// Two methods (one with a router, ledger and diagnostics) over two orderings of three domains.
    static func results() -> ExperimentResults {
        let names = ["banking", "travel & <home>", "auto"]
        var cfg = ExperimentConfig(name: "report-test", data: DataConfig(), methods: [MethodConfig(kind: .dualReplay), MethodConfig(kind: .loraReplay)])
        cfg.orderingSeeds = [1, 2]
        let proto = ExperimentProtocol(config: cfg, dataFingerprint: "00112233aabbccdd", domainNames: names, byteBudget: 1300, codeVersion: "abc1234",
                                       modelFingerprint: "ffeeddccbbaa9988", threads: 2, hash: "0123456789abcdef")
        var runs: [RunResult] = []
        for (m, kind) in [("dual-replay", MethodKind.dualReplay), ("lora-replay", .loraReplay)] {
            for seed: UInt64 in [1, 2] {
                let order = seed == 1 ? names : names.reversed()
                let routed = matrix(order, seed: seed &* 31 &+ UInt64(m.count)), oracle = matrix(order, seed: seed &* 37 &+ UInt64(m.count))
                var r = RunResult(method: m, kind: kind, orderingSeed: seed, domains: order, routed: routed, oracle: oracle, routedAccuracy: routed,
                                  oracleAccuracy: oracle, routerAccuracy: kind == .dualReplay ? [1, 0.95, 0.9] : nil, validationF1: [],
                                  ledger: ledger(3), bufferBytesUsed: 1200, trainableParameters: kind == .dualReplay ? 120_000 : 80_000,
                                  parametersPerNewDomain: 3000, trainSeconds: 1, evalSeconds: 1, trainExamplesPerSecond: 100)
                r.trainExamples = seed == 1 ? [100, 60, 20] : [20, 60, 100]
                r.intentCounts = [4, 4, 4]
                if kind == .dualReplay {
                    r.routerConfusion = [[30, 2, 0], [1, 28, 3], [0, 4, 26]]
                    r.probes = [ProbeDiagnosis(domain: order[0], headF1AtLearning: 0.9, headF1Now: 0.7, probeF1AtLearning: 0.9, probeF1Now: 0.88),
                                ProbeDiagnosis(domain: order[1], headF1AtLearning: 0.9, headF1Now: 0.89, probeF1AtLearning: 0.9, probeF1Now: 0.9)]
                    r.multiIntent = [MultiIntentScore(domain: order[0], count: 20, anyHit: 0.6, domainHit: 0.9, singleIntentAccuracy: 0.85)]
                }
                runs.append(r)
            }
        }
        let summaries = ["dual-replay", "lora-replay"].map { m -> MethodSummary in
            let rs = runs.filter { $0.method == m }
            return MethodSummary(method: m, kind: rs[0].kind, routed: EvalSummary.aggregate(rs.map(\.routed)), oracle: EvalSummary.aggregate(rs.map(\.oracle)),
                                 routerAccuracy: rs[0].routerAccuracy == nil ? nil : MeanStd(rs.compactMap { $0.routerAccuracy?.last }),
                                 trainableParameters: rs[0].trainableParameters, parametersPerNewDomain: 3000, latencyP99ms: 4.2,
                                 trainSeconds: MeanStd([1, 1]), evalSeconds: MeanStd([1, 1]))
        }
        var r = ExperimentResults(experimentProtocol: proto, runs: runs, summaries: summaries, createdAt: "2026-01-02T03:04:05Z")
        r.baseModel = ParameterAudit.defaultBase
        return r
    }

    @Test func experimentPageHasEveryFigureAndLoadsNothing() throws {
        let r = Self.results()
        let html = HTMLReport.page(results: r)
        Self.expectSelfContained(html)
        let page = Self.scan(html)
        // every id once
        #expect(Set(page.ids).count == page.ids.count, "duplicate ids")
        for id in ["run-card", "summary", "fig-bwt", "fig-router-accuracy", "fig-head-tail", "fig-forgetting", "fig-param-audit", "fig-memory-7b"] {
            #expect(page.figures[id] != nil, "missing \(id)")
        }
        let kinds = Set(page.figures.values)
        for k in HTMLReport.Kind.allCases where k != .versions { #expect(kinds.contains(k.rawValue), "no figure of kind \(k.rawValue)") }
        // per run (method × ordering): both heatmaps, the curves and the ledger; the router's figures and diagnostics for dual-replay
        for run in r.runs {
            let ids = page.figures.filter { $0.value == HTMLReport.Kind.routedMatrix.rawValue }.keys
            #expect(ids.contains { $0.contains(run.method) && $0.hasSuffix("s\(run.orderingSeed)") }, "no routed R matrix for \(run.method) \(run.orderingSeed)")
        }
        func count(_ k: HTMLReport.Kind) -> Int { page.figures.values.filter { $0 == k.rawValue }.count }
        #expect(count(.routedMatrix) == 4 && count(.oracleMatrix) == 4 && count(.f1Curves) == 4 && count(.ledger) == 4)
        #expect(count(.routerConfusion) == 2 && count(.dropAttribution) == 2 && count(.multiIntent) == 2)
        // names are escaped, the card shows the protocol, the code version and the date of the input
        #expect(html.contains("travel &amp; &lt;home&gt;") && !html.contains("travel & <home>"))
        for s in ["0123456789abcdef", "abc1234", "00112233aabbccdd", "2026-01-02T03:04:05Z", "seed 2: auto → travel &amp; &lt;home&gt; → banking"] {
            #expect(html.contains(s), "the run card lacks \(s)")
        }
        #expect(html.contains("auto<br/>seed 2:"), "one ordering per line")
        #expect(!html.contains("\\u{A}") && html.contains("&quot;orderingSeeds&quot; : [\n"), "the config is shown line by line")
    }

    @Test func heatmapCellsHoldTheResultsNumbers() throws {
        let r = Self.results()
        let page = Self.scan(HTMLReport.page(results: r))
        var checked = 0
        for run in r.runs {
            for (kind, m) in [("fig-r-routed-", run.routed), ("fig-r-oracle-", run.oracle)] {
                let id = try #require(page.figures.keys.first { $0.hasPrefix(kind) && $0.contains(run.method) && $0.hasSuffix("s\(run.orderingSeed)") })
                let cells = page.cells[id] ?? []
                #expect(cells.count == m.count * (m.count + 1) / 2, "\(id): \(cells.count) cells")
                for c in cells {
                    let v = m.f1[c.row][c.col]
                    #expect(!v.isNaN, "\(id): a cell at (\(c.row), \(c.col)) where the matrix has none")
                    let shown = try #require(Double(c.text), "\(id): cell text \(c.text)")
                    #expect(abs(shown - 100 * v) <= 0.05 + 1e-9, "\(id) (\(c.row), \(c.col)): shows \(c.text), results hold \(100 * v)")
                    checked += 1
                }
            }
            if let conf = run.routerConfusion {
                let id = try #require(page.figures.keys.first { $0.hasPrefix("fig-router-confusion-") && $0.hasSuffix("s\(run.orderingSeed)") && $0.contains(run.method) })
                let cells = try #require(page.cells[id])
                #expect(cells.count == 9)
                for c in cells { #expect(Int(c.text) == conf[c.row][c.col]) }
            }
        }
        #expect(checked == 4 * 2 * 6)
    }

    @Test func sameInputGivesTheSameBytes() throws {
        let r = Self.results()
        let a = HTMLReport.page(results: r)
        let dir = try TestPaths.tempDir()
        let url = dir.appendingPathComponent("results.json")
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        try enc.encode(r).write(to: url)
        let b = try HTMLReport.page(at: url), c = try HTMLReport.page(at: dir)
        #expect(a == b && b == c)
        // and a change in one number changes the page
        var r2 = r
        r2.runs[0].routed.f1[0][0] = 0.123
        #expect(HTMLReport.page(results: r2) != a)
    }

    @Test func oldResultsWithoutTheNewFieldsStillMakeAPage() throws {
        // results.json written before routerConfusion, trainExamples, intentCounts, floors and baseModel
        var r = Self.results()
        r.baseModel = nil
        for i in r.runs.indices { r.runs[i].routerConfusion = nil; r.runs[i].trainExamples = nil; r.runs[i].intentCounts = nil }
        let html = HTMLReport.page(results: r)
        let page = Self.scan(html)
        #expect(page.figures.values.filter { $0 == "router-confusion" }.isEmpty && page.figures["fig-head-tail"] == nil)
        #expect(page.figures["fig-param-audit"] != nil && html.contains("all-MiniLM-L6-v2 is assumed"))
    }

    @Test func errorsNameTheFile() throws {
        let dir = try TestPaths.tempDir()
        let missing = dir.appendingPathComponent("nope.json")
        #expect(throws: ReportError.unreadable(file: missing.path, reason: "no such file or directory")) { try HTMLReport.page(at: missing) }
        let other = dir.appendingPathComponent("other.json")
        try Data("{\"schema\": \"dualreplay.partial/1\"}".utf8).write(to: other)
        #expect(throws: ReportError.wrongSchema(file: other.path, found: "dualreplay.partial/1")) { try HTMLReport.page(at: other) }
        #expect(throws: ReportError.notAReport(path: dir.path)) { try HTMLReport.page(at: dir) }
        do { _ = try HTMLReport.page(at: other) } catch { #expect(error.localizedDescription.contains(other.path)) }
    }

    // MARK: - a real state with several versions

    @Test func statePageShowsEveryVersionAndItsRedLines() throws {
        let dir = try TestPaths.tempDir().appendingPathComponent("state")
        let s = try ContinualState.create(config: StateTests.config(), encoder: try StateTests.encoder(), generalTexts: StateTests.general, modelPath: nil)
        var diffs: [StateDiff] = []
        for (name, base) in [("a", 0), ("b", 6), ("c", 12)] {
            diffs.append(try s.onboard(StateTests.domain(name, base: base, train: name == "c" ? 4 : 8)))
            try s.save(to: dir)
        }
        let loaded = try StateDirectory.load(dir)
        // what onboard raised is kept with the version, and the router's confusion after it
        #expect(loaded.metrics.map(\.redLines) == diffs.map(\.redLines))
        let last = try #require(loaded.metrics.last), conf = try #require(last.routerConfusion)
        #expect(conf.count == 3 && conf.allSatisfy { $0.count == 3 })
        let total = conf.joined().reduce(0, +), diagonal = (0..<3).reduce(0) { $0 + conf[$1][$1] }
        #expect(abs(Double(diagonal) / Double(total) - (last.routerAccuracy ?? -1)) < 1e-12)
        let html = try HTMLReport.page(at: dir)
        Self.expectSelfContained(html)
        let page = Self.scan(html)
        for id in ["run-card", "fig-versions", "fig-r-routed-state", "fig-r-oracle-state", "fig-f1-curves-state", "fig-ledger-state", "fig-head-tail-state",
                   "fig-router-accuracy-state", "fig-router-confusion-state", "fig-param-audit", "fig-bwt", "fig-forgetting"] {
            #expect(page.figures[id] != nil, "missing \(id)")
        }
        for v in 1...3 { #expect(html.contains("<tr><td>\(v)</td><td>\(["a", "b", "c"][v - 1])</td>"), "no row for version \(v)") }
        // the routed cells are the metrics' rows
        for c in page.cells["fig-r-routed-state"] ?? [] {
            let shown = try #require(Double(c.text))
            #expect(abs(shown - 100 * loaded.metrics[c.row].routedF1[c.col]) <= 0.05 + 1e-9)
        }
        #expect(page.cells["fig-r-routed-state"]?.count == 6)
        #expect(try HTMLReport.page(at: dir) == html)
    }

    // MARK: - what the runner records

    @Test func runRecordsRouterConfusionSizesAndFloors() throws {
        var m = MethodConfig(kind: .dualReplay)
        m.adapter.bottleneck = 4
        let lora = MethodConfig(kind: .loraReplay)
        var cfg = ExperimentConfig(name: "report-run", data: DataConfig(synthetic: SyntheticConfig(domains: 3, intentsPerDomain: 3, trainPerIntent: 6,
                                                                                                  valPerIntent: 2, testPerIntent: 3, seed: 5)),
                                   methods: [m, lora])
        cfg.orderings = 1
        cfg.latencySamples = 0
        cfg.training = StateTests.config().training
        cfg.training?.bufferBytes = nil
        cfg.training?.bufferExamples = 12
        let enc = try StateTests.encoder()
        let (scenario, general) = try ExperimentSetup.scenario(cfg.data)
        let runner = ExperimentRunner(config: cfg, scenario: scenario, encoder: enc, generalTexts: general, codeVersion: "test")
        var results = try runner.run()
        results.baseModel = BaseModelShape(enc.weights)
        let run = try #require(results.runs.first)
        let conf = try #require(run.routerConfusion)
        #expect(conf.count == 3 && conf.allSatisfy { $0.count == 3 })
        // each row holds the domain's eval rows; the diagonal share is the router accuracy
        for (j, d) in run.domains.enumerated() {
            #expect(conf[j].reduce(0, +) == scenario.domains.first { $0.name == d }!.test.count)
        }
        let diagonal = (0..<3).reduce(0) { $0 + conf[$1][$1] }
        #expect(abs(Double(diagonal) / Double(conf.joined().reduce(0, +)) - (run.routerAccuracy?.last ?? -1)) < 1e-12)
        #expect(run.trainExamples == run.domains.map { d in scenario.domains.first { $0.name == d }!.train.count })
        #expect(run.intentCounts == [3, 3, 3])
        let floors = try #require(run.ledger?.entries.last?.domains.map(\.floor))
        #expect(floors.count == 3 && floors.allSatisfy { ($0 ?? 0) > 0 })
        // the audit's estimate at the run's K is the parameter count each run measured
        for (method, measured) in zip([m, lora], results.runs) {
            let s = try MethodSettings.resolve(method, training: cfg.training!)
            #expect(ParameterAudit.trainableParameters(s, base: results.baseModel!, domains: 3, intentsPerDomain: 3) == measured.trainableParameters,
                    "\(s.name)")
        }
        #expect(results.runs[1].routerConfusion == nil)
        let page = Self.scan(HTMLReport.page(results: results))
        #expect(page.figures.values.contains("router-confusion"))
    }

    @Test func codeVersionComesFromTheBuild() throws {
        // `make` writes the header the C target includes; without it the binary says "unknown"
        let header = TestPaths.packageRoot.appendingPathComponent("CKernels/src/dr_build_version.h")
        if let text = try? String(contentsOf: header, encoding: .utf8) {
            let quoted = text.split(separator: "\"", omittingEmptySubsequences: false)
            #expect(quoted.count >= 3 && BuildInfo.codeVersion == String(quoted[1]), "\(BuildInfo.codeVersion) vs \(text)")
        } else {
            #expect(BuildInfo.codeVersion == "unknown")
        }
        #expect(!BuildInfo.codeVersion.isEmpty)
    }
}
