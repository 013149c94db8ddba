import Foundation

// Strict decoding of experiment configs, shared by JSON and YAML: every object refuses keys its
// type does not name (with the nearest known key, or where an old flat field moved), enums name
// their allowed values, and every error says where in the file it is.

public enum ConfigError: LocalizedError, CustomStringConvertible, Equatable {
    case unreadable(path: String, reason: String)
    case invalid(field: String, reason: String)
    /// A key no field of the object at `at` has; `suggestion` is the nearest known key.
    case unknownField(at: String, field: String, suggestion: String?)
    /// A field of the flat (schema 1) method format; `to` is where it lives now.
    case movedField(at: String, field: String, to: String)
    case badChoice(field: String, value: String, allowed: [String])
    case outOfBounds(field: String, value: String, bounds: String)
    case inFile(path: String, String)

    public var description: String {
        switch self {
        case let .unreadable(p, r): return "\(p): cannot read the config: \(r)"
        case let .invalid(f, r): return "field `\(f)`: \(r)"
        case let .unknownField(at, f, s):
            return "\(at): unknown field \"\(f)\"" + (s.map { " (did you mean \"\($0)\"?)" } ?? "")
        case let .movedField(at, f, to): return "\(at): field \"\(f)\" moved: use \(MovedFields.usage(to))"
        case let .badChoice(f, v, allowed):
            return "field `\(f)`: \"\(v)\" is not one of " + allowed.map { "\"\($0)\"" }.joined(separator: ", ")
        case let .outOfBounds(f, v, b): return "field `\(f)`: must be \(b), got \(v)"
        case let .inFile(p, s): return "\(p): \(s)"
        }
    }
    public var errorDescription: String? { description }

    static func describe(_ e: DecodingError) -> String {
        switch e {
        case let .keyNotFound(k, ctx): return "missing field `\(ConfigPath.render(ctx.codingPath + [k]))`"
        case let .typeMismatch(t, ctx): return "field `\(ConfigPath.render(ctx.codingPath))`: expected \(t)"
        case let .valueNotFound(t, ctx): return "field `\(ConfigPath.render(ctx.codingPath))`: expected \(t), found null"
        case let .dataCorrupted(ctx):
            return ctx.codingPath.isEmpty ? "not valid JSON/YAML: \(ctx.debugDescription)"
                : "field `\(ConfigPath.render(ctx.codingPath))`: \(ctx.debugDescription)"
        @unknown default: return "\(e)"
        }
    }
}

/// Coding paths as config paths: `methods[0].adapter.bottleneck`.
enum ConfigPath {
    static func render(_ path: [CodingKey]) -> String {
        let s = path.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
        let trimmed = s.hasPrefix(".") ? String(s.dropFirst()) : s
        return trimmed.isEmpty ? "(top level)" : trimmed
    }
}

/// Any key of an object, so that a decoder can list them all, known or not.
struct AnyConfigKey: CodingKey {
    var stringValue: String
    var intValue: Int?
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { self.stringValue = "\(intValue)"; self.intValue = intValue }
}

extension Decoder {
    /// A keyed container that refuses keys outside `known`: a key of the flat format gets the
    /// place it moved to (`moved`), any other the nearest known key. `label` follows the path in
    /// messages (a method's kind).
    func strictContainer<Keys: CodingKey>(keyedBy _: Keys.Type, known: [String], moved: [String: String] = [:],
                                          label: String? = nil) throws -> KeyedDecodingContainer<Keys> {
        let present = try container(keyedBy: AnyConfigKey.self).allKeys.map(\.stringValue)
        let at = ConfigPath.render(codingPath) + (label.map { " (\($0))" } ?? "")
        for key in present.sorted() where !known.contains(key) {
            if let to = moved[key] { throw ConfigError.movedField(at: at, field: key, to: to) }
            throw ConfigError.unknownField(at: at, field: key, suggestion: EditDistance.nearest(to: key, in: known))
        }
        return try container(keyedBy: Keys.self)
    }

    func strictContainer<Keys: CodingKey & CaseIterable>(keyedBy k: Keys.Type, moved: [String: String] = [:],
                                                         label: String? = nil) throws -> KeyedDecodingContainer<Keys> {
        try strictContainer(keyedBy: k, known: Keys.allCases.map(\.stringValue), moved: moved, label: label)
    }
}

extension KeyedDecodingContainer {
    /// A string enum; an unknown value is an error naming the field and the allowed values.
    func decodeChoice<E: RawRepresentable & CaseIterable>(_: E.Type, forKey key: Key) throws -> E? where E.RawValue == String {
        guard let raw = try decodeIfPresent(String.self, forKey: key) else { return nil }
        guard let value = E(rawValue: raw) else {
            throw ConfigError.badChoice(field: ConfigPath.render(codingPath + [key]), value: raw, allowed: E.allCases.map(\.rawValue))
        }
        return value
    }
}

