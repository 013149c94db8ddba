// Seed corpora and libFuzzer dictionaries: small inputs that reach deep into each parser, so the
// fuzzer mutates valid files instead of rediscovering the formats byte by byte.
import DualReplay
import Foundation

enum Seeds {
    /// Writes `<dir>/<target>/<seed>` for every target and `<dir>/<target>.dict`; returns the count.
    @discardableResult
    static func write(to dir: URL) throws -> Int {
        let fm = FileManager.default
        var count = 0
        for target in FuzzTarget.allCases {
            let folder = dir.appendingPathComponent(target.rawValue)
            try fm.createDirectory(at: folder, withIntermediateDirectories: true)
            for (name, bytes) in try seeds(for: target) {
                try bytes.write(to: folder.appendingPathComponent("seed-\(name)"))
                count += 1
            }
            let dict = dictionary(for: target).map { "\"\(escapedForDictionary($0))\"" }.joined(separator: "\n") + "\n"
            try Data(dict.utf8).write(to: dir.appendingPathComponent("\(target.rawValue).dict"))
        }
        return count
    }

    static func seeds(for target: FuzzTarget) throws -> [(String, Data)] {
        switch target {
        case .safetensors: return try safeTensorsSeeds()
        case .jsonl: return jsonlSeeds().map { ($0.0, Data($0.1.utf8)) }
        case .tokenizer: return tokenizerSeeds()
        }
    }

    // MARK: SafeTensors

    /// A file assembled by hand: 8-byte little-endian header length, header, data.
    static func rawSafeTensors(_ header: String, data: [UInt8]) -> Data {
        var file = Data()
        withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { file.append(contentsOf: $0) }
        file.append(contentsOf: Array(header.utf8))
        file.append(contentsOf: data)
        return file
    }

    private static func safeTensorsSeeds() throws -> [(String, Data)] {
        var seeds: [(String, Data)] = [("empty", SafeTensorsWriter().serialized())]

        var matrix = SafeTensorsWriter()
        try matrix.add("encoder.layer.0.weight", shape: [2, 3], floats: [1, -2.5, 0, .infinity, -0.0, 3.25e-5])
        matrix.metadata = ["format": "pt"]
        seeds.append(("f32-matrix", matrix.serialized()))

        var mixed = SafeTensorsWriter()
        try mixed.add("bias", shape: [3], floats: [0.5, -1, 2])
        try mixed.add("position_ids", shape: [1, 4], int64s: [0, 1, -7, .max])
        try mixed.add("scalar", shape: [], floats: [42])
        try mixed.add("empty", shape: [0, 4], floats: [])
        mixed.metadata = ["note": "quote \" backslash \\ newline\n ünïcode"]
        seeds.append(("mixed", mixed.serialized()))

        // Every dtype the writer cannot produce, two elements each.
        for dtype in SafeTensorsDType.allCases where dtype != .f32 && dtype != .i64 {
            let bytes = (0..<(2 * dtype.byteSize)).map { UInt8(truncatingIfNeeded: 0x3C &+ $0 &* 37) }
            let header = "{\"t\":{\"dtype\":\"\(dtype.rawValue)\",\"shape\":[2],\"data_offsets\":[0,\(bytes.count)]}}"
            seeds.append(("dtype-\(dtype.rawValue.lowercased())", rawSafeTensors(header, data: bytes)))
        }
        // Unpadded header, metadata first, escapes in names, an unaligned second tensor.
        seeds.append(("escapes", rawSafeTensors(
            "{\"__metadata__\":{\"k\\u00e9y\":\"v\\ud83d\\ude00\"},\"a\\n\\\"b\":{\"dtype\":\"F16\",\"shape\":[1,1],\"data_offsets\":[0,2]},"
                + "\"c\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[2,6]}}",
            data: [0x00, 0x3C, 0x00, 0x00, 0x80, 0x3F])))
        // Rejected files, to start the error paths: overlap, gap past the end, bad shape.
        seeds.append(("overlap", rawSafeTensors(
            "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[1,3]}}",
            data: [1, 2, 3])))
        seeds.append(("out-of-bounds", rawSafeTensors(
            "{\"a\":{\"dtype\":\"I32\",\"shape\":[4],\"data_offsets\":[0,16]}}", data: [1, 2, 3, 4])))
        seeds.append(("huge-shape", rawSafeTensors(
            "{\"a\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}", data: [])))
        return seeds
    }

    // MARK: JSONL

    private static func row(_ text: String, _ intent: String, _ domain: String, _ split: String) -> String {
        "{\"text\": \"\(text)\", \"intent\": \"\(intent)\", \"domain\": \"\(domain)\", \"split\": \"\(split)\"}"
    }

