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

    func validate() throws {
        if let t = threads, t < 1 { throw ValidationError("--threads must be at least 1") }
    }

    func run() throws {
        let cfg = try ExperimentConfig.load(URL(fileURLWithPath: config))
        try runExperiment(cfg, out: out, threads: threads, model: model)
    }
}

/// Shared by `run` and `demo`: loads data and model, runs, writes results atomically.
func runExperiment(_ cfgIn: ExperimentConfig, out: String?, threads: Int?, model: String?) throws {
    var cfg = cfgIn
    if let t = threads { cfg.threads = t }
    if let m = model { cfg.model = m }
    setComputeThreads(cfg.threads ?? 1)
    let modelDir = URL(fileURLWithPath: cfg.model ?? "models/all-MiniLM-L6-v2")
    let maxLength = cfg.training?.maxLength ?? TrainingDefaults().maxLength
    let encoder = try SentenceEncoder(modelDirectory: modelDir, maxLength: maxLength)
    let (scenario, general) = try ExperimentSetup.scenario(cfg.data, seed: cfg.seed ?? 0)
    printError("dualreplay: \(scenario.count) domains, \(scenario.numClasses) intents, \(cfg.methods.count) methods × \(cfg.resolvedOrderingSeeds.count) orderings")
    let runner = ExperimentRunner(config: cfg, scenario: scenario, encoder: encoder, generalTexts: general, codeVersion: codeVersion())
    let start = Date()
    runner.progress = { printError(String(format: "[%6.0fs] ", Date().timeIntervalSince(start)) + $0) }
    let results = try runner.run()
    let dir = URL(fileURLWithPath: out ?? "results/\(cfg.name)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys]
    try AtomicFile.write(try enc.encode(results), to: dir.appendingPathComponent("results.json"))
    let md = ResultsReport.markdown(results)
    try AtomicFile.write(Data(md.utf8), to: dir.appendingPathComponent("results.md"))
    print(md)
    printError("dualreplay: wrote \(dir.path)/results.json and results.md")
}

/// The git commit of the working tree when run from a checkout, else "unknown".
func codeVersion() -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["git", "describe", "--always", "--dirty"]
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = FileHandle.nullDevice
    do { try p.run() } catch { return "unknown" }
    p.waitUntilExit()
    let s = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    return p.terminationStatus == 0 && !s.isEmpty ? s : "unknown"
}
