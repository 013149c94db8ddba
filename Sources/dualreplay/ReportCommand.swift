import ArgumentParser
import DualReplay
import Foundation

struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Write a self-contained HTML report of an experiment's results.json or of a state directory.",
        discussion: """
        PATH is a results.json written by `dualreplay run` (or the directory holding it), or a state \
        directory written by `dualreplay onboard`. The page is one file with inline SVG and CSS: no \
        script, font or image is loaded from anywhere, tooltips are SVG titles, and the same input \
        gives the same bytes. `run` and `onboard` write it next to their results too (report.html).
        """
    )

    @Argument(help: "results.json of `run` (or its directory), or a state directory of `onboard`.")
    var path: String

    @Option(help: "Where to write the page (default: report.html next to the results, or in the state directory).")
    var out: String?

    func run() throws {
        let input = URL(fileURLWithPath: path)
        let html = try HTMLReport.page(at: input)
        var isDir: ObjCBool = false
        _ = FileManager.default.fileExists(atPath: input.path, isDirectory: &isDir)
        let target = out.map { URL(fileURLWithPath: $0) }
            ?? (isDir.boolValue ? input : input.deletingLastPathComponent()).appendingPathComponent("report.html")
        try FileManager.default.createDirectory(at: target.deletingLastPathComponent(), withIntermediateDirectories: true)
        try AtomicFile.write(Data(html.utf8), to: target)
        printError("dualreplay: wrote \(target.path)")
    }
}
