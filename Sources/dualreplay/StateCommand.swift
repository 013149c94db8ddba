import ArgumentParser
import DualReplay
import Foundation

struct StateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "state",
        abstract: "List the saved versions of a state directory with their domains (read-only).",
        discussion: """
        One line per saved version: its number, `current` for the one predict and onboard use, when it \
        was saved and its domains in training order. `dualreplay rollback --state DIR --to N` makes an \
        earlier one current again.
        """
    )

    @Option(help: "State directory (see docs/STATE.md).")
    var state: String

    @Flag(help: "List the saved versions (the default).")
    var list = false

    func run() throws {
        let versions = try StateDirectory.list(URL(fileURLWithPath: state))
        var text = ""
        for v in versions {
            text += String(format: "%6d", v.version) + (v.isCurrent ? "  current" : "         ")
            if let domains = v.domains {
                text += "  \(v.createdAt ?? "-")  \(domains.count) domain\(domains.count == 1 ? "" : "s"): "
                text += domains.map(DisplayText.escaped).joined(separator: ", ")
            }
            if let p = v.problem { text += "  (unusable: \(p))" }
            text += "\n"
        }
        FileHandle.standardOutput.write(Data(text.utf8))
    }
}

struct RollbackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rollback",
        abstract: "Make an earlier saved version of a state current again.",
        discussion: """
        The version is loaded and verified completely, then the `current` link is switched to it with \
        one rename (atomic). Nothing is deleted: later versions stay listed by `dualreplay state --list` \
        and `rollback --to` returns to them. The next onboarding builds on the version made current \
        here and saves under a new number. Holds the state's lock; refused while an interrupted \
        onboarding (a checkpoint) is pending.
        """
    )

    @Option(help: "State directory (see docs/STATE.md).")
    var state: String

    @Option(name: .customLong("to"), parsing: .unconditional, help: "The saved version to make current (see `dualreplay state --list`).")
    var version: Int

    func validate() throws {
        guard StateDirectory.versionRange.contains(version) else {
            throw ValidationError("--to must be a version number >= 1, got \(version)")
        }
    }

    func run() throws {
        let dir = URL(fileURLWithPath: state)
        let lock = try lockState(dir, verb: "rollback --to \(version)", create: false)
        defer { lock.release() }
        let checkpoint = OnboardingCheckpoint.url(in: dir)
        if FileManager.default.fileExists(atPath: checkpoint.path) {
            throw StateError.rollbackRefused(path: dir.path, reason: "an interrupted onboarding is pending (\(checkpoint.path)); "
                                             + "finish it with `onboard --resume` or delete the checkpoint first")
        }
        let before = try? StateDirectory.currentVersion(dir).lastPathComponent
        try StateDirectory.checkWritable(dir)
        try StateDirectory.makeCurrent(dir, version: version)
        printError("dualreplay: version \(version) of \(dir.path) is current" + (before.flatMap(Int.init).map { " (was \($0); kept)" } ?? ""))
    }
}
