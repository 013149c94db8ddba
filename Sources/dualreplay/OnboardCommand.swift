import ArgumentParser
import DualReplay
import Foundation

/// Options of the verbs that open a production state.
struct StateOptions: ParsableArguments {
    static let defaultModel = "models/all-MiniLM-L6-v2"

    @Option(help: "State directory (see docs/STATE.md).")
    var state: String

    @Option(help: ArgumentHelp("Model directory with config.json, model.safetensors and vocab.txt (default: the absolute path recorded when the state was created if it is still there, else $DR_MODEL, else models/all-MiniLM-L6-v2). Its fingerprint must match the state's."))
    var model: String?

    @Option(parsing: .unconditional, help: "Compute threads (BLAS).")
    var threads: Int = 1

    func validate() throws {
        guard threads >= 1 else { throw ValidationError("--threads must be >= 1, got \(threads)") }
    }

    var directory: URL { URL(fileURLWithPath: state) }

    /// An absolute, standardized path (what a new state records, so it opens from any directory).
    static func absolute(_ path: String) -> String { URL(fileURLWithPath: path).standardizedFileURL.path }

    /// The model to open: --model; else the state's recorded path while it is there; else
    /// $DR_MODEL (a moved model); else the default (a new state). nil: the recorded model is gone.
    func modelPath(recorded: String?) -> String? {
        if let model { return model }
        if let recorded, FileManager.default.fileExists(atPath: URL(fileURLWithPath: recorded).appendingPathComponent("config.json").path) {
            return recorded
        }
        if let env = ProcessInfo.processInfo.environment["DR_MODEL"], !env.isEmpty { return env }
        return recorded == nil ? Self.defaultModel : nil
    }

    func openEncoder(recorded: String?, maxLength: Int, statePath: String) throws -> (encoder: SentenceEncoder, path: String) {
        setComputeThreads(threads)
        guard let path = modelPath(recorded: recorded) else { throw StateError.modelNotFound(path: statePath, recorded: recorded ?? "") }
        return (try SentenceEncoder(modelDirectory: URL(fileURLWithPath: path), maxLength: maxLength), path)
    }

    /// Loads and verifies the current version, then restores it on the base model.
    func open() throws -> ContinualState {
        let loaded = try StateDirectory.load(directory)
        let maxLength = (loaded.manifest.config.training ?? TrainingDefaults()).maxLength
        let recorded = loaded.manifest.baseModel.path
        let (encoder, path) = try openEncoder(recorded: recorded, maxLength: maxLength, statePath: directory.path)
        do {
            return try ContinualState.restore(loaded, encoder: encoder)
        } catch StateError.baseModelMismatch(let file, let saved, let found) {
            throw StateError.modelMismatch(file: file, recordedPath: recorded ?? "(not recorded)", recordedFingerprint: saved,
                                           loadedPath: Self.absolute(path), loadedFingerprint: found)
        }
    }
}

/// Takes the writer's lock of a state directory for the rest of the run, reports a lock taken
/// over from a dead run and removes what that run left behind.
func lockState(_ dir: URL, verb: String, create: Bool) throws -> StateLock {
    let lock = try StateLock.acquire(dir, verb: verb, create: create)
    if let p = lock.previous {
        printError("dualreplay: took over the state lock of pid \(p.pid) on host \(DisplayText.escaped(p.host)) "
                   + "(`\(DisplayText.escaped(p.verb))` since \(DisplayText.escaped(p.started))): that run ended without releasing it")
    }
    for path in StateDirectory.removeStaleTemporaries(dir) {
        printError("dualreplay: removed \(path), a temporary file of a run that was killed")
    }
    return lock
}

extension MethodKind: ExpressibleByArgument {}

