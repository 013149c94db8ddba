// The properties each fuzz target checks. An input that is merely invalid must come back as the
// parser's own error type; anything else (another error type, a trap, a wrong result) is a finding
// and stops the process through `violated`, which is what libFuzzer records as a crash.
import DualReplay
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

enum FuzzTarget: String, CaseIterable {
    case safetensors, jsonl, tokenizer

    /// Runs the target's checks on one input; true if the parser accepted it (for JSONL: under the
    /// default options), false if it was rejected with the parser's own error.
    @discardableResult
    func check(_ input: UnsafeRawBufferPointer) -> Bool {
        switch self {
        case .safetensors: return checkSafeTensors(input)
        case .jsonl: return checkJSONL(input)
        case .tokenizer: checkTokenizer(input); return true
        }
    }
}

/// A broken property: print it and trap, so libFuzzer saves the input as a crash artifact.
func violated(_ target: FuzzTarget, _ message: String) -> Never {
    fatalError("dr-fuzz \(target.rawValue): \(message)")
}

private func mustSucceed<T>(_ target: FuzzTarget, _ what: String, _ body: () throws -> T) -> T {
    do {
        return try body()
    } catch {
        violated(target, "\(what) threw \(error)")
    }
}

// MARK: - Scratch files

/// The parsers read paths, not bytes, so each input goes through a per-process file, in /dev/shm
/// when there is one (no disk I/O per execution). Removed at exit.
struct ScratchFile {
    let path: String

    init(_ name: String) {
        let dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : NSTemporaryDirectory()
        path = (dir as NSString).appendingPathComponent("dr-fuzz-\(getpid())-\(name)")
        ScratchFile.register(path)
    }

    var url: URL { URL(fileURLWithPath: path) }

