// Seeded random mutation tests in the spirit of `make fuzz` (Sources/dr-fuzz), small enough for
// `make test`: mutated safetensors files, JSONL files and tokenizer strings go through the parsers,
// which must either return a valid result or throw their own error type, never trap.
// Inputs that `make fuzz` once found go at the end, as regression tests.
import Foundation
import Testing
@testable import DualReplay

// MARK: - Mutations

/// Byte-level mutations like libFuzzer's: bit flips, overwrites, inserts, erasures, truncations,
/// duplicated chunks and spliced tokens that parsers treat specially.
struct ByteMutator {
    var rng: SeededRandom

    static let tokens: [[UInt8]] = [
        "0", "-1", "-0", "1e999", "2.5", "9223372036854775807", "9223372036854775808", "18446744073709551616",
        "\"", "\\", "\\u", "\\ud800", "\\u0000", "{", "}", "[", "]", ",", ":", "null", "true", "\n", "\r",
        "é", "\u{301}", "北", "😀",
    ].map { Array($0.utf8) } + [[0xFF], [0xC3], [0xED, 0xA0, 0x80], [0x00]]

    init(seed: UInt64) { rng = SeededRandom(seed: seed) }

    mutating func index(in count: Int) -> Int { count == 0 ? 0 : Int.random(in: 0..<count, using: &rng) }

    mutating func mutate(_ input: [UInt8], steps: ClosedRange<Int> = 1...4) -> [UInt8] {
        var bytes = input
        for _ in 0..<Int.random(in: steps, using: &rng) {
            let i = index(in: bytes.count)
            switch Int.random(in: 0..<7, using: &rng) {
            case 0 where !bytes.isEmpty:
                bytes[i] ^= UInt8(1 << Int.random(in: 0..<8, using: &rng))
            case 1 where !bytes.isEmpty:
                bytes[i] = UInt8.random(in: 0...255, using: &rng)
            case 2:
                bytes.insert(contentsOf: (0..<Int.random(in: 1...8, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }, at: i)
            case 3 where !bytes.isEmpty:
                bytes.removeSubrange(i..<min(bytes.count, i + Int.random(in: 1...16, using: &rng)))
            case 4:
                bytes.removeLast(index(in: bytes.count + 1) / 2)
            case 5 where !bytes.isEmpty:
                let end = min(bytes.count, i + Int.random(in: 1...32, using: &rng))
                bytes.insert(contentsOf: Array(bytes[i..<end]), at: index(in: bytes.count))
            default:
                bytes.insert(contentsOf: Self.tokens[index(in: Self.tokens.count)], at: i)
            }
        }
        return bytes
    }
}

/// Replaces the file's contents in place (cheaper than a new file per case; nothing maps it meanwhile).
private func overwrite(_ url: URL, with bytes: [UInt8]) throws {
    if !FileManager.default.fileExists(atPath: url.path) { _ = FileManager.default.createFile(atPath: url.path, contents: nil) }
    let handle = try FileHandle(forWritingTo: url)
    defer { try? handle.close() }
    try handle.truncate(atOffset: 0)
    try handle.write(contentsOf: bytes)
}

private func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

private func bytes(fromHex hex: String) -> [UInt8] {
    let digits = Array(hex.utf8)
    return stride(from: 0, to: digits.count, by: 2).map { UInt8(String(decoding: digits[$0..<$0 + 2], as: UTF8.self), radix: 16)! }
}

// MARK: - SafeTensors

@Suite struct FuzzSafeTensorsTests {
    /// Small valid files: both writer dtypes, a scalar, an empty tensor and metadata; every other dtype by hand.
    static func baseFiles() throws -> [[UInt8]] {
        var writer = SafeTensorsWriter()
        try writer.add("w", shape: [2, 3], floats: [1, -2, 0.5, .infinity, -0, 3])
        try writer.add("ids", shape: [1, 2], int64s: [5, -7])
        try writer.add("s", shape: [], floats: [42])
        try writer.add("e", shape: [0, 4], floats: [])
        writer.metadata = ["format": "pt"]
        var files = [[UInt8](writer.serialized())]
        for dtype in SafeTensorsDType.allCases where dtype != .f32 && dtype != .i64 {
            let data = (0..<(3 * dtype.byteSize)).map { UInt8(truncatingIfNeeded: 0x3C &+ $0 &* 37) }
            let header = "{\"a\":{\"dtype\":\"\(dtype.rawValue)\",\"shape\":[3],\"data_offsets\":[0,\(data.count)]},"
                + "\"b\":{\"dtype\":\"U8\",\"shape\":[1,1],\"data_offsets\":[\(data.count),\(data.count + 1)]}}"
            files.append([UInt8](SafeTensorsTests.rawFile(header, data: data + [9], pad: false)))
        }
        return files
    }

