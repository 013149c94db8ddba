import Foundation
import Testing
@testable import DualReplay

// MARK: - Golden: the reference tokenizer (HF tokenizers 0.23) on all-MiniLM-L6-v2

private struct GoldenFile: Decodable {
    struct Sentence: Decodable {
        let text: String
        let input_ids: [Int32]
        let tokens: [String]
    }
    let sentences: [Sentence]
    let max_length: Int
}

private func miniLMTokenizer(maxLength: Int = 256) throws -> BertTokenizer {
    let url = try TestPaths.require(TestPaths.model.appendingPathComponent("vocab.txt"))
    return try BertTokenizer(vocabURL: url, maxLength: maxLength)
}

@Test func goldenMiniLMTokenization() throws {
    let url = try TestPaths.require(TestPaths.fixtures.appendingPathComponent("minilm_golden.json"))
    let golden = try JSONDecoder().decode(GoldenFile.self, from: Data(contentsOf: url))
    #expect(golden.sentences.count == 49)
    let tokenizer = try miniLMTokenizer(maxLength: golden.max_length)
    #expect(tokenizer.vocab.count == 30522)
    #expect((tokenizer.padId, tokenizer.unkId, tokenizer.clsId, tokenizer.sepId) == (0, 100, 101, 102))

    var truncated = 0
    for (index, sentence) in golden.sentences.enumerated() {
        let ids = tokenizer.encode(sentence.text)
        #expect(ids == sentence.input_ids,
                "sentence \(index) \(sentence.text.debugDescription)\nexpected \(sentence.input_ids)\ngot      \(ids)")

        let expectedPieces = Array(sentence.tokens.dropFirst().dropLast())
        let pieces = tokenizer.tokenize(sentence.text)
        if sentence.input_ids.count == golden.max_length {
            truncated += 1
            #expect(pieces.count >= expectedPieces.count)
            #expect(Array(pieces.prefix(expectedPieces.count)) == expectedPieces,
                    "sentence \(index) \(sentence.text.debugDescription)\nexpected prefix \(expectedPieces)\ngot \(pieces)")
        } else {
            #expect(pieces == expectedPieces,
                    "sentence \(index) \(sentence.text.debugDescription)\nexpected \(expectedPieces)\ngot      \(pieces)")
        }
    }
    #expect(truncated == 1)

    let batch = tokenizer.encodeBatch(golden.sentences.map(\.text))
    #expect(batch == golden.sentences.map(\.input_ids))
}

// MARK: - Unit tests on a tiny vocabulary

private let tinyVocab = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",          // 0 ... 4
    "hello", "world", "un", "##aff", "##able",              // 5 ... 9
    "cafe", "naive", "a", "##a", "##b",                     // 10 ... 14
    "!", ",", ".", "'", "[", "]",                           // 15 ... 20
    "我", "的", "mask", "i", "##i", "ǆ", "σ", "ﬁ", "—", "€", // 21 ... 30
]

private func tiny(lowercase: Bool = true, maxLength: Int = 256) throws -> BertTokenizer {
    try BertTokenizer(vocab: tinyVocab, lowercase: lowercase, maxLength: maxLength)
}

@Test func specialIdsAndTables() throws {
    let t = try tiny()
    #expect((t.padId, t.unkId, t.clsId, t.sepId, t.maskId) == (0, 1, 2, 3, 4))
    #expect(t.idToToken == tinyVocab)
    #expect(t.vocab["##aff"] == 8)
    #expect(t.maxLength == 256)
}

@Test func splitsOnWhitespaceAndPunctuation() throws {
    let t = try tiny()
    #expect(t.tokenize("hello,world!") == ["hello", ",", "world", "!"])
    #expect(t.tokenize("  hello \t\n\r world  ") == ["hello", "world"])
    #expect(t.tokenize("hello...") == ["hello", ".", ".", "."])
    #expect(t.tokenize("hello'world") == ["hello", "'", "world"])
    // Non-ASCII punctuation (Pd, Po) is isolated; a symbol (Sc) is not, it stays in its word.
    #expect(t.tokenize("hello—world") == ["hello", "—", "world"])
    #expect(t.tokenize("€ €z") == ["€", "[UNK]"])
    // ASCII symbols count as punctuation for BERT: $ + < = > ^ ` | ~
    #expect(t.tokenize("a$a+a<a=a>a^a`a|a~a").count == 19)
}

