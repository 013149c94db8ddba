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

    @Flag(help: "Summarise the finished runs of <out>/partial.json (summaries and paired tests so far) into <out>/interim/ without running anything; the partial file may come from another build of the same config.")
    var interim = false

    @Option(help: "Under MPI (mpirun -np N): data (every run on all ranks) or grid (the runs spread over the ranks); overrides the config. docs/CLUSTER.md")
    var parallel: ParallelMode?

    func validate() throws {
        if let t = threads, t < 1 { throw ValidationError("--threads must be at least 1") }
    }

    func run() throws {
        let job = try Cluster.collective()
        let cfg = try job.agree { try ExperimentConfig.load(URL(fileURLWithPath: config)) }
        try runExperiment(cfg, out: out, threads: threads, model: model, resume: resume, parallel: parallel, interim: interim)
    }
}

extension ParallelMode: ExpressibleByArgument {}

/// Shared by `run` and `demo`: loads data and model, runs, writes results atomically. Under MPI
/// every rank loads and runs its part; rank 0 alone reads the partial results (and sends them to
/// the others), prints progress and writes files.
func runExperiment(_ cfgIn: ExperimentConfig, out: String?, threads: Int?, model: String?, resume: Bool = false,
                   parallel: ParallelMode? = nil, interim: Bool = false) throws {
    let job = try Cluster.collective()
    let lead = job.rank == 0
    var cfg = cfgIn
    if let t = threads { cfg.threads = t }
    if let m = model { cfg.model = m }
    try job.agree { try cfg.validate() }
    let mode = parallel ?? cfg.parallel ?? .data
    if job.size > 1 {
        if mode == .grid {
            let units = ExperimentRunner.gridRunCount(cfg)
            guard job.size <= units else { throw JobError.tooManyRanks(ranks: job.size, units: units, what: "runs in this experiment's grid") }
        } else {
            try checkDataParallel(chunk: (cfg.training ?? TrainingDefaults()).gradientChunk,
                                  batchSizes: try cfg.resolvedMethods().map(\.batchSize), ranks: job.size)
            Parallelism.collective = job
        }
    }
    setComputeThreads(cfg.threads ?? ConfigDefaults.threads)
    let (encoder, scenario, general) = try job.agree {
        let modelDir = URL(fileURLWithPath: cfg.model ?? ConfigDefaults.model)
        let maxLength = cfg.training?.maxLength ?? TrainingDefaults().maxLength
        let encoder = try SentenceEncoder(modelDirectory: modelDir, maxLength: maxLength)
        let (scenario, general) = try ExperimentSetup.scenario(cfg.data, seed: cfg.seed ?? ConfigDefaults.seed,
                                                               multiIntentSplit: (cfg.evalSplit ?? ConfigDefaults.evalSplit).split)
        try ExperimentSetup.checkResources(cfg, model: encoder.config, scenario: scenario)
        return (encoder, scenario, general)
    }
    let ranks = job.size > 1 ? " on \(job.size) MPI ranks (\((parallel ?? cfg.parallel ?? .data).rawValue))" : ""
    if lead { printError("dualreplay: \(scenario.count) domains, \(scenario.numClasses) intents, \(cfg.methods.count) methods × \(cfg.resolvedOrderingSeeds.count) orderings\(ranks)") }
    let runner = ExperimentRunner(config: cfg, scenario: scenario, encoder: encoder, generalTexts: general, codeVersion: codeVersion())
    runner.collective = job
    runner.parallel = parallel
    let start = Date()
    if lead { runner.progress = { printError(String(format: "[%6.0fs] ", Date().timeIntervalSince(start)) + $0) } }
    let dir = URL(fileURLWithPath: out ?? "results/\(cfg.name)")
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys]
    // every finished run is saved at once; `--resume` reuses them (same protocol hash only)
    let partialURL = dir.appendingPathComponent("partial.json")
    let saved: [UInt8] = try job.agree {
        guard lead else { return [] }
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        guard resume || interim, FileManager.default.fileExists(atPath: partialURL.path) else { return [] }
        do { return Array(try Data(contentsOf: partialURL)) } catch {
            throw RunnerError.data("\(partialURL.path): cannot reuse: \(error.localizedDescription); delete it to start over")
        }
    }
    let partialBytes = try job.broadcast(saved, root: 0)
    if !partialBytes.isEmpty {
        try job.agree {
            do {
                let p = try JSONDecoder().decode(PartialResults.self, from: Data(partialBytes))
                guard p.schema == PartialResults.schema else { throw RunnerError.data("schema \(p.schema)") }
                runner.resumeFrom = p
                if lead, !interim, p.protocolHash != runner.makeProtocol().hash {
                    printError("dualreplay: \(partialURL.path) belongs to another protocol (\(p.protocolHash)): starting over")
                }
            } catch {
                throw RunnerError.data("\(partialURL.path): cannot reuse: \(error.localizedDescription); delete it to start over")
            }
        }
    }
    if interim {
        guard lead else { return }
        guard let p = runner.resumeFrom else { throw RunnerError.data("\(partialURL.path): no finished runs to summarise") }
        var results = try runner.interim(p)
        results.baseModel = BaseModelShape(encoder.weights)
        let md = ResultsReport.markdown(results)
        let idir = dir.appendingPathComponent("interim")
        try FileManager.default.createDirectory(at: idir, withIntermediateDirectories: true)
        try writeResults(results, markdown: md, to: idir, encoder: enc)
        print(md)
        return
    }
    if lead { runner.onRunFinished = { p in try AtomicFile.write(try enc.encode(p), to: partialURL) } }
    Interrupt.shared.install()
    runner.shouldStop = mode == .data ? agreedStop(job) : { Interrupt.shared.requested }
    runner.afterStep = CrashInjection.install(ProcessInfo.processInfo.environment[CrashInjection.environmentVariable])
    var results: ExperimentResults
    do {
        results = try runner.run()
    } catch RunnerError.interrupted(let d, let step, let total) {
        if lead {
            printError("dualreplay: stopped in domain \"\(d)\" at step \(step)/\(total); finished runs are in \(partialURL.path)")
            printError("dualreplay: rerun the same command with --resume to continue with the unfinished runs")
        }
        throw ExitCode(130)
    }
    if mode == .data { try reportInferenceShares(job) }
    results.baseModel = BaseModelShape(encoder.weights)
    results.ranks = job.size
    results.parallel = job.size > 1 ? mode.rawValue : nil
    let md = ResultsReport.markdown(results)
    try job.agree {
        guard lead else { return }
        try writeResults(results, markdown: md, to: dir, encoder: enc)
    }
    guard lead else { return }
    print(md)
    printError("dualreplay: wrote \(dir.path)/results.json, results.md and report.html")
}