// The enums of other rooms that configs name (their declarations are not CaseIterable).
extension AdapterPlacement: CaseIterable { public static var allCases: [AdapterPlacement] { [.output, .ffn] } }
extension AdapterActivation: CaseIterable { public static var allCases: [AdapterActivation] { [.gelu, .relu, .identity] } }
extension MultiLabelPolicy: CaseIterable { public static var allCases: [MultiLabelPolicy] { [.drop, .keep, .separate] } }
extension UnknownLabelPolicy: CaseIterable { public static var allCases: [UnknownLabelPolicy] { [.reject, .drop] } }

enum EditDistance {
    /// Levenshtein distance, case-insensitive.
    static func distance(_ a: String, _ b: String) -> Int {
        let x = Array(a.lowercased()), y = Array(b.lowercased())
        guard !x.isEmpty else { return y.count }
        guard !y.isEmpty else { return x.count }
        var previous = Array(0...y.count), current = previous
        for i in 1...x.count {
            current[0] = i
            for j in 1...y.count {
                current[j] = Swift.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x[i - 1] == y[j - 1] ? 0 : 1))
            }
            swap(&previous, &current)
        }
        return previous[y.count]
    }

    /// The closest of `candidates`, if it is close enough to be a plausible typo, or a longer or
    /// shorter spelling of the same name (`freezeOldHeads` → `freezeOld`).
    static func nearest(to key: String, in candidates: [String]) -> String? {
        let scored = candidates.map { (name: $0, d: distance(key, $0)) }
        guard let best = scored.min(by: { $0.d < $1.d || ($0.d == $1.d && $0.name < $1.name) }) else { return nil }
        if best.d <= Swift.max(2, key.count / 3) { return best.name }
        let k = key.lowercased()
        return scored.filter { c in
            let n = c.name.lowercased()
            return Swift.min(n.count, k.count) >= 4 && (k.hasPrefix(n) || n.hasPrefix(k))
        }.min(by: { $0.d < $1.d })?.name
    }
}

/// Names that become file names (`results/<name>`, method labels in tables and file names).
enum SafeName {
    /// nil when `name` is one path component without control characters, else the reason.
    static func problem(_ name: String) -> String? {
        if name.isEmpty { return "must not be empty" }
        if name == "." || name == ".." { return "must not be \"\(name)\"" }
        if name.contains("/") || name.contains("\\") { return "must be a single path component (no \"/\" or \"\\\"), got \"\(name)\"" }
        if name.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) {
            return "must not contain NUL or control characters"
        }
        if name.utf8.count > 200 { return "must be at most 200 bytes, got \(name.utf8.count)" }
        return nil
    }

    static func check(_ name: String, field: String) throws {
        if let p = problem(name) { throw ConfigError.invalid(field: field, reason: p) }
    }
}

/// Range checks with one message format: `field `x`: must be in 1...4096, got 0`.
enum Bounds {
    static func check<T: Comparable>(_ value: T, _ range: ClosedRange<T>, _ field: String) throws {
        guard range.contains(value) else {
            throw ConfigError.outOfBounds(field: field, value: "\(value)", bounds: "in \(range.lowerBound)...\(range.upperBound)")
        }
    }
    static func check<T: Comparable>(_ value: T?, _ range: ClosedRange<T>, _ field: String) throws {
        if let value { try check(value, range, field) }
    }
    /// Finite and in `range`; `lowerOpen`: the lower end excluded (a rate > 0).
    static func check<T: BinaryFloatingPoint>(real value: T, _ range: ClosedRange<T>, lowerOpen: Bool = false,
                                              upperOpen: Bool = false, _ field: String) throws {
        let ok = value.isFinite && range.contains(value) && !(lowerOpen && value == range.lowerBound)
            && !(upperOpen && value == range.upperBound)
        guard ok else {
            let text = "in \(lowerOpen ? "(" : "[")\(range.lowerBound), \(range.upperBound)\(upperOpen ? ")" : "]")"
            throw ConfigError.outOfBounds(field: field, value: "\(value)", bounds: text)
        }
    }
    static func check<T: BinaryFloatingPoint>(real value: T?, _ range: ClosedRange<T>, lowerOpen: Bool = false,
                                              upperOpen: Bool = false, _ field: String) throws {
        if let value { try check(real: value, range, lowerOpen: lowerOpen, upperOpen: upperOpen, field) }
    }
}
