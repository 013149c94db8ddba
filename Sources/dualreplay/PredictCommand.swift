import ArgumentParser
import DualReplay
import Foundation

struct PredictCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "predict",
        abstract: "Routed intent prediction for utterances read from stdin, as JSON lines on stdout.",
        discussion: """
        Input: one utterance per line, either JSONL ({"text": ...}) or plain text (a line is read as \
        JSON when it starts with "{"). Output per line: {"text","domain","intent","confidence", \
        "router":[{"domain","probability"}] (top 3),"gate"}; confidence is the softmax probability of \
        the intent within the routed domain. A line that is not UTF-8, or malformed JSON, is an error \
        naming the line.
        """
    )

    @OptionGroup var stateOptions: StateOptions

    func run() throws {
        let lines: [String]
        do { lines = try readStdinLines() } catch let e as ValidationError { throw InputError(e.message) }
        var texts: [String] = []
        for (i, line) in lines.enumerated() {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty { continue }
            if trimmed.hasPrefix("{") {
                let obj: Any
                do { obj = try JSONSerialization.jsonObject(with: Data(trimmed.utf8)) } catch {
                    throw InputError("stdin line \(i + 1): malformed JSON")
                }
                guard let dict = obj as? [String: Any], let text = dict["text"] as? String else {
                    throw InputError("stdin line \(i + 1): expected an object with a string field \"text\"")
                }
                texts.append(text)
            } else {
                texts.append(line)
            }
        }
        let state = try stateOptions.open()
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var out = Data()
        for p in state.predict(texts) {
            out.append(try enc.encode(p))
            out.append(0x0A)
        }
        FileHandle.standardOutput.write(out)
    }
}

/// A problem with the input data (not with the command line): reported without the usage text.
struct InputError: LocalizedError {
    let message: String
    init(_ message: String) { self.message = message }
    var errorDescription: String? { message }
}
