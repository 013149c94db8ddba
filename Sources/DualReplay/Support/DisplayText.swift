// Names from data files (domains, intents) end up in terminals, Markdown tables and logs. A control
// character, a line break or a bidirectional override in one could break a table or make the
// terminal show something other than what is there; these helpers find and escape them.
import Foundation

public enum DisplayText {
    /// Why `name` cannot name a domain, or nil if it can: empty (or only spaces), or holding a
    /// character that is not shown as itself (see `isUnsafe`).
    public static func nameProblem(_ name: String) -> String? {
        if name.unicodeScalars.allSatisfy({ $0.properties.isWhitespace }) {
            return name.isEmpty ? "the name is empty" : "the name is only white space"
        }
        for (i, s) in name.unicodeScalars.enumerated() where isUnsafe(s) {
            return "the name holds \(describe(s)) at character \(i + 1)"
        }
        return nil
    }

    /// Control characters (C0, DEL, C1), line and paragraph separators, and the bidirectional
    /// formatting characters (embeddings, overrides, isolates, marks).
    public static func isUnsafe(_ s: Unicode.Scalar) -> Bool {
        switch s.value {
        case 0x00...0x1F, 0x7F...0x9F: return true
        case 0x2028, 0x2029: return true
        case 0x061C, 0x200E, 0x200F, 0x202A...0x202E, 0x2066...0x2069: return true
        default: return false
        }
    }

    /// `text` with every unsafe character written as `\u{XXXX}` (and backslashes doubled), so
    /// what is printed is what is there, on one line.
    public static func escaped(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: { isUnsafe($0) || $0 == "\\" }) else { return text }
        var out = ""
        for s in text.unicodeScalars {
            if s == "\\" { out += "\\\\" } else if isUnsafe(s) { out += "\\u{\(String(s.value, radix: 16, uppercase: true))}" } else {
                out.unicodeScalars.append(s)
            }
        }
        return out
    }

    static func describe(_ s: Unicode.Scalar) -> String {
        let code = "U+" + String(format: "%04X", s.value)
        switch s.value {
        case 0x0A: return "a line feed (\(code))"
        case 0x0D: return "a carriage return (\(code))"
        case 0x09: return "a tab (\(code))"
        case 0x1B: return "an escape character (\(code))"
        case 0x061C, 0x200E, 0x200F, 0x202A...0x202E, 0x2066...0x2069: return "a bidirectional formatting character (\(code))"
        case 0x2028, 0x2029: return "a line or paragraph separator (\(code))"
        default: return "a control character (\(code))"
        }
    }
}
