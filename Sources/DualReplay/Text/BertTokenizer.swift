// BERT WordPiece tokenizer, matching Hugging Face `tokenizers` (BertNormalizer + BertPreTokenizer +
// WordPiece + the [CLS] … [SEP] template) as shipped with all-MiniLM-L6-v2.
//
// text -> special-token extraction -> clean -> CJK spacing -> NFD, drop Mn -> lowercase
//      -> split on whitespace / punctuation -> WordPiece -> ids
//
// Everything works on Unicode scalars, never on Characters: a grapheme cluster would glue a combining
// mark or a zero-width joiner to its base and change what gets removed or split.
import Foundation

public enum TokenizerError: LocalizedError, Equatable {
    /// The vocabulary file could not be read or is not UTF-8.
    case unreadableVocab(path: String, reason: String)
    /// A special token every BERT vocabulary needs ([CLS], [SEP], [PAD], [UNK]) is absent.
    case missingSpecialToken(token: String, source: String)
    /// A token appears twice (lines are 1-based; Swift compares strings up to canonical equivalence).
    case duplicateToken(token: String, line: Int, firstLine: Int, source: String)
    /// maxLength leaves no room for [CLS] and [SEP].
    case invalidMaxLength(Int)

    public var errorDescription: String? {
        switch self {
        case let .unreadableVocab(path, reason):
            return "cannot read the vocabulary \(path): \(reason)"
        case let .missingSpecialToken(token, source):
            return "the vocabulary \(source) has no \(token) token"
        case let .duplicateToken(token, line, firstLine, source):
            return "the vocabulary \(source), line \(line): token \"\(token)\" already appears on line \(firstLine)"
        case let .invalidMaxLength(n):
            return "maxLength must be at least 2 (room for [CLS] and [SEP]), got \(n)"
        }
    }
}

/// Uncased (by default) BERT tokenizer. Immutable, so one instance can serve many threads.
public struct BertTokenizer: Sendable {
    public let vocab: [String: Int32]      // token -> id
    public let idToToken: [String]         // id -> token (the vocabulary's line order)
    public let maxLength: Int              // incl. [CLS] and [SEP]
    public let lowercase: Bool             // also decides accent stripping, as in HF (strip_accents: None)
    public let clsId: Int32, sepId: Int32, padId: Int32, unkId: Int32
    public let maskId: Int32?              // [MASK], where the vocabulary has it

    /// Words longer than this many scalars become [UNK] (HF `max_input_chars_per_word`).
    public static let maxInputCharsPerWord = 100
    static let continuationPrefix = "##"
    /// HF registers these as special added tokens: they are cut out of the raw text before normalisation.
    static let specialTokenNames = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

    let trie: VocabTrie
    let continuationNode: Int32            // trie node after "##"; -1 when no piece continues a word
    let specialTokens: [SpecialToken]      // longest first, so the first match is the leftmost-longest

    /// Reads `vocab.txt`: one token per line, id = line index (0-based). Accepts LF or CRLF.
    public init(vocabURL: URL, lowercase: Bool = true, maxLength: Int = 256) throws {
        let data: Data
        do {
            data = try Data(contentsOf: vocabURL)
        } catch {
            throw TokenizerError.unreadableVocab(path: vocabURL.path, reason: error.localizedDescription)
        }
        guard String(data: data, encoding: .utf8) != nil else {
            throw TokenizerError.unreadableVocab(path: vocabURL.path, reason: "not valid UTF-8")
        }
        var lines = data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        if lines.last?.isEmpty == true { lines.removeLast() }   // the newline that ends the file
        let tokens = lines.map { line -> String in
            let body = line.last == UInt8(ascii: "\r") ? line.dropLast() : line
            return String(decoding: body, as: UTF8.self)
        }
        try self.init(tokens: tokens, source: vocabURL.path, lowercase: lowercase, maxLength: maxLength)
    }

    /// A vocabulary given in memory: id = index.
    public init(vocab: [String], lowercase: Bool = true, maxLength: Int = 256) throws {
        try self.init(tokens: vocab, source: "(in-memory vocabulary)", lowercase: lowercase, maxLength: maxLength)
    }

