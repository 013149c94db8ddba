import Foundation

// MARK: - Strict JSON

/// A JSON value, parsed strictly by a small hand-written parser: integers stay integers (no Bool or
/// Double coercion), duplicate keys and nesting deeper than `maxDepth` are errors, and every error
/// gives its byte offset. Headers are untrusted input (Foundation's decoder recurses without limit,
/// reports no position, and on Linux cannot tell 2.5 from invalid JSON). Also used by `BertConfig`.
enum StrictJSON: Decodable, Equatable {
    case null
    case bool(Bool)
    case integer(Int)
    case number(Double)   // has a fraction or exponent, or does not fit in Int
    case string(String)
    case array([StrictJSON])
    case object([String: StrictJSON])

    static let maxDepth = 64

    struct ParseError: Error, CustomStringConvertible {
        let offset: Int
        let reason: String
        var description: String { "\(reason) at byte \(offset)" }
    }

    static func parse(_ data: Data) throws -> StrictJSON {
        try data.withUnsafeBytes { try parse($0) }
    }

    static func parse(_ bytes: UnsafeRawBufferPointer) throws -> StrictJSON {
        var parser = Parser(bytes: bytes)
        parser.skipWhitespace()
        let value = try parser.value(depth: 0)
        parser.skipWhitespace()
        guard parser.position == bytes.count else { throw parser.error("unexpected content after the JSON value") }
        return value
    }

