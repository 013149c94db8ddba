import Foundation
#if canImport(Glibc)
import Glibc
#endif

// MARK: - JSONL reading

struct JSONLRow {
    var line: Int
    var text: String
    var intents: [String]
    var domain: String
    var split: Split
}

enum JSONLReader {
    /// Parses every non-blank line: raw bytes split on "\n" (a trailing "\r" is removed), each line
    /// checked for length, then UTF-8, then JSON and the schema. Throws at the first bad line.
    static func rows(of url: URL, maxLineBytes: Int, maxFileBytes: Int = JSONLReader.maxFileBytes) throws -> (rows: [JSONLRow], lines: Int, blank: Int) {
        let file = url.path
        let bytes = try read(url, maxLineBytes: maxLineBytes, maxFileBytes: maxFileBytes)
        var rows: [JSONLRow] = []
        var lineNumber = 0
        var blank = 0
        var start = 0
        while start < bytes.count {
            var end = start
            while end < bytes.count && bytes[end] != 0x0A { end += 1 }
            lineNumber += 1
            var stop = end
            if stop > start && bytes[stop - 1] == 0x0D { stop -= 1 }
            let line = bytes[start..<stop]
            start = end + 1
            if line.count > maxLineBytes {
                throw DataError.lineTooLong(file: file, line: lineNumber, bytes: line.count, limit: maxLineBytes)
            }
            guard String(validating: line, as: UTF8.self) != nil else {
                throw DataError.invalidUTF8(file: file, line: lineNumber)
            }
            if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) { blank += 1; continue }
            rows.append(try parse(Data(line), file: file, line: lineNumber))
        }
        if rows.isEmpty { throw DataError.emptyFile(file: file) }
        return (rows, lineNumber, blank)
    }

    /// Largest data file read (a regular file's size is checked before reading; a pipe or device
    /// is read until this many bytes).
    static let maxFileBytes = 1 << 30

    /// The bytes of `url`, read with read(2) so pipes (`<(...)`), FIFOs and devices work as well
    /// as regular files. Stops early at a line longer than `maxLineBytes` (so an endless stream
    /// without newlines, such as /dev/zero, fails at once) or more than `maxFileBytes` in total.
    static func read(_ url: URL, maxLineBytes: Int, maxFileBytes: Int) throws -> [UInt8] {
        let file = url.path
        let fd = open(file, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw DataError.unreadable(file: file, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw DataError.unreadable(file: file, reason: String(cString: strerror(errno))) }
        let kind = st.st_mode & S_IFMT
        if kind == S_IFDIR { throw DataError.unreadable(file: file, reason: "it is a directory") }
        if kind == S_IFREG, Int(st.st_size) > maxFileBytes { throw DataError.fileTooLarge(file: file, bytes: Int(st.st_size), limit: maxFileBytes) }
        var bytes: [UInt8] = []
        if kind == S_IFREG { bytes.reserveCapacity(Int(st.st_size)) }
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        var lineStart = 0  // offset of the first byte after the last newline seen
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw DataError.unreadable(file: file, reason: String(cString: strerror(errno)))
            }
            if n == 0 { break }
            let before = bytes.count
            bytes.append(contentsOf: chunk[0..<n])
            if bytes.count > maxFileBytes { throw DataError.fileTooLarge(file: file, bytes: kind == S_IFREG ? bytes.count : -1, limit: maxFileBytes) }
            if let last = bytes[before...].lastIndex(of: 0x0A) { lineStart = last + 1 }
            // (a regular file's lines are checked exactly when parsed)
            if kind != S_IFREG, bytes.count - lineStart > maxLineBytes + 1 {  // + 1: a "\r" before the newline
                let line = bytes[..<lineStart].reduce(1) { $1 == 0x0A ? $0 + 1 : $0 }
                throw DataError.lineTooLong(file: file, line: line, bytes: bytes.count - lineStart, limit: maxLineBytes)
            }
        }
        return bytes
    }

    private static func parse(_ data: Data, file: String, line: Int) throws -> JSONLRow {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
        } catch {
            let reason = (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? "could not parse"
            throw DataError.malformedJSON(file: file, line: line, reason: reason)
        }
        guard let dict = object as? [String: Any] else { throw DataError.notAnObject(file: file, line: line) }
        func string(_ key: String) throws -> String {
            guard let value = dict[key] else { throw DataError.missingField(file: file, line: line, field: key) }
            guard let s = value as? String, !(value is NSNumber) else {
                throw DataError.wrongFieldType(file: file, line: line, field: key, expected: "a string")
            }
            return s
        }
        let text = try string("text")
        let intent = try string("intent")
        let domain = try string("domain")
        if let problem = DisplayText.nameProblem(domain) {
            throw DataError.invalidDomainName(file: file, line: line, name: domain, reason: problem)
        }
        let splitValue = try string("split")
        guard let split = Split(rawValue: splitValue) else {
            throw DataError.unknownSplit(file: file, line: line, value: splitValue)
        }
        var intents = [intent]
        if let value = dict["intents"] {
            guard let list = value as? [Any] else {
                throw DataError.wrongFieldType(file: file, line: line, field: "intents", expected: "an array of strings")
            }
            intents = try list.map { element in
                guard let s = element as? String, !(element is NSNumber) else {
                    throw DataError.wrongFieldType(file: file, line: line, field: "intents", expected: "an array of strings")
                }
                return s
            }
        }
        return JSONLRow(line: line, text: text, intents: intents, domain: domain, split: split)
    }
}