struct OnboardCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "onboard",
        abstract: "Train one new domain into a production state, re-evaluate every known domain and save a new version.",
        discussion: """
        Each domain file is JSONL ({"text","intent","domain","split"}) holding exactly one domain that \
        the state does not know yet, with train, val and test rows (its name printable: not empty, no \
        control, line-break or bidi characters); several --domain options onboard \
        them in order, one saved version each. The val and test rows are kept in the state (the frozen \
        evaluation data). Prints the change against the previous version and flags red lines: BWT \
        below -5 points, a head-vs-tail F1 gap above 5 points, a domain below its buffer floor. With \
        --init a new state is created first (DIR must not hold one).

        Crash safety: a checkpoint (DIR/checkpoint.safetensors) is written every --checkpoint-every \
        steps and on Ctrl-C. After a crash, kill or Ctrl-C, rerun the same command with --resume: \
        domains already saved are skipped and the interrupted one continues from its checkpoint, \
        ending bit-identical to an uninterrupted run at the same --threads.

        One writer at a time: a run holds DIR/lock (flock) from start to end; a second onboard or \
        rollback is refused at once, naming the holder's pid and host. The lock of a run that was \
        killed is taken over by the next run, which also removes the temporary files it left. DIR's \
        writability and every domain file are checked before the model is loaded. A new state records \
        the model's absolute path; --model or $DR_MODEL find a model that has moved.
        """
    )

    @OptionGroup var stateOptions: StateOptions

    @Option(help: "JSONL file with a new domain (repeatable: onboarded in order).")
    var domain: [String]

    @Option(parsing: .unconditional, help: "Write a checkpoint every N training steps (0: only on Ctrl-C).")
    var checkpointEvery: Int = 50

    @Flag(help: "Continue an interrupted run of the same command: skip domains already saved, resume the checkpoint.")
    var resume = false

    @Flag(help: "Create a new state in --state (it must not exist yet).")
    var `init` = false

    @Option(help: "Method of a new state (--init; not joint or single, which need every domain's training data at once).")
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
        if checkpointEvery < 0 { throw ValidationError("--checkpoint-every must be >= 0 (0: only on Ctrl-C), got \(checkpointEvery)") }
        if let method { try Self.checkOnboardable(method) }
    }

    /// joint and single are reference runs of an experiment: they need every domain's training
    /// rows (joint: all at once; single: each from scratch), which a state does not keep.
    static func checkOnboardable(_ method: MethodKind) throws {
        guard method == .joint || method == .single else { return }
        let why = method == .joint ? "joint trains on the training rows of every domain at once"
                                   : "single trains each domain alone, from scratch"
        throw ValidationError("method \(method.rawValue) cannot onboard: \(why), and a state keeps no training rows of earlier domains "
                              + "(only their val/test rows and the replay buffer); it is an experiment reference (`dualreplay run`). "
                              + "Use a continual method: dual-replay, lora-replay, der, lora, olora or full-ft")
    }

    /// One domain file, checked; a label shared with another domain of the same file means the
    /// file holds several domains, which onboard cannot take.
    static func loadDomainFile(_ url: URL) throws -> DomainData {
        do {
            return try ContinualState.loadDomain(url)
        } catch let DataError.labelInTwoDomains(file, label, d1, l1, d2, l2) {
            func q(_ s: String) -> String { "\"\(DisplayText.escaped(s))\"" }
            throw InputError("\(file):\(l2): intent \(q(label)) appears under domain \(q(d1)) (line \(l1)) and domain \(q(d2)) (line \(l2)), "
                             + "but an onboard file holds exactly one domain: split the file into one file per domain and pass "
                             + "each with its own --domain (allowSharedLabels is an experiment-config setting; onboard does not need it)")
        }
    }

    /// Under MPI every rank trains the same model on its share of each batch (data-parallel,
    /// `training.gradientChunk`); rank 0 alone holds the lock, writes checkpoints and versions
    /// and prints; the others read the same files (a directory every rank sees).
    func run() throws {
        let job = try Cluster.collective()
        let lead = job.rank == 0
        Parallelism.collective = job
        let dir = stateOptions.directory
        let checkpointURL = OnboardingCheckpoint.url(in: dir)
        // one writer at a time, for the whole run: taken before anything is read
        let lock = try job.agree { lead ? try lockState(dir, verb: "onboard" + (`init` ? " --init" : "") + (resume ? " --resume" : ""), create: `init`) : nil }
        defer { lock?.release() }
        try job.agree { if lead { try StateDirectory.checkWritable(dir) } }
        // every file is read and checked before the model is loaded and anything trains
        let urls = domain.map { URL(fileURLWithPath: $0) }
        let domains = try job.agree {
            let domains = try urls.map { try Self.loadDomainFile($0) }
            var names = Set<String>()
            for (d, u) in zip(domains, urls) where !names.insert(d.name).inserted {
                throw StateError.invalidDomain(file: u.path, reason: "domain \"\(DisplayText.escaped(d.name))\" is given twice")
            }
            return domains
        }
        let state: ContinualState = try job.agree {
            if `init` && !(resume && StateDirectory.exists(dir)) {
                guard !StateDirectory.exists(dir) else { throw StateError.alreadyExists(path: dir.path) }
                return try createState()
            }
            return try stateOptions.open()
        }
        if job.size > 1 {
            try checkDataParallel(chunk: (state.manifest.config.training ?? TrainingDefaults()).gradientChunk,
                                  batchSizes: [state.settings.batchSize], ranks: job.size)
        }
        let known = Set(state.manifest.domains.map(\.name))
        if !resume, let (d, u) = zip(domains, urls).first(where: { known.contains($0.0.name) }) {
            throw StateError.domainExists(name: d.name, file: u.path)
        }
        let pendingFound: OnboardingCheckpoint? = try job.agree {
            guard FileManager.default.fileExists(atPath: checkpointURL.path) else { return nil }
            let c = try OnboardingCheckpoint.read(checkpointURL)
            if c.baseVersion < state.manifest.version && known.contains(c.domain) {
                return nil  // killed after its version was saved, before the checkpoint was removed: stale
            } else if !resume {
                throw CheckpointError.pending(file: checkpointURL.path, domain: c.domain, step: c.phase.progress.step, total: c.phase.progress.total)
            }
            return c
        }
        var pending = pendingFound
        if lead, pending == nil, FileManager.default.fileExists(atPath: checkpointURL.path) { try? FileManager.default.removeItem(at: checkpointURL) }
        Interrupt.shared.install()
        let crashHook = CrashInjection.install(ProcessInfo.processInfo.environment[CrashInjection.environmentVariable])
        if lead { state.progress = { printError($0) } }
        for (d, u) in zip(domains, urls) {
            if known.contains(d.name) {
                if lead { printError("dualreplay: domain \"\(DisplayText.escaped(d.name))\" is already in version \(state.manifest.version): skipped (--resume)") }
                continue
            }
            var plan = ContinualState.CheckpointPlan(url: checkpointURL, every: checkpointEvery, shouldStop: agreedStop(job), afterStep: crashHook)
            plan.writes = lead
            if let c = pending {
                guard c.domain == d.name else {
                    throw CheckpointError.doesNotMatch(file: checkpointURL.path, reason: "it continues domain \"\(DisplayText.escaped(c.domain))\", "
                                                       + "the next domain to onboard is \"\(DisplayText.escaped(d.name))\"")
                }
                plan.resume = c
                pending = nil
            }
            var diff: StateDiff
            do {
                diff = try state.onboard(d, source: u.path, checkpoint: plan)
            } catch RunnerError.interrupted(let name, let step, let total) {
                if lead {
                    printError("dualreplay: stopped in domain \"\(DisplayText.escaped(name))\" at step \(step)/\(total); checkpoint \(checkpointURL.path)")
                    printError("dualreplay: rerun the same command with --resume to continue")
                }
                throw ExitCode(130)
            }
            let saved = try job.agree { lead ? try state.save(to: dir) : 0 }
            let version = Int(try job.allGather(UInt64(saved))[0])
            if !lead { state.markSaved(as: version) }
            diff.toVersion = version  // above fromVersion + 1 after a rollback
            guard lead else { continue }
            try? FileManager.default.removeItem(at: checkpointURL)
            printError("dualreplay: saved \(dir.path)/versions/\(String(format: "%06d", version))")
            if json {
                let enc = JSONEncoder()
                enc.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: try enc.encode(diff), as: UTF8.self))
            } else {
                print(Self.render(diff))
            }
            writeReport(dir)
            if Interrupt.shared.requested && job.size == 1 {
                printError("dualreplay: stopped after saving version \(version); rerun with --resume for the remaining domains")
                throw ExitCode(130)
            }
        }
        try reportInferenceShares(job)
    }

    /// DIR/report.html of the version just saved (`dualreplay report DIR`). The version is saved
    /// already: a report that cannot be written is a warning, not a failed onboarding.
    private func writeReport(_ dir: URL) {
        let url = dir.appendingPathComponent("report.html")
        do {
            try AtomicFile.write(Data(HTMLReport.page(state: try StateDirectory.load(dir).snapshot).utf8), to: url)
            printError("dualreplay: wrote \(url.path)")
        } catch {
            printError("dualreplay: warning: the version is saved but \(url.path) was not written: \(error.localizedDescription)")
        }
    }

    private func createState() throws -> ContinualState {
        var cfg = ExperimentConfig(name: "state", data: DataConfig(), methods: [MethodConfig(kind: method ?? .dualReplay)])
        if let path = config {
            let file = try ExperimentConfig.load(URL(fileURLWithPath: path))
            guard var chosen = file.methods.first else {
                throw ValidationError("\(path): `methods` is empty: onboarding follows the config's first method")
            }
            if let method {
                guard let m = file.methods.first(where: { $0.kind == method }) else {
                    throw ValidationError("\(path): no method of kind \(method.rawValue)")
                }
                chosen = m
            }
            try Self.checkOnboardable(chosen.kind)
            cfg.methods = [chosen]
            cfg.training = file.training
            cfg.seed = file.seed
            cfg.evalSplit = file.evalSplit
            cfg.data.maxEvalPerDomain = file.data.maxEvalPerDomain
        }
        if let seed { cfg.seed = seed }
        let maxLength = (cfg.training ?? TrainingDefaults()).maxLength
        let (encoder, path) = try stateOptions.openEncoder(recorded: nil, maxLength: maxLength, statePath: stateOptions.directory.path)
        // absolute: the state opens from any working directory
        return try ContinualState.create(config: cfg, encoder: encoder, generalTexts: try generalTexts(seed: cfg.seed ?? 0),
                                         modelPath: StateOptions.absolute(path), codeVersion: codeVersion())
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
        var s = "## Onboarded \"\(DisplayText.escaped(d.domainAdded))\": version \(d.fromVersion.map(String.init) ?? "-") -> \(d.toVersion)\n\n"
        s += "| domain | F1 before | F1 after | change | buffer items | buffer bytes | quota | floor |\n"
        s += "|---|---:|---:|---:|---:|---:|---:|---:|\n"
        for c in d.domains {
            s += "| \(DisplayText.escaped(c.domain).replacingOccurrences(of: "|", with: "\\|")) | \(pts(c.before)) | \(pts(c.after)) | \(delta(c.before, c.after)) | \(c.bufferItems.map(String.init) ?? "-") | "
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
            s += "\nRED LINES:\n" + d.redLines.map { "- \(DisplayText.escaped($0))\n" }.joined()
        }
        return s
    }
}