    /// Opens `bytes` (written to `url`): a SafeTensorsError, or a file whose every tensor lies inside
    /// the data section and reads back as the file's bytes. Returns whether it opened.
    static func checkOpen(_ bytes: [UInt8], at url: URL, case label: String) throws -> Bool {
        try overwrite(url, with: bytes)
        let file: SafeTensorsFile
        do {
            file = try SafeTensorsFile(url: url)
        } catch let error as SafeTensorsError {
            #expect(error.localizedDescription.contains(url.lastPathComponent), "\(label): \(error)")
            return false
        } catch {
            Issue.record("\(label): threw \(type(of: error)), not SafeTensorsError: \(error); input \(hex(bytes))")
            return false
        }
        let headerLength = Int(bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) })
        let dataStart = 8 + headerLength
        var ranges: [Range<Int>] = []
        for name in file.names {
            let info = try file.info(name)
            let ok = info.byteRange.lowerBound >= 0 && dataStart + info.byteRange.upperBound <= bytes.count
                && info.byteRange.count == info.count * info.dtype.byteSize
            #expect(ok, "\(label): tensor \(name) \(info) does not fit; input \(hex(bytes))")
            guard ok else { continue }
            if !info.byteRange.isEmpty { ranges.append(info.byteRange) }
            switch info.dtype {
            case .f32:
                let values = try file.floats(name)
                let expected = (0..<info.count).map { i in
                    bytes.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: dataStart + info.byteRange.lowerBound + 4 * i, as: UInt32.self)) }
                }
                #expect(values.map(\.bitPattern) == expected, "\(label): \(name) values; input \(hex(bytes))")
            case .f16, .bf16:
                #expect(try file.floats(name).count == info.count)
                #expect(throws: SafeTensorsError.self) { try file.int64s(name) }
            case .i64, .i32, .i16, .i8, .u32, .u16, .u8:
                #expect(try file.int64s(name).count == info.count)
                #expect(throws: SafeTensorsError.self) { try file.floats(name) }
            case .f64, .f8e4m3, .f8e5m2, .u64, .bool:
                #expect(throws: SafeTensorsError.self) { try file.floats(name) }
                #expect(throws: SafeTensorsError.self) { try file.int64s(name) }
            }
        }
        ranges.sort { $0.lowerBound < $1.lowerBound }
        for (a, b) in zip(ranges, ranges.dropFirst()) {
            #expect(b.lowerBound >= a.upperBound, "\(label): overlapping tensors; input \(hex(bytes))")
        }
        return true
    }

    @Test func mutatedFilesThrowOrReadBack() throws {
        let dir = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("mutated.safetensors")
        let bases = try Self.baseFiles()
        var mutator = ByteMutator(seed: 0x5AFE)
        var opened = 0
        for n in 0..<1000 {
            let input = mutator.mutate(bases[n % bases.count], steps: 1...2)
            if try Self.checkOpen(input, at: url, case: "byte mutation \(n)") { opened += 1 }
        }
        #expect(opened > 30, "mutations should leave some files valid (opened \(opened))")
    }

    /// One edit that keeps the header JSON: a number moved to a nearby or extreme value (offsets and
    /// shapes across their validation boundaries), or a dtype swapped for another.
    static func tweakHeader(_ header: [UInt8], _ m: inout ByteMutator) -> [UInt8] {
        let isDigit = { (b: UInt8) in b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }
        if Bool.random(using: &m.rng), let text = String(validating: header, as: UTF8.self),
           let dtype = SafeTensorsDType.allCases.first(where: { text.contains("\"\($0.rawValue)\"") }) {
            let other = SafeTensorsDType.allCases[m.index(in: SafeTensorsDType.allCases.count)]
            return Array(text.replacingOccurrences(of: "\"\(dtype.rawValue)\"", with: "\"\(other.rawValue)\"").utf8)
        }
        var runs: [Range<Int>] = []
        var i = 0
        while i < header.count {
            guard isDigit(header[i]) else { i += 1; continue }
            let start = i
            while i < header.count && isDigit(header[i]) { i += 1 }
            runs.append(start..<i)
        }
        guard !runs.isEmpty else { return header }
        let run = runs[m.index(in: runs.count)]
        let value = Int(String(decoding: header[run], as: UTF8.self)) ?? 0
        let choices = [value &+ 1, value &- 1, 0, value &* 2, value &+ 8, value &- 8, Int.max, 1 << 32, -1]
        return Array(header[..<run.lowerBound]) + Array(String(choices[m.index(in: choices.count)]).utf8) + Array(header[run.upperBound...])
    }

    /// Mutates the header text and then fixes the length prefix, so the JSON is what gets tested.
    @Test func mutatedHeadersThrowOrReadBack() throws {
        let dir = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("mutated-header.safetensors")
        let bases = try Self.baseFiles()
        var mutator = ByteMutator(seed: 0x4EAD)
        var opened = 0
        for n in 0..<1000 {
            let base = bases[n % bases.count]
            let headerLength = Int(base.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
            var header = Array(base[8..<(8 + headerLength)])
            for _ in 0..<Int.random(in: 1...2, using: &mutator.rng) { header = Self.tweakHeader(header, &mutator) }
            if n % 4 == 0 { header = mutator.mutate(header, steps: 1...1) }
            var data = Array(base[(8 + headerLength)...])
            if n % 5 == 0 { data = mutator.mutate(data, steps: 1...1) }
            var input: [UInt8] = []
            withUnsafeBytes(of: UInt64(header.count).littleEndian) { input.append(contentsOf: $0) }
            input += header + data
            if try Self.checkOpen(input, at: url, case: "header mutation \(n)") { opened += 1 }
        }
        #expect(opened > 40, "header mutations should leave some files valid (opened \(opened))")
    }
}

