import ArgumentParser
import DualReplay
import Foundation
#if canImport(Glibc)
import Glibc
#endif

struct PredictCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "predict",
        abstract: "Routed intent prediction for utterances read from stdin, as JSON lines on stdout: one answer per input line, in order.",
        discussion: """
        Input: one utterance per line. A line is read as JSON when, after leading white space, it \
        starts with "{" and parses as a JSON object: then its string field "text" is the utterance \
        (an object without one gets an error answer). Any other line, including one that starts with \
        "{" but is not valid JSON, is the utterance itself. Output: exactly one JSON object per input \
        line, in order, each with "line" (1-based): {"line","text","domain","intent","confidence", \
        "router":[{"domain","probability"}] (top 3),"gate"}, where confidence is the softmax \
        probability of the intent within the routed domain; or {"line","error"} for a line that is \
        blank, not UTF-8, longer than 1 MiB, or a JSON object without a string "text". Answers are \
        written and flushed per batch (up to --batch lines, or fewer when the input pauses), so \
        predict can serve a pipe interactively.
        """
    )

    @OptionGroup var stateOptions: StateOptions

    @Option(parsing: .unconditional, help: "Most lines predicted in one batch.")
    var batch: Int = 64

    func validate() throws {
        guard batch >= 1 else { throw ValidationError("--batch must be >= 1, got \(batch)") }
    }

    func run() throws {
        let state = try stateOptions.open()
        let reader = LineReader(fd: STDIN_FILENO, maxLineBytes: 1 << 20)
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var lineNumber = 0
        while let lines = try reader.nextBatch(max: batch) {
            var answers = [Data](repeating: Data(), count: lines.count)
            var texts: [String] = [], slots: [Int] = []
            for (i, raw) in lines.enumerated() {
                switch Self.interpret(raw) {
                case .text(let t): texts.append(t); slots.append(i)
                case .error(let message): answers[i] = try enc.encode(LineError(line: lineNumber + i + 1, error: message))
                }
            }
            for (slot, p) in zip(slots, texts.isEmpty ? [] : state.predict(texts)) {
                let line = lineNumber + slot + 1
                do { answers[slot] = try enc.encode(Answer(line: line, prediction: p)) } catch {
                    answers[slot] = try enc.encode(LineError(line: line, error: "the prediction is not finite (the state's parameters may be damaged)"))
                }
            }
            var out = Data()
            for a in answers { out.append(a); out.append(0x0A) }
            try writeAll(STDOUT_FILENO, out)
            lineNumber += lines.count
        }
    }

    enum Reading: Equatable { case text(String), error(String) }

    /// How one input line is read (the protocol of the discussion above).
    static func interpret(_ raw: LineReader.Line) -> Reading {
        guard case .bytes(let bytes) = raw else { return .error("line longer than 1048576 bytes") }
        guard let line = String(validating: bytes, as: UTF8.self) else { return .error("not valid UTF-8") }
        let trimmed = line.trimmingCharacters(in: .whitespaces)
        if trimmed.isEmpty { return .error("empty line") }
        if trimmed.hasPrefix("{"), let obj = try? JSONSerialization.jsonObject(with: Data(trimmed.utf8)), let dict = obj as? [String: Any] {
            guard let value = dict["text"], let text = value as? String, !(value is NSNumber) else {
                return .error("a JSON object needs a string field \"text\"")
            }
            return text.trimmingCharacters(in: .whitespaces).isEmpty ? .error("empty text") : .text(text)
        }
        return .text(line)
    }

    struct LineError: Encodable {
        var line: Int
        var error: String
    }

    /// A prediction with its input line number, as one flat object.
    struct Answer: Encodable {
        var line: Int
        var prediction: Prediction
        enum Keys: String, CodingKey { case line }
        func encode(to encoder: Encoder) throws {
            try prediction.encode(to: encoder)
            var c = encoder.container(keyedBy: Keys.self)
            try c.encode(line, forKey: .line)
        }
    }
}

/// Lines of a file descriptor, handed out in batches as they arrive: a batch ends at `max` lines,
/// at the end of input, or when the input pauses (nothing more within `pause`), so an interactive
/// writer gets answers without closing its end.
final class LineReader {
    enum Line: Equatable {
        /// The line's bytes without "\n" (and without a "\r" before it).
        case bytes([UInt8])
        /// A line longer than the limit (its bytes are dropped).
        case tooLong
    }

    let fd: Int32
    let maxLineBytes: Int
    let pauseMilliseconds: Int32
    private var buffer: [UInt8] = []
    /// What one read(2) fills, reused for every read.
    private var chunk = [UInt8](repeating: 0, count: 1 << 16)
    private var start = 0
    private var discarding = false
    private var atEnd = false

    init(fd: Int32, maxLineBytes: Int, pauseMilliseconds: Int32 = 20) {
        self.fd = fd
        self.maxLineBytes = maxLineBytes
        self.pauseMilliseconds = pauseMilliseconds
    }

    /// The next batch (1...max lines), or nil at the end of input.
    func nextBatch(max: Int) throws -> [Line]? {
        var lines: [Line] = []
        while true {
            while lines.count < max, let line = takeLine() { lines.append(line) }
            if lines.count == max { return lines }
            if atEnd {
                if start < buffer.count || discarding {  // a last line without "\n"
                    lines.append(discarding ? .tooLong : .bytes(trimCR(Array(buffer[start...]))))
                    buffer.removeAll()
                    start = 0
                    discarding = false
                }
                return lines.isEmpty ? nil : lines
            }
            if !lines.isEmpty && !inputReady() { return lines }
            try fill()
        }
    }

    private func trimCR(_ b: [UInt8]) -> [UInt8] { b.last == 0x0D ? Array(b.dropLast()) : b }

    private func takeLine() -> Line? {
        guard let nl = buffer[start...].firstIndex(of: 0x0A) else {
            // an overlong line: drop what is buffered, remember to answer it when its end arrives
            if buffer.count - start > maxLineBytes + 1 {
                discarding = true
                buffer.removeAll()
                start = 0
            }
            return nil
        }
        let line: Line = discarding || nl - start > maxLineBytes + 1 ? .tooLong : .bytes(trimCR(Array(buffer[start..<nl])))
        discarding = false
        start = nl + 1
        if start > 1 << 16 {
            buffer.removeFirst(start)
            start = 0
        }
        return line
    }

    private func inputReady() -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while true {
            let r = poll(&p, 1, pauseMilliseconds)
            if r < 0 && errno == EINTR { continue }
            return r != 0
        }
    }

    private func fill() throws {
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw InputError("stdin: \(String(cString: strerror(errno)))")
            }
            if n == 0 { atEnd = true } else { buffer.append(contentsOf: chunk[0..<n]) }
            return
        }
    }
}

/// Writes all of `data` to `fd` (retrying short writes and EINTR).
func writeAll(_ fd: Int32, _ data: Data) throws {
    try data.withUnsafeBytes { (b: UnsafeRawBufferPointer) in
        var offset = 0
        while offset < b.count {
            let n = write(fd, b.baseAddress! + offset, b.count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                throw InputError("stdout: \(String(cString: strerror(errno)))")
            }
            offset += n
        }
    }
}

/// A problem with the input data (not with the command line): reported without the usage text.
struct InputError: LocalizedError {
    let message: String
    init(_ message: String) { self.message = message }
    var errorDescription: String? { message }
}
