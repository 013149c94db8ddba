import ArgumentParser
import DualReplay
import Foundation

/// Options of the verbs that open a production state.
struct StateOptions: ParsableArguments {
    @Option(help: "State directory (see docs/STATE.md).")
    var state: String

    @Option(help: "Model directory with config.json, model.safetensors and vocab.txt (default: the one the state was created with, else models/all-MiniLM-L6-v2).")
    var model: String?

    @Option(help: "Compute threads (BLAS).")
    var threads: Int = 1

    func validate() throws {
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
    }

    var directory: URL { URL(fileURLWithPath: state) }

    func openEncoder(defaultPath: String?, maxLength: Int) throws -> SentenceEncoder {
        setComputeThreads(threads)
        let path = model ?? defaultPath ?? "models/all-MiniLM-L6-v2"
        return try SentenceEncoder(modelDirectory: URL(fileURLWithPath: path), maxLength: maxLength)
    }

    /// Loads and verifies the current version, then restores it on the base model.
    func open() throws -> ContinualState {
        let loaded = try StateDirectory.load(directory)
        let maxLength = (loaded.manifest.config.training ?? TrainingDefaults()).maxLength
        let encoder = try openEncoder(defaultPath: loaded.manifest.baseModel.path, maxLength: maxLength)
        return try ContinualState.restore(loaded, encoder: encoder)
    }
}

extension MethodKind: ExpressibleByArgument {}