    /// Replaces the file's contents. Safe for safetensors: every mapping of it has been dropped.
    func write(_ bytes: UnsafeRawBufferPointer) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { fatalError("dr-fuzz: cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var offset = 0
        while offset < bytes.count {
            let n = posixWrite(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { fatalError("dr-fuzz: cannot write \(path): \(String(cString: strerror(errno)))") }
            offset += n
        }
    }

    func write(_ data: Data) {
        data.withUnsafeBytes { write($0) }
    }

    private static let registry = ScratchRegistry()

    private static func register(_ path: String) {
        registry.add(path)
    }
}

#if canImport(Glibc)
private let posixWrite = Glibc.write
#else
private let posixWrite = Darwin.write
#endif

/// Paths to unlink at exit (a crash leaves them, next to the artifact that explains them).
private final class ScratchRegistry: @unchecked Sendable {
    private let lock = NSLock()
    private var paths: [String] = []

    init() {
        atexit { ScratchFile.removeAll() }
    }

    func add(_ path: String) {
        lock.lock()
        paths.append(path)
        lock.unlock()
    }

    func removeAll() {
        lock.lock()
        for path in paths { unlink(path) }
        paths.removeAll()
        lock.unlock()
    }
}

extension ScratchFile {
    fileprivate static func removeAll() { registry.removeAll() }
}

private let safeTensorsScratch = ScratchFile("input.safetensors")
private let rewrittenScratch = ScratchFile("rewritten.safetensors")
private let jsonlScratch = ScratchFile("input.jsonl")

// MARK: - (a) SafeTensors reader

/// Opening must succeed or throw a SafeTensorsError. When it succeeds: every tensor lies inside the
/// data section with exactly dtype x shape bytes, no two overlap, every read returns the bytes of the
/// file (decoded independently here) or throws the documented error, and a file of F32/I64 tensors
/// survives SafeTensorsWriter -> SafeTensorsFile unchanged.
func checkSafeTensors(_ input: UnsafeRawBufferPointer) -> Bool {
    let target = FuzzTarget.safetensors
    safeTensorsScratch.write(input)
    let file: SafeTensorsFile
    do {
        file = try SafeTensorsFile(url: safeTensorsScratch.url)
    } catch let error as SafeTensorsError {
        guard let message = error.errorDescription, message.contains(safeTensorsScratch.path) else {
            violated(target, "error message does not name the file: \(error)")
        }
        return false
    } catch {
        violated(target, "init threw \(type(of: error)), not SafeTensorsError: \(error)")
    }

    let headerLength = Int(UInt64(littleEndian: input.loadUnaligned(as: UInt64.self)))
    guard headerLength <= input.count - 8 else { violated(target, "accepted header length \(headerLength) for \(input.count) bytes") }
    let dataSection = UnsafeRawBufferPointer(rebasing: input[(8 + headerLength)...])

    var occupied: [(range: Range<Int>, name: String)] = []
    var floatValues: [String: [Float]] = [:]
    var intValues: [String: [Int64]] = [:]
    for name in file.names {
        let info = mustSucceed(target, "info(\(name))") { try file.info(name) }
        let range = info.byteRange
        guard info.name == name, info.shape.allSatisfy({ $0 >= 0 }) else { violated(target, "bad info \(info)") }
        guard range.lowerBound >= 0, range.upperBound <= dataSection.count else {
            violated(target, "tensor '\(name)' range \(range) outside a data section of \(dataSection.count) bytes")
        }
        guard range.count == info.count * info.dtype.byteSize else {
            violated(target, "tensor '\(name)' \(info.dtype) \(info.shape) spans \(range.count) bytes")
        }
        if !range.isEmpty { occupied.append((range, name)) }
        let bytes = UnsafeRawBufferPointer(rebasing: dataSection[range])

        switch info.dtype {
        case .f32, .f16, .bf16:
            let values = mustSucceed(target, "floats(\(name))") { try file.floats(name) }
            guard values.count == info.count else { violated(target, "floats(\(name)) returned \(values.count) of \(info.count)") }
            for i in values.indices where !sameFloat(values[i], decodeFloat(bytes, i, info.dtype)) {
                violated(target, "floats(\(name))[\(i)] = \(values[i]), file holds \(decodeFloat(bytes, i, info.dtype))")
            }
            var copy = [Float](repeating: .nan, count: info.count)
            copy.withUnsafeMutableBufferPointer { dst in
                mustSucceed(target, "copyFloats(\(name))") { try file.copyFloats(name, into: dst.baseAddress!, count: dst.count) }
            }
            guard copy.map(\.bitPattern) == values.map(\.bitPattern) else { violated(target, "copyFloats(\(name)) differs from floats") }
            var tooLong = [Float](repeating: 0, count: info.count + 1)
            expectError(target, "copyFloats(\(name), count + 1)", { if case .countMismatch = $0 { return true }; return false }) {
                try tooLong.withUnsafeMutableBufferPointer { try file.copyFloats(name, into: $0.baseAddress!, count: $0.count) }
            }
            expectError(target, "int64s(\(name))", isWrongDType) { _ = try file.int64s(name) }
            floatValues[name] = values
        case .i64, .i32, .i16, .i8, .u32, .u16, .u8:
            let values = mustSucceed(target, "int64s(\(name))") { try file.int64s(name) }
            guard values.count == info.count else { violated(target, "int64s(\(name)) returned \(values.count) of \(info.count)") }
            for i in values.indices where values[i] != decodeInteger(bytes, i, info.dtype) {
                violated(target, "int64s(\(name))[\(i)] = \(values[i]), file holds \(decodeInteger(bytes, i, info.dtype))")
            }
            expectError(target, "floats(\(name))", isWrongDType) { _ = try file.floats(name) }
            intValues[name] = values
        case .f64, .f8e4m3, .f8e5m2, .u64, .bool:
            expectError(target, "floats(\(name))", isWrongDType) { _ = try file.floats(name) }
            expectError(target, "int64s(\(name))", isWrongDType) { _ = try file.int64s(name) }
        }
    }
    // "__metadata__" never names a tensor.
    expectError(target, "info(__metadata__)", { if case .missingTensor = $0 { return true }; return false }) {
        _ = try file.info("__metadata__")
    }

    occupied.sort { $0.range.lowerBound < $1.range.lowerBound }
    for (a, b) in zip(occupied, occupied.dropFirst()) where b.range.lowerBound < a.range.upperBound {
        violated(target, "tensors '\(a.name)' \(a.range) and '\(b.name)' \(b.range) overlap")
    }

    // Round trip through the writer, for files it can express (F32 and I64 only).
    guard file.tensors.values.allSatisfy({ $0.dtype == .f32 || $0.dtype == .i64 }) else { return true }
    var writer = SafeTensorsWriter()
    writer.metadata = file.metadata
    for name in file.names {
        let shape = file.tensors[name]!.shape
        mustSucceed(target, "writer.add(\(name))") {
            if let values = floatValues[name] { try writer.add(name, shape: shape, floats: values) }
            else { try writer.add(name, shape: shape, int64s: intValues[name]!) }
        }
    }
    let rewritten = writer.serialized()
    let rewrittenHeader = rewritten.withUnsafeBytes { Int(UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self))) }
    guard rewrittenHeader % 8 == 0 else { violated(target, "writer header of \(rewrittenHeader) bytes is not 8-aligned") }
    rewrittenScratch.write(rewritten)
    let again = mustSucceed(target, "reading the writer's output") { try SafeTensorsFile(url: rewrittenScratch.url) }
    guard again.names == file.names, again.metadata == file.metadata else {
        violated(target, "round trip changed names or metadata: \(file.names) -> \(again.names)")
    }
    for name in file.names {
        let before = file.tensors[name]!, after = again.tensors[name]!
        guard before.dtype == after.dtype, before.shape == after.shape else { violated(target, "round trip changed '\(name)'") }
        if let values = floatValues[name] {
            let reread = mustSucceed(target, "floats(\(name)) after round trip") { try again.floats(name) }
            guard reread.map(\.bitPattern) == values.map(\.bitPattern) else { violated(target, "round trip changed the values of '\(name)'") }
        } else {
            let reread = mustSucceed(target, "int64s(\(name)) after round trip") { try again.int64s(name) }
            guard reread == intValues[name]! else { violated(target, "round trip changed the values of '\(name)'") }
        }
    }
    return true
}