// MARK: - JSONL

@Suite struct FuzzJSONLTests {
    static let options: [LoadOptions] = [
        LoadOptions(),
        LoadOptions(excludedDomains: [], domainPrefix: "p", maxExamplesPerSplit: 2, subsampleSeed: 7,
                    multiLabel: .keep, allowSharedLabels: true, unknownLabels: .drop),
        LoadOptions(multiLabel: .separate, maxLineBytes: 200),
    ]

    static func row(_ text: String, _ intent: String, _ domain: String, _ split: String) -> String {
        "{\"text\": \"\(text)\", \"intent\": \"\(intent)\", \"domain\": \"\(domain)\", \"split\": \"\(split)\"}"
    }

    /// A valid file with a multi-intent row, an excluded (oos) row and a blank line.
    static let baseLines: [String] = {
        var lines: [String] = []
        for domain in ["bank", "trip"] {
            for split in ["train", "train", "val", "test"] {
                lines.append(row("\(domain) balance caf\\u00e9", "\(domain)_balance", domain, split))
                lines.append(row("\(domain) book it", "\(domain)_book", domain, split))
            }
        }
        lines.append("{\"text\": \"both\", \"intent\": \"bank_balance#bank_book\", \"domain\": \"bank\", \"split\": \"test\", "
            + "\"intents\": [\"bank_balance\", \"bank_book\"]}")
        lines.append(row("what is love", "oos", "oos", "train"))
        lines.append("  ")
        return lines
    }()