struct OnboardCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "onboard",
        abstract: "Train one new domain into a production state, re-evaluate every known domain and save a new version.",
        discussion: """
        Each domain file is JSONL ({"text","intent","domain","split"}) holding exactly one domain that \
        the state does not know yet, with train, val and test rows; several --domain options onboard \
        them in order, one saved version each. The val and test rows are kept in the state (the frozen \
        evaluation data). Prints the change against the previous version and flags red lines: BWT \
        below -5 points, a head-vs-tail F1 gap above 5 points, a domain below its buffer floor. With \
        --init a new state is created first (DIR must not hold one).

        Crash safety: a checkpoint (DIR/checkpoint.safetensors) is written every --checkpoint-every \
        steps and on Ctrl-C. After a crash, kill or Ctrl-C, rerun the same command with --resume: \
        domains already saved are skipped and the interrupted one continues from its checkpoint, \
        ending bit-identical to an uninterrupted run at the same --threads.
        """
    )

    @OptionGroup var stateOptions: StateOptions

    @Option(help: "JSONL file with a new domain (repeatable: onboarded in order).")
    var domain: [String]

    @Option(help: "Write a checkpoint every N training steps (0: only on Ctrl-C).")
    var checkpointEvery: Int = 50

    @Flag(help: "Continue an interrupted run of the same command: skip domains already saved, resume the checkpoint.")
    var resume = false

    @Flag(help: "Create a new state in --state (it must not exist yet).")
    var `init` = false

    @Option(help: "Method of a new state (--init).")
    var method: MethodKind?

    @Option(help: "Experiment config (.json/.yaml) whose first method and training block a new state follows (--init).")
    var config: String?

    @Option(help: "Seed of a new state (--init; default: the config's, else 0).")
    var seed: UInt64?

    @Option(help: "General-text JSONL for Dual-Replay's general stream (--init; default: $DR_DATA/general/general.jsonl if present, else synthetic).")
    var general: String?

    @Flag(help: "Print the diff as JSON instead of a table.")
    var json = false

    func validate() throws {
        if !`init` && (method != nil || config != nil || seed != nil || general != nil) {
            throw ValidationError("--method, --config, --seed and --general only apply with --init")
        }
        if `init` && method == nil && config == nil { throw ValidationError("--init needs --method (e.g. dual-replay) or --config") }
        if domain.isEmpty { throw ValidationError("give at least one --domain") }
        if checkpointEvery < 0 { throw ValidationError("--checkpoint-every must be 0 or more") }
    }

    func run() throws {
        let dir = stateOptions.directory
        let checkpointURL = OnboardingCheckpoint.url(in: dir)
        let state: ContinualState
        if `init` && !(resume && StateDirectory.exists(dir)) {
            guard !StateDirectory.exists(dir) else { throw StateError.alreadyExists(path: dir.path) }
            state = try createState()
        } else {
            state = try stateOptions.open()
        }
        // every file is read and checked before anything trains
        let urls = domain.map { URL(fileURLWithPath: $0) }
        let domains = try urls.map { try ContinualState.loadDomain($0) }
        var names = Set<String>()
        for (d, u) in zip(domains, urls) where !names.insert(d.name).inserted {
            throw StateError.invalidDomain(file: u.path, reason: "domain \"\(d.name)\" is given twice")
        }
        let known = Set(state.manifest.domains.map(\.name))
        if !resume, let (d, u) = zip(domains, urls).first(where: { known.contains($0.0.name) }) {
            throw StateError.domainExists(name: d.name, file: u.path)
        }
        var pending: OnboardingCheckpoint? = nil
        if FileManager.default.fileExists(atPath: checkpointURL.path) {
            let c = try OnboardingCheckpoint.read(checkpointURL)
            if c.baseVersion < state.manifest.version && known.contains(c.domain) {
                // killed after its version was saved, before the checkpoint was removed: stale
                try? FileManager.default.removeItem(at: checkpointURL)
            } else if !resume {
                throw CheckpointError.pending(file: checkpointURL.path, domain: c.domain, step: c.phase.progress.step, total: c.phase.progress.total)
            } else {
                pending = c
            }
        }
        Interrupt.shared.install()
        let crashHook = CrashInjection.install(ProcessInfo.processInfo.environment[CrashInjection.environmentVariable])
        state.progress = { printError($0) }
        for (d, u) in zip(domains, urls) {
            if known.contains(d.name) {
                printError("dualreplay: domain \"\(d.name)\" is already in version \(state.manifest.version): skipped (--resume)")
                continue
            }
            var plan = ContinualState.CheckpointPlan(url: checkpointURL, every: checkpointEvery,
                                                     shouldStop: { Interrupt.shared.requested }, afterStep: crashHook)
            if let c = pending {
                guard c.domain == d.name else {
                    throw CheckpointError.doesNotMatch(file: checkpointURL.path, reason: "it continues domain \"\(c.domain)\", the next domain to onboard is \"\(d.name)\"")
                }
                plan.resume = c
                pending = nil
            }
            let diff: StateDiff
            do {
                diff = try state.onboard(d, source: u.path, checkpoint: plan)
            } catch RunnerError.interrupted(let name, let step, let total) {
                printError("dualreplay: stopped in domain \"\(name)\" at step \(step)/\(total); checkpoint \(checkpointURL.path)")
                printError("dualreplay: rerun the same command with --resume to continue")
                throw ExitCode(130)
            }
            let version = try state.save(to: dir)
            try? FileManager.default.removeItem(at: checkpointURL)
            printError("dualreplay: saved \(dir.path)/versions/\(String(format: "%06d", version))")
            if json {
                let enc = JSONEncoder()
                enc.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: try enc.encode(diff), as: UTF8.self))
            } else {
                print(Self.render(diff))
            }
            if Interrupt.shared.requested {
                printError("dualreplay: stopped after saving version \(version); rerun with --resume for the remaining domains")
                throw ExitCode(130)
            }
        }
    }

    private func createState() throws -> ContinualState {
        var cfg = ExperimentConfig(name: "state", data: DataConfig(), methods: [MethodConfig(kind: method ?? .dualReplay)])
        if let path = config {
            let file = try ExperimentConfig.load(URL(fileURLWithPath: path))
            var chosen = file.methods[0]
            if let method {
                guard let m = file.methods.first(where: { $0.kind == method }) else {
                    throw ValidationError("\(path): no method of kind \(method.rawValue)")
                }
                chosen = m
            }
            cfg.methods = [chosen]
            cfg.training = file.training
            cfg.seed = file.seed
            cfg.evalSplit = file.evalSplit
            cfg.data.maxEvalPerDomain = file.data.maxEvalPerDomain
        }
        if let seed { cfg.seed = seed }
        let maxLength = (cfg.training ?? TrainingDefaults()).maxLength
        let encoder = try stateOptions.openEncoder(defaultPath: nil, maxLength: maxLength)
        return try ContinualState.create(config: cfg, encoder: encoder, generalTexts: try generalTexts(seed: cfg.seed ?? 0),
                                         modelPath: stateOptions.model ?? "models/all-MiniLM-L6-v2", codeVersion: codeVersion())
    }

    private func generalTexts(seed: UInt64) throws -> [String] {
        if let g = general { return try ExperimentSetup.readGeneralTexts(URL(fileURLWithPath: g)) }
        let def = ExperimentSetup.dataDirectory(DataConfig()).appendingPathComponent("general/general.jsonl")
        if FileManager.default.fileExists(atPath: def.path) { return try ExperimentSetup.readGeneralTexts(def) }
        return SyntheticCorpus.generalText(count: 2000, seed: seed)
    }

    /// The diff as a small Markdown report.
    static func render(_ d: StateDiff) -> String {
        func pts(_ x: Double?) -> String { x.map { String(format: "%.1f", 100 * $0) } ?? "-" }
        func delta(_ a: Double?, _ b: Double?) -> String {
            guard let a, let b else { return "-" }
            return String(format: "%+.1f", 100 * (b - a))
        }
        var s = "## Onboarded \"\(d.domainAdded)\": version \(d.fromVersion.map(String.init) ?? "-") -> \(d.toVersion)\n\n"
        s += "| domain | F1 before | F1 after | change | buffer items | buffer bytes | quota | floor |\n"
        s += "|---|---:|---:|---:|---:|---:|---:|---:|\n"
        for c in d.domains {
            s += "| \(c.domain) | \(pts(c.before)) | \(pts(c.after)) | \(delta(c.before, c.after)) | \(c.bufferItems.map(String.init) ?? "-") | "
            s += "\(c.bufferBytes.map(String.init) ?? "-") | \(c.bufferQuota.map(String.init) ?? "-") | \(c.bufferFloor.map(String.init) ?? "-") |\n"
        }
        s += "\nBWT: \(pts(d.backwardTransferBefore)) -> \(pts(d.backwardTransfer)) (\(delta(d.backwardTransferBefore, d.backwardTransfer)))\n"
        s += "Router accuracy: \(pts(d.routerAccuracyBefore)) -> \(pts(d.routerAccuracy)) (\(delta(d.routerAccuracyBefore, d.routerAccuracy)))\n"
        if let g = d.headTailGap { s += "Head-vs-tail F1 gap: \(pts(g))\n" }
        if let used = d.bufferBytesUsed {
            s += "Buffer: \(used) of \(d.byteBudget) bytes" + (d.generalBufferItems.map { ", \($0) general items" } ?? "") + "\n"
        }
        if d.redLines.isEmpty {
            s += "\nRed lines: none\n"
        } else {
            s += "\nRED LINES:\n" + d.redLines.map { "- \($0)\n" }.joined()
        }
        return s
    }
}