private func isWrongDType(_ error: SafeTensorsError) -> Bool {
    if case .wrongDType = error { return true }
    return false
}

private func expectError(_ target: FuzzTarget, _ what: String, _ matches: (SafeTensorsError) -> Bool, _ body: () throws -> Void) {
    do {
        try body()
    } catch let error as SafeTensorsError {
        if matches(error) { return }
        violated(target, "\(what) threw the wrong error: \(error)")
    } catch {
        violated(target, "\(what) threw \(type(of: error)): \(error)")
    }
    violated(target, "\(what) did not throw")
}

/// Element `i` decoded without the reader's code: F16 through the standard library's Float16.
private func decodeFloat(_ bytes: UnsafeRawBufferPointer, _ i: Int, _ dtype: SafeTensorsDType) -> Float {
    switch dtype {
    case .f32: return Float(bitPattern: UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
    case .f16: return Float(Float16(bitPattern: UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))))
    case .bf16: return Float(bitPattern: UInt32(UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) << 16)
    default: preconditionFailure("not a float dtype: \(dtype)")
    }
}

/// Same value; any NaN matches any NaN (a conversion may quiet a signalling NaN).
private func sameFloat(_ a: Float, _ b: Float) -> Bool {
    a.isNaN ? b.isNaN : a.bitPattern == b.bitPattern
}

private func decodeInteger(_ bytes: UnsafeRawBufferPointer, _ i: Int, _ dtype: SafeTensorsDType) -> Int64 {
    func load<T: FixedWidthInteger>(_: T.Type) -> T { T(littleEndian: bytes.loadUnaligned(fromByteOffset: MemoryLayout<T>.size * i, as: T.self)) }
    switch dtype {
    case .i64: return load(Int64.self)
    case .i32: return Int64(load(Int32.self))
    case .i16: return Int64(load(Int16.self))
    case .i8: return Int64(load(Int8.self))
    case .u32: return Int64(load(UInt32.self))
    case .u16: return Int64(load(UInt16.self))
    case .u8: return Int64(load(UInt8.self))
    default: preconditionFailure("not a widening integer dtype: \(dtype)")
    }
}

// MARK: - (b) JSONL loader

/// Option sets every input is loaded with: the defaults, and two that switch on the other policies.
private let jsonlOptionSets: [LoadOptions] = [
    LoadOptions(),
    LoadOptions(excludedDomains: [], domainPrefix: "p", maxExamplesPerSplit: 2, subsampleSeed: 7,
                multiLabel: .keep, allowSharedLabels: true, unknownLabels: .drop),
    LoadOptions(multiLabel: .separate, maxLineBytes: 200),
]