    /// Schema-aware edits that make a file invalid in interesting ways (or keep it valid).
    static func mutateLines(_ lines: [String], _ m: inout ByteMutator) -> [String] {
        var lines = lines
        let replacements = [("\"val\"", "\"dev\""), ("\"trip\"", "\"bank\""), ("\"bank_book\"", "\"bank_other\""),
                            ("\"test\"", "\"train\""), ("\"book it\"", "3"), ("\"bank\"", "null"), ("\"bank_balance\"", "[]"),
                            ("\"intent\"", "\"intents\""), ("}", "}}"), ("\"text\"", "\"txt\""), ("\"oos\"", "\"trip\"")]
        for _ in 0..<Int.random(in: 1...3, using: &m.rng) where !lines.isEmpty {
            let i = m.index(in: lines.count)
            switch Int.random(in: 0..<6, using: &m.rng) {
            case 0: lines.remove(at: i)
            case 1: lines.insert(lines[i], at: m.index(in: lines.count))
            case 2: lines.swapAt(i, m.index(in: lines.count))
            case 3: lines[i] += "\r"
            case 4 where i + 1 < lines.count: lines[i] += lines.remove(at: i + 1)
            default:
                let (from, to) = replacements[m.index(in: replacements.count)]
                lines[i] = lines[i].replacingOccurrences(of: from, with: to)
            }
        }
        return lines
    }

    /// Loads `bytes` with every option set: a DataError naming the file, or a valid dataset.
    static func checkLoad(_ bytes: [UInt8], at url: URL, case label: String) throws -> Bool {
        try overwrite(url, with: bytes)
        var loadedWithDefaults = false
        for (index, options) in options.enumerated() {
            let dataset: IntentDataset
            do {
                dataset = try IntentDataset.load(jsonl: url, options: options)
            } catch let error as DataError {
                #expect(error.file == url.path && (error.errorDescription ?? "").contains(url.lastPathComponent), "\(label): \(error)")
                continue
            } catch {
                Issue.record("\(label): threw \(type(of: error)), not DataError: \(error); input \(hex(bytes))")
                continue
            }
            if let problem = problem(dataset, options) {
                Issue.record("\(label), options \(index): \(problem); input \(hex(bytes))")
            }
            if index == 0 { loadedWithDefaults = true }
        }
        return loadedWithDefaults
    }

    /// What makes the dataset invalid, or nil.
    static func problem(_ dataset: IntentDataset, _ options: LoadOptions) -> String? {
        guard !dataset.domains.isEmpty else { return "no domains" }
        guard Set(dataset.domains.map(\.name)).count == dataset.domains.count else { return "duplicate domains" }
        var home: [String: String] = [:]
        var total = 0
        for d in dataset.domains {
            let trainLabels = Set(d.train.flatMap(\.intents))
            guard d.intents == trainLabels.sorted() else { return "\(d.name): intents are not the train labels" }
            for split in Split.allCases {
                let rows = d.examples(split)
                guard !rows.isEmpty else { return "\(d.name): empty \(split)" }
                if let limit = options.maxExamplesPerSplit, rows.count > limit { return "\(d.name): \(split) over the limit" }
                for e in rows {
                    guard e.domain == d.name, e.split == split, !e.intents.isEmpty, !e.intents.contains("") else { return "bad example \(e)" }
                    guard options.multiLabel == .keep || e.intents.count == 1 else { return "multi-label example \(e)" }
                    guard split == .train || e.intents.allSatisfy(trainLabels.contains) else { return "unknown label in \(e)" }
                    for label in e.intents where !options.allowSharedLabels {
                        if let other = home.updateValue(d.name, forKey: label), other != d.name { return "label \(label) in two domains" }
                    }
                }
                total += rows.count
            }
            guard options.multiLabel == .separate || d.multiIntentTest.isEmpty else { return "unexpected multiIntentTest" }
            for e in d.multiIntentTest where e.split != .test || e.intents.count < 2 || !e.intents.allSatisfy(trainLabels.contains) {
                return "bad multi-intent example \(e)"
            }
            total += d.multiIntentTest.count
        }
        let r = dataset.report
        guard r.rowsKept == total else { return "rowsKept \(r.rowsKept), examples \(total)" }
        let accounted = r.blankLines + r.excludedRows + r.droppedNoIntent + r.droppedMultiIntent + r.droppedUnknownLabel
            + r.subsampledAway + r.rowsKept
        guard accounted == r.lines else { return "report accounts for \(accounted) of \(r.lines) lines" }
        return nil
    }