@Test func lowercasesAndStripsAccents() throws {
    let t = try tiny()
    #expect(t.tokenize("HELLO World") == ["hello", "world"])
    #expect(t.tokenize("Café NAÏVE") == ["cafe", "naive"])
    #expect(t.tokenize("Cafe\u{0301}") == ["cafe"])                 // already decomposed
    #expect(t.tokenize("\u{1E0A}\u{0323}") == ["[UNK]"])            // Ḋ + dot below -> "d"
    #expect(t.tokenize("İ") == ["i"])                               // NFD first: I + U+0307, mark dropped
    #expect(t.tokenize("ǅ") == ["ǆ"])                               // titlecase digraph has no NFD
    #expect(t.tokenize("Σ") == ["σ"])                               // per-scalar lowercase, no final-sigma rule
    #expect(t.tokenize("ﬁ") == ["ﬁ"])                               // compatibility ligature is kept
    // lowercase: false keeps case and accents (HF: strip_accents follows lowercase).
    let cased = try tiny(lowercase: false)
    #expect(cased.tokenize("Hello hello") == ["[UNK]", "hello"])
    #expect(cased.tokenize("café") == ["[UNK]"])
}

@Test func scalarsNotCharacters() throws {
    let t = try tiny()
    // "a" + combining diaeresis is one Character but two scalars; only the mark goes.
    #expect(t.tokenize("a\u{0308}a\u{0308}") == ["a", "##a"])
    // A ZWJ (Cf) between two letters is removed, gluing them: one word, not two.
    #expect(t.tokenize("a\u{200D}a") == ["a", "##a"])
    // Uncased, the marks count towards the 100-scalar limit: 60 Characters are 120 scalars.
    let cased = try tiny(lowercase: false)
    #expect(cased.tokenize(String(repeating: "a\u{0308}", count: 60)) == ["[UNK]"])
}

@Test func wordPiecePieces() throws {
    let t = try tiny()
    #expect(t.tokenize("unaffable") == ["un", "##aff", "##able"])
    #expect(t.tokenize("aab") == ["a", "##a", "##b"])
    #expect(t.tokenize("unaff unable") == ["un", "##aff", "un", "##able"])
    // Any unmatched rest turns the whole word into one [UNK], never a partial segmentation.
    #expect(t.tokenize("unaffz") == ["[UNK]"])
    #expect(t.tokenize("zhello hello") == ["[UNK]", "hello"])
    // "#" is punctuation, so "##aff" typed in text is "#", "#", "aff", and "aff" cannot start a word.
    #expect(t.tokenize("##aff") == ["[UNK]", "[UNK]", "[UNK]"])
}

@Test func overlongWordIsUnknown() throws {
    let t = try tiny()
    let hundred = "a" + String(repeating: "b", count: 99)
    #expect(t.tokenize(hundred) == ["a"] + Array(repeating: "##b", count: 99))
    #expect(t.tokenize(hundred + "b") == ["[UNK]"])
    #expect(t.tokenize("hello " + String(repeating: "a", count: 101) + " world") == ["hello", "[UNK]", "world"])
    // Counted after normalisation: 100 precomposed "ä" are 100 scalars once the marks are gone.
    #expect(t.tokenize(String(repeating: "ä", count: 100)).count == 100)
    #expect(t.tokenize(String(repeating: "ä", count: 101)) == ["[UNK]"])
}

@Test func removesControlAndFormatCharacters() throws {
    let t = try tiny()
    #expect(t.tokenize("hel\u{200B}lo") == ["hello"])               // zero-width space (Cf)
    #expect(t.tokenize("hel\u{00AD}lo") == ["hello"])               // soft hyphen (Cf)
    #expect(t.tokenize("\u{0000}hello\u{FFFD}") == ["hello"])
    #expect(t.tokenize("hel\u{0007}lo\u{007F}") == ["hello"])       // BEL, DEL (Cc)
    #expect(t.tokenize("hel\u{000B}lo\u{000C}") == ["hello"])       // VT, FF are Cc, not whitespace
    #expect(t.tokenize("hel\u{0085}lo") == ["hello"])               // NEL: a control first, so removed
    #expect(t.tokenize("hel\u{E000}lo") == ["hello"])               // private use (Co)
    #expect(t.tokenize("\u{FEFF}hello") == ["hello"])               // BOM (Cf)
    // Other whitespace becomes a separator.
    #expect(t.tokenize("hello\u{00A0}world\u{3000}hello\u{2028}world") == ["hello", "world", "hello", "world"])
}