/// Data-parallel training over `ranks` ranks shares each batch as `gradientChunk`-row chunks:
/// it needs chunking on, and at least one chunk of a full batch per rank.
func checkDataParallel(chunk: Int, batchSizes: [Int], ranks: Int) throws {
    let batch = batchSizes.min() ?? 1
    guard chunk > 0 else {
        throw JobError.unsupported("data-parallel training over \(ranks) MPI ranks splits every batch into chunks: set training.gradientChunk "
                                   + "(e.g. \(max(1, batch / ranks)) for \(ranks) ranks at batch \(batch)) in the config, "
                                   + "or spread whole runs with --parallel grid (docs/CLUSTER.md)")
    }
    let chunks = (batch + chunk - 1) / chunk
    guard ranks <= chunks else {
        throw JobError.tooManyRanks(ranks: ranks, units: chunks, what: "gradient chunks per batch (batch \(batch), training.gradientChunk \(chunk))")
    }
}

/// Ctrl-C under data-parallel training: every rank must stop at the same step, so the ranks
/// agree on the stop flag after each step (one tiny all-gather); one process: the flag as is.
func agreedStop(_ job: Collective) -> () -> Bool {
    guard job.size > 1 else { return { Interrupt.shared.requested } }
    return {
        do { return try job.allGather(Interrupt.shared.requested ? 1 : 0).contains(1) } catch {
            printError("Error: rank \(job.rank) of \(job.size): \(error.localizedDescription); stopping every rank of the job")
            job.abort(code: 1)
        }
    }
}

/// Data-parallel under MPI: rank 0 prints every rank's share of the sharded inference passes
/// (evaluation, validation, prototypes, stored logits). Every rank calls it (a collective).
func reportInferenceShares(_ job: Collective) throws {
    guard job.size > 1 else { return }
    let shares = try Parallelism.inference.gatherTallies()
    guard job.rank == 0, let t = shares.first else { return }
    printError("dualreplay: inference sharded over \(job.size) ranks: chunks " + shares.map { "\($0.chunks)" }.joined(separator: "/")
               + " of \(t.totalChunks) in \(t.passes) passes, utterances " + shares.map { "\($0.rows)" }.joined(separator: "/") + " of \(t.totalRows)")
}

/// The code version embedded at build time (`BuildInfo.codeVersion`), wherever the run starts.
func codeVersion() -> String { BuildInfo.codeVersion }

/// results.json, results.md and report.html of `results` in `dir`, each written atomically.
func writeResults(_ results: ExperimentResults, markdown md: String, to dir: URL, encoder enc: JSONEncoder) throws {
    try AtomicFile.write(try enc.encode(results), to: dir.appendingPathComponent("results.json"))
    try AtomicFile.write(Data(md.utf8), to: dir.appendingPathComponent("results.md"))
    try AtomicFile.write(Data(HTMLReport.page(results: results).utf8), to: dir.appendingPathComponent("report.html"))
}