    @Test func mutatedFilesThrowDataErrorOrLoadValidData() throws {
        let dir = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("mutated.jsonl")
        var mutator = ByteMutator(seed: 0x7503)
        var loaded = 0
        #expect(try Self.checkLoad(Array((Self.baseLines.joined(separator: "\n") + "\n").utf8), at: url, case: "base"))
        for n in 0..<800 {
            let lines = Self.mutateLines(Self.baseLines, &mutator)
            var input = Array(lines.joined(separator: "\n").utf8)
            if n % 3 == 0 { input = mutator.mutate(input) }
            if try Self.checkLoad(input, at: url, case: "mutation \(n)") { loaded += 1 }
        }
        #expect(loaded > 50, "some mutations should stay valid (loaded \(loaded))")
    }
}

// MARK: - Tokenizer

@Suite struct FuzzTokenizerTests {
    /// Scalars that exercise every stage: ASCII and punctuation, accents and combining marks, CJK,
    /// emoji with joiners, controls and format characters, and the special tokens' brackets.
    static let pool: [String] = [
        "a", "Z", "q", "7", " ", "  ", "\t", "\n", "\r", ",", ".", "'", "-", "#", "##", "[", "]", "[CLS]", "[SEP]", "[MASK]",
        "[PAD]", "[UNK]", "[unk]", "É", "é", "e\u{301}", "\u{301}", "\u{323}", "ß", "İ", "Σ", "ǅ", "ﬁ", "Å", "ñ",
        "北", "京", "㐀", "𠀀", "한", "ひ", "カ", "😀", "👍🏽", "👨‍👩‍👧", "\u{200D}", "\u{FE0F}", "\u{0}", "\u{7}",
        "\u{85}", "\u{A0}", "\u{AD}", "\u{200B}", "\u{2028}", "\u{FEFF}", "\u{E000}", "\u{FFFD}", "\u{0F73}", "\u{0F81}",
        "م", "ש", "न", "\u{93F}", "ส", "Ж", "—", "…", "€", "¿", "«", "hello", "world", "running", "unaffable",
    ]

    /// [CLS] + the first maxLength - 2 pieces of `tokenize` + [SEP], every id in the vocabulary.
    static func check(_ text: String, _ tokenizer: BertTokenizer, case label: String) {
        let ids = tokenizer.encode(text)
        let pieces = tokenizer.tokenize(text).map { tokenizer.vocab[$0] ?? -1 }
        let expected = [tokenizer.clsId] + pieces.prefix(tokenizer.maxLength - 2) + [tokenizer.sepId]
        #expect(ids == expected, "\(label) \(text.debugDescription) (maxLength \(tokenizer.maxLength))")
        #expect(ids.count <= tokenizer.maxLength)
        #expect(ids.allSatisfy { $0 >= 0 && Int($0) < tokenizer.idToToken.count }, "\(label) \(text.debugDescription)")
    }

