import ArgumentParser
import DualReplay
import Foundation

struct EmbedCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "embed",
        abstract: "Embed utterances read from stdin (one per line) as JSON lines on stdout.",
        discussion: """
        Each output line is {"text": ..., "input_ids": [...], "embedding": [...]}: token ids with \
        [CLS]/[SEP], and the sentence embedding (mean pooling over real tokens, L2-normalised).
        """
    )

    @OptionGroup var modelOptions: ModelOptions

    @Option(help: "Utterances embedded per chunk.")
    var chunk: Int = 256

    func run() throws {
        let encoder = try modelOptions.openEncoder()
        let lines = try readStdinLines()
        let out = FileHandle.standardOutput
        let textEncoder = JSONEncoder()
        var start = 0
        while start < lines.count {
            let end = min(lines.count, start + max(1, chunk))
            let texts = Array(lines[start..<end])
            let ids = encoder.encode(texts)
            let embeddings = encoder.embed(ids: ids)
            var chunkText = ""
            for i in texts.indices {
                let textJSON = String(decoding: try textEncoder.encode(texts[i]), as: UTF8.self)
                chunkText += "{\"text\":\(textJSON),\"input_ids\":[\(ids[i].map(String.init).joined(separator: ","))],"
                chunkText += "\"embedding\":[\(embeddings[i].map { "\($0)" }.joined(separator: ","))]}\n"
            }
            out.write(chunkText.data(using: .utf8)!)
            start = end
        }
    }
}