/// Loading must return a valid dataset or throw a DataError naming the file. Valid: at least one
/// domain, unique names, every split non-empty, examples filed under their own domain and split,
/// labels non-empty and (unless kept) single, val/test labels known to train, `intents` = the train
/// labels, limits and label sharing respected, and the report's counts adding up to the lines.
func checkJSONL(_ input: UnsafeRawBufferPointer) -> Bool {
    let target = FuzzTarget.jsonl
    jsonlScratch.write(input)
    let url = jsonlScratch.url
    var acceptedByDefault = false
    for (index, options) in jsonlOptionSets.enumerated() {
        let dataset: IntentDataset
        do {
            dataset = try IntentDataset.load(jsonl: url, options: options)
        } catch let error as DataError {
            checkDataError(error, target: target)
            continue
        } catch {
            violated(target, "load threw \(type(of: error)), not DataError: \(error)")
        }
        if let problem = datasetProblem(dataset, options: options) { violated(target, "\(problem) (options \(options))") }
        if index == 0 { acceptedByDefault = true }
    }

    let options = LoadOptions()
    do {
        let examples = try IntentDataset.loadMultiIntentTest(jsonl: url, options: options)
        for e in examples where e.split != .test || e.intents.count < 2 || e.intents.contains("") || options.excludedDomains.contains(e.domain) {
            violated(target, "loadMultiIntentTest returned \(e)")
        }
    } catch let error as DataError {
        checkDataError(error, target: target)
    } catch {
        violated(target, "loadMultiIntentTest threw \(type(of: error)), not DataError: \(error)")
    }
    return acceptedByDefault
}

private func checkDataError(_ error: DataError, target: FuzzTarget) {
    guard error.file == jsonlScratch.path, let message = error.errorDescription, message.contains(jsonlScratch.path) else {
        violated(target, "error does not name the file: \(error)")
    }
}

/// What is wrong with a loaded dataset, or nil.
func datasetProblem(_ dataset: IntentDataset, options: LoadOptions) -> String? {
    if dataset.domains.isEmpty { return "no domains" }
    if Set(dataset.domains.map(\.name)).count != dataset.domains.count { return "duplicate domain names" }
    var labelDomains: [String: Set<String>] = [:]
    var total = 0
    for d in dataset.domains {
        if let prefix = options.domainPrefix, !prefix.isEmpty, !d.name.hasPrefix(prefix + "/") { return "domain \(d.name) lacks its prefix" }
        if options.domainPrefix == nil, options.excludedDomains.contains(d.name) { return "excluded domain \(d.name) loaded" }
        let trainLabels = Set(d.train.flatMap(\.intents))
        if d.intents != trainLabels.sorted() { return "domain \(d.name): intents \(d.intents) are not its train labels" }
        for split in Split.allCases {
            let rows = d.examples(split)
            if rows.isEmpty { return "domain \(d.name): empty \(split) split" }
            if let limit = options.maxExamplesPerSplit, rows.count > limit { return "domain \(d.name): \(rows.count) \(split) rows over \(limit)" }
            for e in rows {
                if e.domain != d.name || e.split != split { return "\(e) filed under \(d.name)/\(split)" }
                if e.intents.isEmpty || e.intents.contains("") { return "\(e) has an empty label" }
                if options.multiLabel != .keep && e.intents.count != 1 { return "\(e) has several labels under \(options.multiLabel)" }
                if split != .train, let unknown = e.intents.first(where: { !trainLabels.contains($0) }) {
                    return "\(split) label \(unknown) of \(d.name) is not in train"
                }
                for label in e.intents { labelDomains[label, default: []].insert(d.name) }
            }
            total += rows.count
        }
        if options.multiLabel != .separate && !d.multiIntentTest.isEmpty { return "multiIntentTest filled under \(options.multiLabel)" }
        if let limit = options.maxExamplesPerSplit, d.multiIntentTest.count > limit { return "multiIntentTest over \(limit)" }
        for e in d.multiIntentTest {
            if e.domain != d.name || e.split != .test || e.intents.count < 2 { return "bad multi-intent test example \(e)" }
            if let unknown = e.intents.first(where: { !trainLabels.contains($0) }) { return "multi-intent label \(unknown) not in train" }
        }
        total += d.multiIntentTest.count
    }
    if !options.allowSharedLabels, let shared = labelDomains.first(where: { $0.value.count > 1 }) {
        return "label \(shared.key) under domains \(shared.value.sorted())"
    }
    let r = dataset.report
    if r.rowsKept != total { return "report.rowsKept \(r.rowsKept) but \(total) examples" }
    let accounted = r.blankLines + r.excludedRows + r.droppedNoIntent + r.droppedMultiIntent + r.droppedUnknownLabel
        + r.subsampledAway + r.rowsKept
    if accounted != r.lines { return "report accounts for \(accounted) of \(r.lines) lines: \(r)" }
    return nil
}