    private init(tokens: [String], source: String, lowercase: Bool, maxLength: Int) throws {
        guard maxLength >= 2 else { throw TokenizerError.invalidMaxLength(maxLength) }
        var map = [String: Int32](minimumCapacity: tokens.count)
        for (index, token) in tokens.enumerated() {
            if let first = map[token] {
                throw TokenizerError.duplicateToken(token: token, line: index + 1, firstLine: Int(first) + 1, source: source)
            }
            map[token] = Int32(index)
        }
        func required(_ token: String) throws -> Int32 {
            guard let id = map[token] else { throw TokenizerError.missingSpecialToken(token: token, source: source) }
            return id
        }
        clsId = try required("[CLS]")
        sepId = try required("[SEP]")
        padId = try required("[PAD]")
        unkId = try required("[UNK]")
        maskId = map["[MASK]"]
        vocab = map
        idToToken = tokens
        self.maxLength = maxLength
        self.lowercase = lowercase
        trie = VocabTrie(tokens: tokens)
        continuationNode = trie.node(reachedBy: Array(Self.continuationPrefix.utf8)) ?? -1
        specialTokens = Self.specialTokenNames
            .compactMap { name in map[name].map { SpecialToken(scalars: Array(name.unicodeScalars), id: $0) } }
            .sorted { $0.scalars.count > $1.scalars.count }
    }

    /// Word pieces of `text`, without [CLS]/[SEP] and without truncation.
    public func tokenize(_ text: String) -> [String] {
        var ids: [Int32] = []
        appendTokenIds(of: text, to: &ids, limit: Int.max)
        return ids.map { idToToken[Int($0)] }
    }

    /// [CLS] + the first maxLength - 2 piece ids + [SEP].
    public func encode(_ text: String) -> [Int32] {
        var ids: [Int32] = [clsId]
        ids.reserveCapacity(min(maxLength, 64))
        appendTokenIds(of: text, to: &ids, limit: maxLength - 1)
        ids.append(sepId)
        return ids
    }

    /// As `encode`, truncated to at most `maxLength` ids ([CLS] and [SEP] included; the
    /// tokenizer's own `maxLength` still caps it).
    public func encode(_ text: String, maxLength limit: Int) -> [Int32] {
        let n = max(2, min(limit, maxLength))
        var ids: [Int32] = [clsId]
        ids.reserveCapacity(min(n, 64))
        appendTokenIds(of: text, to: &ids, limit: n - 1)
        ids.append(sepId)
        return ids
    }

    public func encodeBatch(_ texts: [String]) -> [[Int32]] {
        texts.map { encode($0) }
    }

    /// Appends the piece ids of `text` to `ids`, stopping once `ids` holds `limit` entries.
    func appendTokenIds(of text: String, to ids: inout [Int32], limit: Int) {
        guard ids.count < limit else { return }
        var pass = Pass(tokenizer: self, ids: ids, limit: limit)
        ids = []   // let the pass own the only reference, so appends do not copy
        let scalars = text.unicodeScalars
        var i = scalars.startIndex
        while i < scalars.endIndex, !pass.isFull {
            let c = scalars[i]
            if c == "[", let special = specialTokens.first(where: { scalars[i...].starts(with: $0.scalars) }) {
                pass.emitSpecial(special.id)
                i = scalars.index(i, offsetBy: special.scalars.count)
                continue
            }
            pass.feedRaw(c)
            i = scalars.index(after: i)
        }
        pass.finish()
        ids = pass.ids
        if ids.count > limit { ids.removeLast(ids.count - limit) }
    }
}

struct SpecialToken: Sendable {
    let scalars: [Unicode.Scalar]
    let id: Int32
}

// MARK: - One tokenisation pass

/// The streaming state of one call: scalars go in one at a time, ids come out.
/// Stages: feedRaw (clean, CJK) -> feedCleaned (buffer for NFD) -> feedDecomposed (drop Mn, lowercase)
/// -> split (whitespace, punctuation) -> endWord (WordPiece).
private struct Pass {
    let tokenizer: BertTokenizer
    let stripAccents: Bool
    let limit: Int
    var ids: [Int32]
    var pending: [Unicode.Scalar] = []   // a non-ASCII run awaiting NFD
    var word: [UInt8] = []               // UTF-8 of the current word (only its first 100 scalars)
    var wordScalars = 0

    init(tokenizer: BertTokenizer, ids: [Int32], limit: Int) {
        self.tokenizer = tokenizer
        self.stripAccents = tokenizer.lowercase
        self.limit = limit
        self.ids = ids
        pending.reserveCapacity(Self.maxPendingRun + 8)
        word.reserveCapacity(4 * BertTokenizer.maxInputCharsPerWord)
    }

    /// NFD runs are cut at about this length: Foundation's decomposition is quadratic in string length.
    static let maxPendingRun = 64

    var isFull: Bool { ids.count >= limit }

    mutating func emitSpecial(_ id: Int32) {
        flushPending()
        endWord()
        ids.append(id)
    }

    mutating func finish() {
        flushPending()
        endWord()
    }

