import ArgumentParser
import DualReplay
import Foundation

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a continual-learning experiment from a JSON or YAML config.",
        discussion: """
        Trains every method over every domain ordering, evaluates all seen domains after each \
        domain, and writes <out>/results.json (schema dualreplay.results/1) and <out>/results.md. \
        See docs/CONFIG.md for every field.
        """
    )

    @Option(help: "Experiment config (.json, .yaml or .yml).")
    var config: String

    @Option(help: "Output directory (default: results/<name>).")
    var out: String?

    @Option(help: "Compute threads (overrides the config).")
    var threads: Int?

    @Option(help: "Model directory (overrides the config).")
    var model: String?

    @Flag(help: "Reuse the runs finished by an interrupted run of the same protocol (<out>/partial.json).")
    var resume = false

    func validate() throws {
        if let t = threads, t < 1 { throw ValidationError("--threads must be at least 1") }
    }

    func run() throws {
        let cfg = try ExperimentConfig.load(URL(fileURLWithPath: config))
        try runExperiment(cfg, out: out, threads: threads, model: model, resume: resume)
    }
}

/// Shared by `run` and `demo`: loads data and model, runs, writes results atomically.
func runExperiment(_ cfgIn: ExperimentConfig, out: String?, threads: Int?, model: String?, resume: Bool = false) throws {
    var cfg = cfgIn
    if let t = threads { cfg.threads = t }
    if let m = model { cfg.model = m }
    try cfg.validate()
    setComputeThreads(cfg.threads ?? ConfigDefaults.threads)
    let modelDir = URL(fileURLWithPath: cfg.model ?? ConfigDefaults.model)
    let maxLength = cfg.training?.maxLength ?? TrainingDefaults().maxLength
    let encoder = try SentenceEncoder(modelDirectory: modelDir, maxLength: maxLength)
    let (scenario, general) = try ExperimentSetup.scenario(cfg.data, seed: cfg.seed ?? ConfigDefaults.seed)
    try ExperimentSetup.checkResources(cfg, model: encoder.config, scenario: scenario)
    printError("dualreplay: \(scenario.count) domains, \(scenario.numClasses) intents, \(cfg.methods.count) methods × \(cfg.resolvedOrderingSeeds.count) orderings")
    let runner = ExperimentRunner(config: cfg, scenario: scenario, encoder: encoder, generalTexts: general, codeVersion: codeVersion())
    let start = Date()
    runner.progress = { printError(String(format: "[%6.0fs] ", Date().timeIntervalSince(start)) + $0) }
    let dir = URL(fileURLWithPath: out ?? "results/\(cfg.name)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys]
    // every finished run is saved at once; `--resume` reuses them (same protocol hash only)
    let partialURL = dir.appendingPathComponent("partial.json")
    if resume, FileManager.default.fileExists(atPath: partialURL.path) {
        do {
            let p = try JSONDecoder().decode(PartialResults.self, from: Data(contentsOf: partialURL))
            guard p.schema == PartialResults.schema else { throw RunnerError.data("schema \(p.schema)") }
            runner.resumeFrom = p
            if p.protocolHash != runner.makeProtocol().hash {
                printError("dualreplay: \(partialURL.path) belongs to another protocol (\(p.protocolHash)): starting over")
            }
        } catch {
            throw RunnerError.data("\(partialURL.path): cannot reuse: \(error.localizedDescription); delete it to start over")
        }
    }
    runner.onRunFinished = { p in try AtomicFile.write(try enc.encode(p), to: partialURL) }
    Interrupt.shared.install()
    runner.shouldStop = { Interrupt.shared.requested }
    var results: ExperimentResults
    do {
        results = try runner.run()
    } catch RunnerError.interrupted(let d, let step, let total) {
        printError("dualreplay: stopped in domain \"\(d)\" at step \(step)/\(total); finished runs are in \(partialURL.path)")
        printError("dualreplay: rerun the same command with --resume to continue with the unfinished runs")
        throw ExitCode(130)
    }
    results.baseModel = BaseModelShape(encoder.weights)
    try AtomicFile.write(try enc.encode(results), to: dir.appendingPathComponent("results.json"))
    let md = ResultsReport.markdown(results)
    try AtomicFile.write(Data(md.utf8), to: dir.appendingPathComponent("results.md"))
    try AtomicFile.write(Data(HTMLReport.page(results: results).utf8), to: dir.appendingPathComponent("report.html"))
    print(md)
    printError("dualreplay: wrote \(dir.path)/results.json, results.md and report.html")
}

/// The code version embedded at build time (`BuildInfo.codeVersion`), wherever the run starts.
func codeVersion() -> String { BuildInfo.codeVersion }