@Test func spacesOutCJKIdeographs() throws {
    let t = try tiny()
    #expect(t.tokenize("hello我的world") == ["hello", "我", "的", "world"])
    #expect(t.tokenize("我想") == ["我", "[UNK]"])
    // Hiragana is not in the CJK ranges: it stays one word.
    #expect(t.tokenize("我ここ") == ["我", "[UNK]"])
}

@Test func specialTokensInTextAreKept() throws {
    let t = try tiny()
    // HF cuts its special tokens out of the raw text before normalisation (case-sensitive).
    #expect(t.tokenize("hello [MASK] world") == ["hello", "[MASK]", "world"])
    #expect(t.tokenize("hello[MASK]world") == ["hello", "[MASK]", "world"])
    #expect(t.tokenize("[mask]") == ["[", "mask", "]"])
    #expect(t.encode("[CLS]") == [2, 2, 3])
    #expect(t.tokenize("[[SEP]]") == ["[", "[SEP]", "]"])
}

@Test func encodeAddsSpecialsAndTruncates() throws {
    let t = try tiny()
    #expect(t.encode("") == [2, 3])
    #expect(t.tokenize("") == [])
    #expect(t.encode(" \t\u{200B} ") == [2, 3])
    #expect(t.encode("hello world") == [2, 5, 6, 3])
    let short = try tiny(maxLength: 5)
    #expect(short.encode("hello world unaffable") == [2, 5, 6, 7, 3])      // cut inside a word's pieces
    #expect(short.encode("hello world") == [2, 5, 6, 3])
    let minimal = try tiny(maxLength: 2)
    #expect(minimal.encode("hello world") == [2, 3])
    #expect(short.encodeBatch(["hello", "", "world hello world"]) == [[2, 5, 3], [2, 3], [2, 6, 5, 6, 3]])
}

// MARK: - Vocabulary loading and errors

@Test func vocabFileWithCRLFAndTrailingNewline() throws {
    let dir = try TestPaths.tempDir()
    defer { try? FileManager.default.removeItem(at: dir) }
    let url = dir.appendingPathComponent("vocab.txt")
    try Data(tinyVocab.joined(separator: "\r\n").appending("\r\n").utf8).write(to: url)
    let t = try BertTokenizer(vocabURL: url)
    #expect(t.idToToken == tinyVocab)
    #expect(t.encode("hello world") == [2, 5, 6, 3])
}

@Test func missingVocabFileNamesThePath() throws {
    let path = "/nonexistent/dir-\(UUID().uuidString)/vocab.txt"
    do {
        _ = try BertTokenizer(vocabURL: URL(fileURLWithPath: path))
        Issue.record("expected an error")
    } catch let error as TokenizerError {
        guard case .unreadableVocab = error else { Issue.record("wrong error \(error)"); return }
        #expect(error.localizedDescription.contains(path))
    }
}

@Test func invalidUTF8VocabIsRejected() throws {
    let dir = try TestPaths.tempDir()
    defer { try? FileManager.default.removeItem(at: dir) }
    let url = dir.appendingPathComponent("vocab.txt")
    try Data([0x5B, 0x50, 0x41, 0x44, 0x5D, 0x0A, 0xFF, 0xFE, 0x0A]).write(to: url)
    #expect(throws: TokenizerError.unreadableVocab(path: url.path, reason: "not valid UTF-8")) {
        try BertTokenizer(vocabURL: url)
    }
}

@Test func vocabWithoutSpecialTokensIsRejected() throws {
    let noUnk = tinyVocab.filter { $0 != "[UNK]" }
    #expect(throws: TokenizerError.missingSpecialToken(token: "[UNK]", source: "(in-memory vocabulary)")) {
        try BertTokenizer(vocab: noUnk)
    }
    do {
        _ = try BertTokenizer(vocab: noUnk)
    } catch {
        #expect(error.localizedDescription.contains("[UNK]"))
    }
    for special in ["[CLS]", "[SEP]", "[PAD]"] {
        #expect(throws: TokenizerError.self) { try BertTokenizer(vocab: tinyVocab.filter { $0 != special }) }
    }
    // [MASK] is optional.
    let noMask = try BertTokenizer(vocab: tinyVocab.filter { $0 != "[MASK]" })
    #expect(noMask.maskId == nil)
    #expect(noMask.tokenize("[MASK]") == ["[", "mask", "]"])
}

