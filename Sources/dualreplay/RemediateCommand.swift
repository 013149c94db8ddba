import ArgumentParser
import DualReplay
import Foundation

struct RemediateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remediate",
        abstract: "Refit the gate of every known domain whose forgetting is alignment drift (dry run unless --apply).",
        discussion: """
        Each known domain with two or more intents is checked on its validation rows: its head F1 now \
        against its best so far, and a linear probe fitted now on the pooled features of its buffered \
        examples. A domain whose head dropped at least 2 points while the probe dropped less than half \
        as much is alignment drift (spurious forgetting, docs/METRICS.md): its gate row (every adapter \
        layer) and head are retrained from a fresh start on its buffered examples, with the encoder, the \
        shared adapter, the router and every other domain frozen, and the result is kept only if its \
        validation F1 improves.

        Without --apply nothing is written (no lock is taken): it prints what it would change and why. \
        With --apply it holds the state's lock and, when a refit was kept, saves a new version (one \
        atomic switch of `current`; an interrupted run leaves the current version as it was, and \
        running the same command again redoes it bit for bit) and prints the change as onboard does. \
        Refused with --apply while an interrupted onboarding is pending.
        """
    )

    @OptionGroup var stateOptions: StateOptions

    @Flag(help: "Save the kept refits as a new version (default: a dry run that writes nothing).")
    var apply = false

    @Option(parsing: .unconditional, help: "Adam steps of each refit (default: the method's heads.driftRefitSteps, else 100).")
    var steps: Int?

    @Flag(help: "Print the report as JSON instead of a table.")
    var json = false

    func validate() throws {
        if let steps, steps < 1 { throw ValidationError("--steps must be >= 1, got \(steps)") }
    }

    func run() throws {
        let dir = stateOptions.directory
        var lock: StateLock? = nil
        if apply {
            lock = try lockState(dir, verb: "remediate --apply", create: false)
            let checkpoint = OnboardingCheckpoint.url(in: dir)
            if FileManager.default.fileExists(atPath: checkpoint.path) {
                throw StateError.rollbackRefused(path: dir.path, reason: "an interrupted onboarding is pending (\(checkpoint.path)); "
                                                 + "finish it with `onboard --resume` or delete the checkpoint before remediating")
            }
            try StateDirectory.checkWritable(dir)
        }
        defer { lock?.release() }
        let state = try stateOptions.open()
        state.progress = { printError($0) }
        let report = try state.remediate(steps: steps)
        var saved: Int? = nil
        if apply && !report.changed.isEmpty {
            saved = try state.save(to: dir)
            printError("dualreplay: saved \(dir.path)/versions/\(String(format: "%06d", saved!))")
        }
        if json {
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try enc.encode(report), as: UTF8.self))
        } else {
            print(Self.render(report, applied: apply, savedVersion: saved))
        }
    }

    static func render(_ r: RemediationReport, applied: Bool, savedVersion: Int?) -> String {
        func pts(_ x: Double) -> String { x.isFinite ? String(format: "%.1f", 100 * x) : "-" }
        func cell(_ s: String) -> String { DisplayText.escaped(s).replacingOccurrences(of: "|", with: "\\|") }
        let title = savedVersion.map { "version \(r.version) -> \($0)" }
            ?? (applied ? "version \(r.version), nothing to change" : "version \(r.version), dry run (nothing written)")
        var s = "## Remediate alignment drift: \(title)\n\n"
        s += "| domain | intents | head val F1 best | now | probe val F1 now | kind | action | val F1 before | val F1 candidate | routed F1 before | after |\n"
        s += "|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|\n"
        for e in r.entries {
            let d = e.diagnosis
            let action: String
            if let f = e.refit {
                action = f.kept ? (applied ? "gate refitted" : "would refit the gate") : "refit rejected (val F1 not higher)"
            } else {
                action = d == nil ? "none (one intent)" : "none"
            }
            s += "| \(cell(e.domain)) | \(e.intents) | \(d.map { pts($0.headF1AtLearning) } ?? "-") | \(d.map { pts($0.headF1Now) } ?? "-") | "
            s += "\(d.map { pts($0.probeF1Now) } ?? "-") | \(d?.kind.rawValue ?? "-") | \(action) | "
            s += "\(e.refit.map { pts($0.validationF1Before) } ?? "-") | \(e.refit.map { pts($0.validationF1Candidate) } ?? "-") | "
            s += "\(pts(e.routedF1Before)) | \(pts(e.routedF1After)) |\n"
        }
        let changed = r.changed
        s += "\n"
        if changed.isEmpty {
            s += "No domain is alignment drift with a better refit: nothing to change.\n"
        } else if savedVersion == nil {
            s += "Would change the gate row and head of: \(changed.map(DisplayText.escaped).joined(separator: ", ")) (\(r.steps) steps each). "
            s += "Rerun with --apply to save them as a new version.\n"
        } else {
            s += "Changed the gate row and head of: \(changed.map(DisplayText.escaped).joined(separator: ", ")) (\(r.steps) steps each).\n"
        }
        s += "Alignment drift: head drop >= 2 points and the probe's drop (against the head's best) under half of it.\n"
        return s
    }
}
