import ArgumentParser
import DualReplay
import Foundation

@main
struct DualReplayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dualreplay",
        abstract: "Continual fine-tuning of a frozen BERT encoder with a domain-gated adapter and dual-stream replay.",
        subcommands: [RunCommand.self, DemoCommand.self, EmbedCommand.self, OnboardCommand.self, PredictCommand.self, ExportCommand.self,
                      StateCommand.self, RollbackCommand.self, ReportCommand.self, RemediateCommand.self, MPICheckCommand.self]
    )

    /// ArgumentParser's main, plus the MPI job's end: MPI_Finalize after a run every rank
    /// finished alike, one report of a failure every rank saw, an abort of the whole job for a
    /// failure of one rank (`JobEnd`).
    static func main() {
        let command: ParsableCommand
        do {
            command = try parseAsRoot()
            try JobEnd.checkVerb(command)
        } catch {
            JobEnd.exit(with: error)
        }
        do {
            var c = command
            try c.run()
        } catch {
            JobEnd.exit(with: error)
        }
        Cluster.finish()
    }
}

/// Options every verb that opens a model shares.
struct ModelOptions: ParsableArguments {
    @Option(help: "Model directory with config.json, model.safetensors and vocab.txt.")
    var model: String = "models/all-MiniLM-L6-v2"

    @Option(help: "Compute threads (BLAS).")
    var threads: Int = 1

    @Option(help: "Maximum tokens per utterance, [CLS] and [SEP] included.")
    var maxLength: Int = 256

    func validate() throws {
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        guard maxLength >= 2 else { throw ValidationError("--max-length must be at least 2") }
    }

    func openEncoder() throws -> SentenceEncoder {
        setComputeThreads(threads)
        return try SentenceEncoder(modelDirectory: URL(fileURLWithPath: model), maxLength: maxLength)
    }
}

/// Writes to standard error (diagnostics, progress), never mixed into standard output.
func printError(_ s: String) {
    FileHandle.standardError.write((s + "\n").data(using: .utf8)!)
}

/// Reads standard input as lines of UTF-8; a line that is not UTF-8 is an error naming it.
func readStdinLines() throws -> [String] {
    let data = FileHandle.standardInput.readDataToEndOfFile()
    var lines: [String] = []
    var lineNo = 0
    for raw in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
        lineNo += 1
        var bytes = Array(raw)
        if bytes.last == UInt8(ascii: "\r") { bytes.removeLast() }
        guard let s = String(validating: bytes, as: UTF8.self) else {
            throw ValidationError("stdin line \(lineNo): not valid UTF-8")
        }
        lines.append(s)
    }
    if lines.last == "" { lines.removeLast() }
    return lines
}