@Test func duplicateTokenNamesTheLine() throws {
    let vocab = tinyVocab + ["hello"]
    #expect(throws: TokenizerError.duplicateToken(token: "hello", line: vocab.count, firstLine: 6,
                                                  source: "(in-memory vocabulary)")) {
        try BertTokenizer(vocab: vocab)
    }
}

@Test func maxLengthBelowTwoIsRejected() throws {
    #expect(throws: TokenizerError.invalidMaxLength(1)) { try BertTokenizer(vocab: tinyVocab, maxLength: 1) }
}

// MARK: - Robustness and the NFD run splitting

@Test func longNonASCIIRunsAreDecomposedInPieces() throws {
    // No ASCII in 180 scalars, so NFD sees the run in pieces of about 64: none may be lost or doubled.
    let t = try tiny()
    let run = String(repeating: "ääÄää—", count: 30)
    let word = ["a", "##a", "##a", "##a", "##a", "—"]
    #expect(t.tokenize(run) == Array(Array(repeating: word, count: 30).joined()))
}

@Test func nfdCutPointAssumptionsHold() throws {
    // Below U+00C0 every scalar is a starter that NFD leaves alone, so an ASCII scalar ends a run.
    for v in UInt32(0)..<0xC0 {
        let s = Unicode.Scalar(v)!
        #expect(s.properties.canonicalCombiningClass == .notReordered)
        #expect(Array(String(s).decomposedStringWithCanonicalMapping.unicodeScalars) == [s])
    }
    // A run may be cut before a starter unless its decomposition begins with a non-starter; the
    // tokenizer knows three such scalars. Check that there are no others.
    var others: [String] = []
    for v in UInt32(0xC0)...UInt32(0x2FFFF) {
        guard let s = Unicode.Scalar(v), s.properties.generalCategory != .unassigned,
              s.properties.canonicalCombiningClass == .notReordered else { continue }
        let first = String(s).decomposedStringWithCanonicalMapping.unicodeScalars.first!
        if first.properties.canonicalCombiningClass != .notReordered && ![0x0F73, 0x0F75, 0x0F81].contains(v) {
            others.append("U+" + String(v, radix: 16, uppercase: true))
        }
    }
    #expect(others.isEmpty, "starters that decompose to a non-starter: \(others)")
}

@Test func megabyteInputIsLinear() throws {
    let t = try miniLMTokenizer()
    var rng = SeededRandom(seed: 7)
    let parts = ["hello ", "world, ", "Café ", "naïve ", "我想取消 ", "привет ", "Καλημέρα ", "🙂 ", "e-mail ",
                 "supercalifragilistic ", "\u{200B}", "[MASK] ", "\t", "déjà-vu! ", "안녕하세요 "]
    var text = ""
    while text.utf8.count < 1_000_000 { text += parts[Int(rng.next() % UInt64(parts.count))] }

    let start = Date()
    let pieces = t.tokenize(text)
    let mixedSeconds = Date().timeIntervalSince(start)
    #expect(pieces.count > 100_000)
    #expect(!pieces.contains(""))

    // One 1 MB word: the 100-scalar rule bounds WordPiece, so this is one [UNK], at once.
    let longWordStart = Date()
    #expect(t.tokenize(String(repeating: "b", count: 1_000_000)) == ["[UNK]"])
    #expect(t.tokenize(String(repeating: "é", count: 500_000)) == ["[UNK]"])
    #expect(t.tokenize(String(repeating: "ж", count: 500_000)) == ["[UNK]"])
    let longWordSeconds = Date().timeIntervalSince(longWordStart)

    // encode stops reading once it has maxLength - 2 pieces.
    let encodeStart = Date()
    #expect(t.encode(text).count == 256)
    let encodeSeconds = Date().timeIntervalSince(encodeStart)

    print("tokenizer 1 MB: mixed \(mixedSeconds) s, long words \(longWordSeconds) s, encode \(encodeSeconds) s")
    // Generous bounds for an unoptimised build on a busy machine; a quadratic step would take minutes.
    #expect(mixedSeconds < 30)
    #expect(longWordSeconds < 30)
    #expect(encodeSeconds < 1)
}
