import ArgumentParser
import DualReplay
import Foundation

struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Export adapter, gates, heads and router as one safetensors file plus a JSON config next to it.",
        discussion: "Names, shapes and a PyTorch loading snippet: docs/STATE.md. --out must lie outside the state directory (symlinks and .. resolved)."
    )

    @OptionGroup var stateOptions: StateOptions

    @Option(help: "Output file (.safetensors, outside the state directory); the config goes to the same path with extension .json.")
    var out: String

    func validate() throws {
        guard out.hasSuffix(".safetensors") else { throw ValidationError("--out must end in .safetensors") }
    }

    func run() throws {
        let url = URL(fileURLWithPath: out)
        // a file written inside the state (e.g. over current/params.safetensors) would replace live state
        for target in [url, url.deletingPathExtension().appendingPathExtension("json")]
        where StateDirectory.contains(stateOptions.directory, target) {
            throw StateError.outputInsideState(output: target.path, state: stateOptions.directory.path)
        }
        let state = try stateOptions.open()
        let cfg = try state.export(to: url)
        printError("dualreplay: wrote \(url.path) (\(cfg.tensors.count) tensors) and \(url.deletingPathExtension().path).json")
    }
}