    /// Clean text (drop NUL, U+FFFD and controls; whitespace -> space) and space out CJK ideographs.
    mutating func feedRaw(_ c: Unicode.Scalar) {
        let v = c.value
        if v < 0x80 {
            if v >= 0x20 && v != 0x7F { feedCleaned(c) }
            else if v == 0x09 || v == 0x0A || v == 0x0D { feedCleaned(" ") }
            return   // other ASCII controls, NUL included
        }
        if v == 0xFFFD { return }
        switch c.properties.generalCategory {
        case .control, .privateUse:
            return
        case .format:
            if isInHFCategoryTables(c) { return }
            feedCleaned(c)
        case .spaceSeparator, .lineSeparator, .paragraphSeparator:
            feedCleaned(" ")   // outside ASCII and U+0085 (a control), White_Space is exactly Z*
        default:
            if isCJKIdeograph(v) {
                feedCleaned(" "); feedCleaned(c); feedCleaned(" ")
            } else {
                feedCleaned(c)
            }
        }
    }

    /// Collects non-ASCII runs for NFD; a scalar below U+00C0 is a starter without a decomposition,
    /// so NFD never reaches across it and the run can be decomposed on its own.
    mutating func feedCleaned(_ c: Unicode.Scalar) {
        guard stripAccents else { feedDecomposed(c); return }
        if c.value < 0xC0 {
            flushPending()
            feedDecomposed(c)
            return
        }
        if pending.count >= Self.maxPendingRun && startsWithStarterAfterNFD(c) { flushPending() }
        pending.append(c)
    }

    mutating func flushPending() {
        guard !pending.isEmpty else { return }
        var run = String.UnicodeScalarView()
        run.append(contentsOf: pending)
        pending.removeAll(keepingCapacity: true)
        for d in String(run).decomposedStringWithCanonicalMapping.unicodeScalars { feedDecomposed(d) }
    }

    /// HF order: strip accents (NFD, then drop Mn) first, lowercase afterwards.
    mutating func feedDecomposed(_ c: Unicode.Scalar) {
        let v = c.value
        if v < 0x80 {
            if tokenizer.lowercase && v >= 0x41 && v <= 0x5A {
                splitASCII(Unicode.Scalar(UInt8(v + 0x20)))
            } else {
                splitASCII(c)
            }
            return
        }
        let p = c.properties
        let category = p.generalCategory
        if stripAccents && category == .nonspacingMark && isInHFCategoryTables(c) { return }
        if tokenizer.lowercase && p.changesWhenLowercased {
            // Full mapping, one scalar at a time as Rust's char::to_lowercase: İ -> i + U+0307, Σ -> σ.
            for l in p.lowercaseMapping.unicodeScalars {
                if l.value < 0x80 { splitASCII(l) } else { split(l, category: l.properties.generalCategory) }
            }
        } else {
            split(c, category: category)
        }
    }

    /// BertPreTokenizer: whitespace ends a word; each punctuation scalar is a word of its own.
    mutating func splitASCII(_ c: Unicode.Scalar) {
        let v = c.value
        if v == 0x20 || v == 0x09 || v == 0x0A || v == 0x0D { endWord(); return }
        if isASCIIPunctuation(v) { endWord(); appendToWord(c); endWord(); return }
        appendToWord(c)
    }

    /// The same for a non-ASCII scalar of the given category. Outside ASCII, White_Space is Z* plus
    /// U+0085, and cleaning has already removed U+0085.
    mutating func split(_ c: Unicode.Scalar, category: Unicode.GeneralCategory) {
        switch category {
        case .spaceSeparator, .lineSeparator, .paragraphSeparator:
            endWord()
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation,
             .initialPunctuation, .finalPunctuation, .otherPunctuation:
            if isInHFCategoryTables(c) {
                endWord(); appendToWord(c); endWord()
            } else {
                appendToWord(c)
            }
        default:
            appendToWord(c)
        }
    }

    mutating func appendToWord(_ c: Unicode.Scalar) {
        wordScalars += 1
        // Past the limit the word is [UNK] anyway; keep counting, stop storing (bounded memory).
        guard wordScalars <= BertTokenizer.maxInputCharsPerWord else { return }
        word.append(contentsOf: UTF8.encode(c)!)
    }

    /// WordPiece, greedy longest-match-first; a word with any unmatched rest is one [UNK].
    mutating func endWord() {
        guard wordScalars > 0 else { return }
        defer { word.removeAll(keepingCapacity: true); wordScalars = 0 }
        guard wordScalars <= BertTokenizer.maxInputCharsPerWord else { ids.append(tokenizer.unkId); return }
        let mark = ids.count
        var start = 0
        while start < word.count {
            let from = start == 0 ? VocabTrie.root : tokenizer.continuationNode
            guard from >= 0, let match = tokenizer.trie.longestMatch(in: word, from: start, startNode: from) else {
                ids.removeSubrange(mark...)
                ids.append(tokenizer.unkId)
                return
            }
            ids.append(match.id)
            start = match.end
        }
    }
}

// MARK: - Character classes, as HF tokenizers defines them

