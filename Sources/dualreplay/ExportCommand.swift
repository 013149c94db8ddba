import ArgumentParser
import DualReplay
import Foundation

struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Export adapter, gates, heads and router as one safetensors file plus a JSON config next to it.",
        discussion: "Names, shapes and a PyTorch loading snippet: docs/STATE.md."
    )

    @OptionGroup var stateOptions: StateOptions

    @Option(help: "Output file (.safetensors); the config goes to the same path with extension .json.")
    var out: String

    func validate() throws {
        guard out.hasSuffix(".safetensors") else { throw ValidationError("--out must end in .safetensors") }
    }

    func run() throws {
        let state = try stateOptions.open()
        let url = URL(fileURLWithPath: out)
        let cfg = try state.export(to: url)
        printError("dualreplay: wrote \(url.path) (\(cfg.tensors.count) tensors) and \(url.deletingPathExtension().path).json")
    }
}