    /// For `Codable` callers (e.g. `BertConfig` decoded from another document).
    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let v = try? c.decode(Bool.self) { self = .bool(v) }
        else if let v = try? c.decode(Int.self) { self = .integer(v) }
        else if let v = try? c.decode(Double.self) { self = .number(v) }
        else if let v = try? c.decode(String.self) { self = .string(v) }
        else if let v = try? c.decode([StrictJSON].self) { self = .array(v) }
        else { self = .object(try c.decode([String: StrictJSON].self)) }
    }

    private struct Parser {
        let bytes: UnsafeRawBufferPointer
        var position = 0

        init(bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

        var current: UInt8? { position < bytes.count ? bytes[position] : nil }

        func error(_ reason: String, at offset: Int? = nil) -> ParseError {
            ParseError(offset: offset ?? position, reason: reason)
        }

        mutating func skipWhitespace() {
            while let c = current, c == JSONByte.space || c == JSONByte.tab || c == JSONByte.newline || c == JSONByte.carriageReturn { position += 1 }
        }

        mutating func value(depth: Int) throws -> StrictJSON {
            guard let c = current else { throw error("unexpected end of input") }
            switch c {
            case JSONByte.openBrace: return try object(depth: depth + 1)
            case JSONByte.openBracket: return try array(depth: depth + 1)
            case JSONByte.quote: return .string(try string())
            case UInt8(ascii: "t"): return try literal("true", .bool(true))
            case UInt8(ascii: "f"): return try literal("false", .bool(false))
            case UInt8(ascii: "n"): return try literal("null", .null)
            case JSONByte.minus, UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
            default: throw error(c >= 0x21 && c < 0x7F ? "unexpected character '\(Character(Unicode.Scalar(c)))'" : "unexpected byte 0x\(String(c, radix: 16))")
            }
        }

        mutating func literal(_ word: String, _ result: StrictJSON) throws -> StrictJSON {
            let start = position
            for b in word.utf8 {
                guard current == b else { throw error("invalid literal (expected \(word))", at: start) }
                position += 1
            }
            return result
        }

        mutating func object(depth: Int) throws -> StrictJSON {
            guard depth <= StrictJSON.maxDepth else { throw error("nesting deeper than \(StrictJSON.maxDepth)") }
            position += 1  // {
            var members: [String: StrictJSON] = [:]
            skipWhitespace()
            if current == JSONByte.closeBrace { position += 1; return .object(members) }
            while true {
                skipWhitespace()
                guard current == JSONByte.quote else { throw error("expected a string key") }
                let keyOffset = position
                let key = try string()
                skipWhitespace()
                guard current == JSONByte.colon else { throw error("expected ':'") }
                position += 1
                skipWhitespace()
                let member = try value(depth: depth)
                guard members.updateValue(member, forKey: key) == nil else {
                    throw error("duplicate key \"\(key)\"", at: keyOffset)
                }
                skipWhitespace()
                switch current {
                case JSONByte.comma: position += 1
                case JSONByte.closeBrace: position += 1; return .object(members)
                default: throw error("expected ',' or '}'")
                }
            }
        }

        mutating func array(depth: Int) throws -> StrictJSON {
            guard depth <= StrictJSON.maxDepth else { throw error("nesting deeper than \(StrictJSON.maxDepth)") }
            position += 1  // [
            var elements: [StrictJSON] = []
            skipWhitespace()
            if current == JSONByte.closeBracket { position += 1; return .array(elements) }
            while true {
                skipWhitespace()
                elements.append(try value(depth: depth))
                skipWhitespace()
                switch current {
                case JSONByte.comma: position += 1
                case JSONByte.closeBracket: position += 1; return .array(elements)
                default: throw error("expected ',' or ']'")
                }
            }
        }

        mutating func string() throws -> String {
            let start = position
            position += 1  // opening quote
            var utf8: [UInt8] = []
            var run = position  // start of the current unescaped run
            while true {
                guard let c = current else { throw error("unterminated string", at: start) }
                if c == JSONByte.quote {
                    utf8.append(contentsOf: bytes[run..<position])
                    position += 1
                    break
                }
                guard c >= 0x20 else { throw error("unescaped control character in string") }
                guard c == JSONByte.backslash else { position += 1; continue }
                utf8.append(contentsOf: bytes[run..<position])
                position += 1
                guard let escape = current else { throw error("unterminated string", at: start) }
                position += 1
                switch escape {
                case JSONByte.quote, JSONByte.backslash, JSONByte.slash: utf8.append(escape)
                case UInt8(ascii: "b"): utf8.append(0x08)
                case UInt8(ascii: "f"): utf8.append(0x0C)
                case UInt8(ascii: "n"): utf8.append(JSONByte.newline)
                case UInt8(ascii: "r"): utf8.append(JSONByte.carriageReturn)
                case UInt8(ascii: "t"): utf8.append(JSONByte.tab)
                case UInt8(ascii: "u"):
                    var code = try hex4()
                    if (0xD800..<0xDC00).contains(code) {
                        // A high surrogate must be followed by an escaped low surrogate.
                        guard current == JSONByte.backslash, position + 1 < bytes.count, bytes[position + 1] == UInt8(ascii: "u") else {
                            throw error("unpaired surrogate in \\u escape")
                        }
                        position += 2
                        let low = try hex4()
                        guard (0xDC00..<0xE000).contains(low) else { throw error("unpaired surrogate in \\u escape") }
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    } else if (0xDC00..<0xE000).contains(code) {
                        throw error("unpaired surrogate in \\u escape")
                    }
                    UTF8.encode(Unicode.Scalar(code)!) { utf8.append($0) }
                default:
                    throw error("invalid escape '\\\(Character(Unicode.Scalar(escape)))'", at: position - 2)
                }
                run = position
            }
            guard let text = String(validating: utf8, as: UTF8.self) else { throw error("string is not valid UTF-8", at: start) }
            return text
        }

        mutating func hex4() throws -> UInt32 {
            guard position + 4 <= bytes.count else { throw error("truncated \\u escape") }
            var code: UInt32 = 0
            for _ in 0..<4 {
                let c = bytes[position]
                let digit: UInt8
                switch c {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = c - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = c - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = c - UInt8(ascii: "A") + 10
                default: throw error("invalid hex digit in \\u escape")
                }
                code = code << 4 | UInt32(digit)
                position += 1
            }
            return code
        }

        mutating func number() throws -> StrictJSON {
            let start = position
            func digits() -> Int {
                let from = position
                while let c = current, c >= UInt8(ascii: "0"), c <= UInt8(ascii: "9") { position += 1 }
                return position - from
            }
            if current == JSONByte.minus { position += 1 }
            if current == UInt8(ascii: "0") {
                position += 1
            } else if digits() == 0 {
                throw error("invalid number", at: start)
            }
            var integral = true
            if current == JSONByte.dot {
                integral = false
                position += 1
                guard digits() > 0 else { throw error("invalid number", at: start) }
            }
            if current == UInt8(ascii: "e") || current == UInt8(ascii: "E") {
                integral = false
                position += 1
                if current == JSONByte.plus || current == JSONByte.minus { position += 1 }
                guard digits() > 0 else { throw error("invalid number", at: start) }
            }
            let text = String(decoding: bytes[start..<position], as: UTF8.self)
            if integral, let value = Int(text) { return .integer(value) }
            guard let value = Double(text), value.isFinite else { throw error("number \(text) is out of range", at: start) }
            return .number(value)
        }
    }
}

/// The bytes of JSON syntax.
private enum JSONByte {
    static let space = UInt8(ascii: " "), tab = UInt8(ascii: "\t"), newline = UInt8(ascii: "\n")
    static let carriageReturn = UInt8(ascii: "\r"), quote = UInt8(ascii: "\""), backslash = UInt8(ascii: "\\")
    static let slash = UInt8(ascii: "/"), colon = UInt8(ascii: ":"), comma = UInt8(ascii: ",")
    static let openBrace = UInt8(ascii: "{"), closeBrace = UInt8(ascii: "}")
    static let openBracket = UInt8(ascii: "["), closeBracket = UInt8(ascii: "]")
    static let minus = UInt8(ascii: "-"), plus = UInt8(ascii: "+"), dot = UInt8(ascii: ".")
}