    @Test func randomTextEncodesWithinBounds() throws {
        let url = try TestPaths.require(TestPaths.model.appendingPathComponent("vocab.txt"))
        let full = try BertTokenizer(vocabURL: url, maxLength: 128)
        let short = try BertTokenizer(vocabURL: url, maxLength: 6)
        let cased = try BertTokenizer(vocab: full.idToToken, lowercase: false, maxLength: 128)
        var mutator = ByteMutator(seed: 0x70CE)
        for n in 0..<1500 {
            let text: String
            if n % 4 == 3 {
                // Raw bytes, decoded as the fuzzer does (invalid UTF-8 becomes U+FFFD).
                let seed = Array(Self.pool[mutator.index(in: Self.pool.count)].utf8)
                text = String(decoding: mutator.mutate(seed, steps: 1...6), as: UTF8.self)
            } else {
                text = (0..<Int.random(in: 0...24, using: &mutator.rng)).map { _ in Self.pool[mutator.index(in: Self.pool.count)] }.joined()
            }
            for tokenizer in [full, short, cased] { Self.check(text, tokenizer, case: "case \(n)") }
            // Truncation keeps a prefix.
            let long = full.encode(text), cut = short.encode(text)
            #expect(Array(cut.dropLast()) == Array(long.dropLast().prefix(cut.count - 1)), "case \(n) \(text.debugDescription)")
        }
    }

    /// Random small vocabularies (with and without "##" pieces, canonically equal duplicates): the
    /// initializer throws a TokenizerError or gives a tokenizer that keeps the same properties.
    @Test func randomVocabulariesStayConsistent() throws {
        var mutator = ByteMutator(seed: 0x70CA)
        var built = 0
        for n in 0..<150 {
            var vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
            if n % 2 == 0 { vocab.append("[MASK]") }
            for _ in 0..<Int.random(in: 0...40, using: &mutator.rng) {
                let piece = (0..<Int.random(in: 1...3, using: &mutator.rng)).map { _ in Self.pool[mutator.index(in: Self.pool.count)] }.joined()
                vocab.append(Bool.random(using: &mutator.rng) ? "##" + piece : piece)
            }
            vocab.shuffle(using: &mutator.rng)
            let tokenizer: BertTokenizer
            do {
                tokenizer = try BertTokenizer(vocab: vocab, lowercase: n % 3 != 0, maxLength: 2 + n % 9)
            } catch is TokenizerError {
                continue
            }
            built += 1
            for _ in 0..<8 {
                let text = (0..<Int.random(in: 0...12, using: &mutator.rng)).map { _ in Self.pool[mutator.index(in: Self.pool.count)] }.joined()
                Self.check(text, tokenizer, case: "vocabulary \(n)")
            }
        }
        #expect(built > 50, "most random vocabularies should be accepted (built \(built))")
    }

    /// Long runs: words over the 100-scalar limit, long NFD runs, many special tokens.
    @Test func longRunsStayBounded() throws {
        let url = try TestPaths.require(TestPaths.model.appendingPathComponent("vocab.txt"))
        let tokenizer = try BertTokenizer(vocabURL: url, maxLength: 32)
        for text in [String(repeating: "a", count: 5000), String(repeating: "e\u{301}", count: 3000),
                     String(repeating: "[CLS]", count: 1000), String(repeating: "\u{0F73}", count: 500),
                     String(repeating: "北", count: 2000), String(repeating: "[", count: 3000)] {
            Self.check(text, tokenizer, case: "long run")
        }
    }
}

// MARK: - Inputs found by `make fuzz`

@Suite struct FuzzRegressionTests {
    /// The empty file (libFuzzer's first input) is refused cleanly by both parsers. LeakSanitizer
    /// flagged it: Foundation's Data(contentsOf:) leaks 4 KiB reading an empty file (upstream, not
    /// ours), so `make fuzz` suppresses that one stack.
    @Test func emptyInputs() throws {
        let dir = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let jsonl = dir.appendingPathComponent("empty.jsonl")
        #expect(try !FuzzJSONLTests.checkLoad([], at: jsonl, case: "empty"))
        let safetensors = dir.appendingPathComponent("empty.safetensors")
        #expect(try !FuzzSafeTensorsTests.checkOpen([], at: safetensors, case: "empty"))
        #expect(try !FuzzSafeTensorsTests.checkOpen(bytes(fromHex: "0000000000000000"), at: safetensors, case: "zero header"))
    }
}