// MARK: - (c) Tokenizer

/// The vocabulary: $DR_FUZZ_VOCAB, else $DR_MODEL/vocab.txt, else the default model's.
func vocabularyURL() -> URL {
    let env = ProcessInfo.processInfo.environment
    if let path = env["DR_FUZZ_VOCAB"], !path.isEmpty { return URL(fileURLWithPath: path) }
    let model = env["DR_MODEL"].flatMap { $0.isEmpty ? nil : $0 } ?? "models/all-MiniLM-L6-v2"
    return URL(fileURLWithPath: model).appendingPathComponent("vocab.txt")
}

/// Three tokenizers over one vocabulary: the default, a truncating one, and a cased one.
struct FuzzTokenizers {
    let full: BertTokenizer
    let short: BertTokenizer
    let cased: BertTokenizer

    init(vocabURL: URL) throws {
        full = try BertTokenizer(vocabURL: vocabURL, maxLength: 256)
        short = try BertTokenizer(vocabURL: vocabURL, maxLength: 8)
        cased = try BertTokenizer(vocabURL: vocabURL, lowercase: false, maxLength: 256)
    }
}

/// Loaded on first use; a missing vocabulary is a setup error, not a finding.
let fuzzTokenizers: FuzzTokenizers = {
    let url = vocabularyURL()
    do {
        return try FuzzTokenizers(vocabURL: url)
    } catch {
        fputs("dr-fuzz tokenizer: \(error.localizedDescription) (run `make setup`, or set DR_FUZZ_VOCAB)\n", stderr)
        exit(2)
    }
}()

/// The bytes as UTF-8 (invalid sequences become U+FFFD). Every encoding is [CLS] ... [SEP], at most
/// maxLength ids, all in the vocabulary; it is exactly [CLS] + the first maxLength - 2 pieces of
/// `tokenize` + [SEP]; and the truncating tokenizer returns a prefix of the full pieces.
func checkTokenizer(_ input: UnsafeRawBufferPointer) {
    let target = FuzzTarget.tokenizer
    let text = String(decoding: input, as: UTF8.self)
    let t = fuzzTokenizers
    var encodings: [[Int32]] = []
    for tokenizer in [t.full, t.short, t.cased] {
        let ids = tokenizer.encode(text)
        let settings = "maxLength \(tokenizer.maxLength), lowercase \(tokenizer.lowercase)"
        guard ids.count >= 2, ids.count <= tokenizer.maxLength, ids.first == tokenizer.clsId, ids.last == tokenizer.sepId else {
            violated(target, "encode (\(settings)) returned \(ids)")
        }
        if let bad = ids.first(where: { $0 < 0 || Int($0) >= tokenizer.idToToken.count }) { violated(target, "id \(bad) outside the vocabulary") }
        encodings.append(ids)
        if tokenizer.maxLength < t.full.maxLength { continue }   // its pieces are the full tokenizer's

        let pieceIds = tokenizer.tokenize(text).map { piece -> Int32 in
            guard let id = tokenizer.vocab[piece] else { violated(target, "piece \(piece.debugDescription) is not in the vocabulary") }
            return id
        }
        let expected = [tokenizer.clsId] + pieceIds.prefix(tokenizer.maxLength - 2) + [tokenizer.sepId]
        guard ids == expected else { violated(target, "encode (\(settings)) = \(ids), but tokenize gives \(expected) after truncation") }
    }
    let (full, short) = (encodings[0], encodings[1])
    guard Array(short.dropLast()) == Array(full.dropLast().prefix(short.count - 1)) else {
        violated(target, "truncated encoding \(short) is not a prefix of \(full)")
    }
}