/// HF takes Cf, Mn and P* from the `unicode_categories` crate, whose tables are Unicode 8.0: a scalar
/// assigned later is in none of them (e.g. a newer format character is kept, a newer mark not dropped).
@inline(__always)
private func isInHFCategoryTables(_ c: Unicode.Scalar) -> Bool {
    guard let age = c.properties.age else { return false }
    return age.major < 8 || (age.major == 8 && age.minor == 0)
}

/// HF's ranges; note 2B920 (not 2B820, as in Google's BERT) starts the fifth supplementary block.
@inline(__always)
private func isCJKIdeograph(_ v: UInt32) -> Bool {
    switch v {
    case 0x4E00...0x9FFF, 0x3400...0x4DBF, 0x20000...0x2A6DF, 0x2A700...0x2B73F,
         0x2B740...0x2B81F, 0x2B920...0x2CEAF, 0xF900...0xFAFF, 0x2F800...0x2FA1F:
        return true
    default:
        return false
    }
}

@inline(__always)
private func isASCIIPunctuation(_ v: UInt32) -> Bool {
    (33...47).contains(v) || (58...64).contains(v) || (91...96).contains(v) || (123...126).contains(v)
}

/// False for the scalars whose canonical decomposition begins with a non-starter although they are
/// starters themselves (U+0F73, U+0F75, U+0F81): an NFD run must not be cut before them.
@inline(__always)
private func startsWithStarterAfterNFD(_ c: Unicode.Scalar) -> Bool {
    guard c.properties.canonicalCombiningClass == .notReordered else { return false }
    switch c.value {
    case 0x0F73, 0x0F75, 0x0F81: return false
    default: return true
    }
}

// MARK: - Vocabulary trie

/// Byte trie over the vocabulary (UTF-8), flattened into arrays so a WordPiece step walks it without
/// hashing or building substrings. "##" pieces hang below the "##" node.
struct VocabTrie: Sendable {
    static let root: Int32 = 0
    private let tokenIdAtNode: [Int32]   // (nodes) id of the token that ends here, or -1
    private let edgeStart: [Int32]       // (nodes + 1) the edges of node n are edgeStart[n] ..< edgeStart[n + 1]
    private let edgeByte: [UInt8]        // (edges) sorted within each node
    private let edgeChild: [Int32]       // (edges)

    init(tokens: [String]) {
        var ids: [Int32] = [-1]
        var children: [Int: Int32] = [:]   // (node << 8 | byte) -> child, only while building
        for (index, token) in tokens.enumerated() where !token.isEmpty {
            var node: Int32 = Self.root
            for byte in token.utf8 {
                let key = Int(node) << 8 | Int(byte)
                if let child = children[key] {
                    node = child
                } else {
                    let child = Int32(ids.count)
                    ids.append(-1)
                    children[key] = child
                    node = child
                }
            }
            ids[Int(node)] = Int32(index)
        }
        let edges = children.map { (key: $0.key, child: $0.value) }.sorted { $0.key < $1.key }
        var start = [Int32](repeating: 0, count: ids.count + 1)
        for e in edges { start[(e.key >> 8) + 1] += 1 }
        for n in 0..<ids.count { start[n + 1] += start[n] }
        tokenIdAtNode = ids
        edgeStart = start
        edgeByte = edges.map { UInt8(truncatingIfNeeded: $0.key) }
        edgeChild = edges.map { $0.child }
    }

    /// The child of `node` along `byte`, or -1.
    @inline(__always)
    func child(of node: Int32, byte: UInt8) -> Int32 {
        var lo = Int(edgeStart[Int(node)]), hi = Int(edgeStart[Int(node) + 1])
        while hi - lo > 8 {
            let mid = (lo + hi) >> 1
            if edgeByte[mid] < byte { lo = mid + 1 } else { hi = mid + 1 }   // keep mid: it may be the match
        }
        while lo < hi {
            if edgeByte[lo] == byte { return edgeChild[lo] }
            lo += 1
        }
        return -1
    }

    func node(reachedBy bytes: [UInt8]) -> Int32? {
        var node = Self.root
        for b in bytes {
            node = child(of: node, byte: b)
            if node < 0 { return nil }
        }
        return node
    }

    /// The longest token spelled by bytes[start...] below `startNode`. A vocabulary token is whole
    /// UTF-8, so a match always ends on a scalar boundary.
    func longestMatch(in bytes: [UInt8], from start: Int, startNode: Int32) -> (end: Int, id: Int32)? {
        var node = startNode
        var best: (end: Int, id: Int32)?
        var i = start
        while i < bytes.count {
            node = child(of: node, byte: bytes[i])
            if node < 0 { break }
            i += 1
            let id = tokenIdAtNode[Int(node)]
            if id >= 0 { best = (i, id) }
        }
        return best
    }
}