    private static func jsonlSeeds() -> [(String, String)] {
        var valid: [String] = []
        for domain in ["banking", "travel"] {
            for split in ["train", "train", "val", "test"] {
                valid.append(row("\(domain): what is my balance", "\(domain)_balance", domain, split))
                valid.append(row("\(domain): book it for tomorrow", "\(domain)_book", domain, split))
            }
        }
        let multi = valid + [
            "{\"text\": \"balance and book\", \"intent\": \"banking_balance#banking_book\", \"domain\": \"banking\", "
                + "\"split\": \"test\", \"intents\": [\"banking_balance\", \"banking_book\"]}",
            "{\"text\": \"slots only\", \"intent\": \"\", \"domain\": \"banking\", \"split\": \"train\", \"intents\": []}",
            row("how old is the moon", "oos", "oos", "train"),
            "   ",
        ]
        let unicode = [
            row("caf\\u00e9 \\ud83d\\ude00 na\\u00efve", "greet", "chat", "train"),
            row("北京 résumé", "greet", "chat", "val"),
            row("tab\\there \\\"quoted\\\"", "greet", "chat", "test"),
        ]
        let nested = String(repeating: "[", count: 300) + String(repeating: "]", count: 300)
        return [
            ("valid", valid.joined(separator: "\n") + "\n"),
            ("multi-intent", multi.joined(separator: "\n")),
            ("crlf-unicode", unicode.joined(separator: "\r\n") + "\r\n"),
            ("wrong-types", row("x", "a", "d", "train") + "\n{\"text\": 3, \"intent\": null, \"domain\": [], \"split\": true}\n"),
            ("unknown-split", row("x", "a", "d", "dev") + "\n"),
            ("unknown-label", row("x", "a", "d", "train") + "\n" + row("y", "b", "d", "val") + "\n" + row("z", "a", "d", "test") + "\n"),
            ("not-object", "[1, 2.5e300, -0, \"s\", {\"k\": {}}]\n" + nested + "\n"),
        ]
    }

    // MARK: Tokenizer

    private static func tokenizerSeeds() -> [(String, Data)] {
        let texts: [(String, String)] = [
            ("ascii", "Hello, world! Don't stop-believing: it's 3.14 o'clock."),
            ("accents", "Café naïve résumé Ångström ÉCOLE Ωmega İstanbul ΣΑΣ ß ǅ ﬁ"),
            ("cjk", "北京欢迎你 東京 서울 ひらがな カタカナ 㐀 𠀀 𪜀"),
            ("emoji", "👍🏽 👨‍👩‍👧 🏳️‍🌈 ❤️ 1️⃣ 🇫🇷"),
            ("controls", "a\u{0}b\u{7}c\td\re\nf\u{85}g\u{200B}h\u{FEFF}i\u{AD}j\u{2028}k\u{E000}l\u{FFFD}m"),
            ("special", "[CLS] hello [MASK] [unk] [SEP][PAD][UNK] [ [CLS ##ing ##"),
            ("combining", "e\u{301}\u{302}\u{303}\u{323} a\u{30A} \u{0F73}\u{0F75}\u{0F81} \u{1100}\u{1161}\u{11A8}"),
            ("scripts", "مرحبا שלום नमस्ते สวัสดี Привет გამარჯობა"),
            ("long-word", String(repeating: "supercalifragilistic", count: 6) + " " + String(repeating: "é", count: 120)),
            ("punctuation", "¿¡«»—–…‘’“”·•‰€$¥£ ⟨x⟩ ‹y› 【z】"),
        ]
        var seeds = texts.map { ($0.0, Data($0.1.utf8)) }
        seeds.append(("invalid-utf8", Data([0x61, 0xFF, 0xC3, 0x28, 0xE2, 0x82, 0x20, 0xF0, 0x9F, 0x98, 0x62, 0xED, 0xA0, 0x80])))
        return seeds
    }

    // MARK: Dictionaries

    static func dictionary(for target: FuzzTarget) -> [String] {
        let json = ["{", "}", "[", "]", ":", ",", "\"", "null", "true", "false", "-0", "1e309", "0.5", "\\u0000", "\\ud800", "\\\\"]
        switch target {
        case .safetensors:
            return json + ["\"dtype\"", "\"shape\"", "\"data_offsets\"", "\"__metadata__\"", "9223372036854775807", "-1",
                           "4294967296", "18446744073709551616"]
                + SafeTensorsDType.allCases.map { "\"\($0.rawValue)\"" }
        case .jsonl:
            return json + ["\"text\"", "\"intent\"", "\"intents\"", "\"domain\"", "\"split\"", "\"train\"", "\"val\"",
                           "\"test\"", "\"oos\"", "#", "\n", "\r\n"]
        case .tokenizer:
            return ["[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]", "##", " ", "\u{301}", "\u{200D}", "İ", "ß", "ﬁ", "北",
                    "\u{FFFD}", "\u{85}", "'s", "n't"]
        }
    }

    /// libFuzzer dictionary syntax: printable ASCII as is, `\"` and `\\` escaped, other bytes as \xNN.
    private static func escapedForDictionary(_ word: String) -> String {
        var out = ""
        for byte in word.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out += "\\\""
            case UInt8(ascii: "\\"): out += "\\\\"
            case 0x20..<0x7F: out.unicodeScalars.append(Unicode.Scalar(byte))
            default: out += String(format: "\\x%02X", byte)
            }
        }
        return out
    }
}
