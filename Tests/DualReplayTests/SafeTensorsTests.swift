import Foundation
import Testing
@testable import DualReplay
#if canImport(Glibc)
import Glibc
#endif

@Suite struct SafeTensorsTests {
    // MARK: Helpers

    /// A small file exercising both writer dtypes, an empty tensor, a scalar and metadata.
    static func sampleWriter() throws -> SafeTensorsWriter {
        var rng = SeededRandom(seed: 7)
        var w = SafeTensorsWriter()
        try w.add("layer.weight", shape: [3, 5], floats: rng.floats(15))
        try w.add("odd", shape: [3], floats: [1.5, -2.25, 3])     // 12 bytes: the next tensor must not need a gap
        try w.add("ids", shape: [1, 4], int64s: [0, 1, -7, Int64.max])
        try w.add("empty", shape: [0, 4], floats: [])
        try w.add("scalar", shape: [], floats: [42])
        w.metadata = ["format": "pt", "note": "quotes \" and \\ and\nnewline, ünïcode"]
        return w
    }

    /// A file assembled by hand: 8-byte length, the header text (space-padded to 8 if asked), data.
    static func rawFile(_ header: String, data: [UInt8] = [], pad: Bool = true) -> Data {
        var json = Array(header.utf8)
        if pad { json += [UInt8](repeating: 0x20, count: (8 - json.count % 8) % 8) }
        var file = Data()
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { file.append(contentsOf: $0) }
        file.append(contentsOf: json)
        file.append(contentsOf: data)
        return file
    }

    /// Writes `bytes` to a fresh file and opens it; returns the error it throws (nil if it opened).
    static func openError(_ bytes: Data, name: String = "bad-file.safetensors") throws -> SafeTensorsError? {
        let dir = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent(name)
        try bytes.write(to: url)
        do {
            _ = try SafeTensorsFile(url: url)
            return nil
        } catch let error as SafeTensorsError {
            #expect(error.localizedDescription.contains(name), "message must name the file: \(error.localizedDescription)")
            return error
        }
    }

    /// Expects `bytes` to be refused with an error for which `matches` holds.
    static func expectRefused(_ bytes: Data, sourceLocation: SourceLocation = #_sourceLocation,
                              _ matches: (SafeTensorsError) -> Bool) throws {
        let error = try openError(bytes)
        #expect(error != nil, "file was accepted", sourceLocation: sourceLocation)
        if let error { #expect(matches(error), "unexpected error: \(error.localizedDescription)", sourceLocation: sourceLocation) }
    }

    // MARK: Real files

    @Test func readsTheRealModel() throws {
        let file = try SafeTensorsFile(url: try TestPaths.require(TestPaths.model.appendingPathComponent("model.safetensors")))
        #expect(file.tensors.count == 104)
        #expect(file.names == file.tensors.keys.sorted())
        #expect(file.metadata["format"] == "pt")

        let wte = try file.info("embeddings.word_embeddings.weight")
        #expect(wte.dtype == .f32)
        #expect(wte.shape == [30522, 384])
        #expect(wte.count == 30522 * 384)
        let values = try file.floats("embeddings.word_embeddings.weight")
        #expect(values.count == wte.count)
        #expect(values.allSatisfy { $0.isFinite })

        let ids = try file.info("embeddings.position_ids")
        #expect(ids.dtype == .i64)
        #expect(ids.shape == [1, 512])
        #expect(try file.int64s("embeddings.position_ids") == Array(0..<512))

        // copyFloats agrees with floats.
        let bias = try file.floats("embeddings.LayerNorm.bias")
        var copy = [Float](repeating: .nan, count: bias.count)
        try copy.withUnsafeMutableBufferPointer { try file.copyFloats("embeddings.LayerNorm.bias", into: $0.baseAddress!, count: $0.count) }
        #expect(copy == bias)
    }

    @Test func readsTheGoldenFixture() throws {
        let file = try SafeTensorsFile(url: try TestPaths.require(TestPaths.fixtures.appendingPathComponent("minilm_golden.safetensors")))
        let info = try file.info("batch.embedding")
        #expect(info.dtype == .f32)
        #expect(info.shape == [49, 384])
        #expect(file.metadata["model"] == "sentence-transformers/all-MiniLM-L6-v2")
        // Sentence embeddings are L2-normalised: a check that the bytes are read as the right floats.
        let e = try file.floats("batch.embedding")
        for row in 0..<49 {
            let norm = e[(row * 384)..<((row + 1) * 384)].reduce(0) { $0 + $1 * $1 }.squareRoot()
            #expect(abs(norm - 1) < 1e-4)
        }
    }

    // MARK: Round trip and layout

    @Test func roundTrip() throws {
        let writer = try Self.sampleWriter()
        let dir = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("round.safetensors")
        try writer.write(to: url)
        #expect(try Data(contentsOf: url) == writer.serialized())

        let file = try SafeTensorsFile(url: url)
        #expect(file.names == ["empty", "ids", "layer.weight", "odd", "scalar"])
        #expect(file.metadata == writer.metadata)
        var rng = SeededRandom(seed: 7)
        let weights = rng.floats(15)
        #expect(try file.floats("layer.weight").map(\.bitPattern) == weights.map(\.bitPattern))
        #expect(try file.info("layer.weight").shape == [3, 5])
        #expect(try file.floats("odd") == [1.5, -2.25, 3])
        #expect(try file.int64s("ids") == [0, 1, -7, Int64.max])
        #expect(try file.info("ids").dtype == .i64)
        #expect(try file.info("ids").shape == [1, 4])
        #expect(try file.floats("empty") == [])
        #expect(try file.info("empty").shape == [0, 4])
        #expect(try file.floats("scalar") == [42])
        #expect(try file.info("scalar").shape == [])

        // Reference-reader layout: contiguous data, each tensor aligned to its element size, and
        // an 8-byte-aligned data section after a space-padded header.
        let bytes = writer.serialized()
        let n = Int(bytes.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        #expect(n % 8 == 0)
        #expect(bytes[8 + n - 1] == UInt8(ascii: "}") || bytes[8 + n - 1] == 0x20)
        let ranges = file.tensors.values.map(\.byteRange).sorted { $0.lowerBound < $1.lowerBound }
        var end = 0
        for r in ranges where !r.isEmpty {
            #expect(r.lowerBound == end)
            end = r.upperBound
        }
        #expect(end == bytes.count - 8 - n)
        for info in file.tensors.values { #expect(info.byteRange.lowerBound % info.dtype.byteSize == 0) }
    }

    @Test func headerIsSortedJSON() throws {
        let bytes = try Self.sampleWriter().serialized()
        let n = Int(bytes.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        let text = String(decoding: bytes[8..<(8 + n)], as: UTF8.self)
        let keys = ["__metadata__", "empty", "ids", "layer.weight", "odd", "scalar"]
        let positions = keys.map { text.range(of: "\"\($0)\":")!.lowerBound }
        #expect(positions == positions.sorted())
        #expect(try JSONSerialization.jsonObject(with: Data(text.utf8)) is [String: Any])
    }

    @Test func acceptsPythonStylePaddingAndUnalignedData() throws {
        // Python's safetensors pads the header with spaces to a multiple of 8.
        let floats: [Float] = [1, -0.5]
        let data = floats.withUnsafeBytes { Array($0) }
        let header = #"{"__metadata__":{"format":"pt"},"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#
        let padded = Self.rawFile(header, data: data, pad: true)
        let dir = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("py.safetensors")
        try padded.write(to: url)
        let file = try SafeTensorsFile(url: url)
        #expect(try file.floats("x") == floats)
        #expect(file.metadata == ["format": "pt"])

        // Without padding the data is not 4-byte aligned in the file; reading must still work.
        let unaligned = Self.rawFile(header + " ", data: data, pad: false)
        try unaligned.write(to: url)
        #expect((unaligned.count - data.count) % 4 != 0)
        #expect(try SafeTensorsFile(url: url).floats("x") == floats)
    }

    @Test func zeroSizeTensorsOverlapNothing() throws {
        let header = #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},"c":{"dtype":"I64","shape":[3,0],"data_offsets":[8,8]}}"#
        #expect(try Self.openError(Self.rawFile(header, data: [UInt8](repeating: 0, count: 8))) == nil)
    }

    // MARK: Refusals

    @Test func refusesTruncatedFiles() throws {
        let full = try Self.sampleWriter().serialized()
        let n = Int(full.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        for cut in [0, 1, 7] {
            try Self.expectRefused(full.prefix(cut)) { $0 == .fileTooShort(path: $0.path, size: cut) }
        }
        for cut in [8, 9, 8 + n / 2, 8 + n - 1] {
            try Self.expectRefused(full.prefix(cut)) { if case .headerLengthInvalid = $0 { return true }; return false }
        }
        for cut in [8 + n, 8 + n + 1, full.count - 9, full.count - 1] {
            try Self.expectRefused(full.prefix(cut)) { if case .dataOutOfBounds = $0 { return true }; return false }
        }
        #expect(try Self.openError(full) == nil)
    }

    @Test func refusesAbsurdHeaderLength() throws {
        var bytes = Data()
        withUnsafeBytes(of: UInt64.max.littleEndian) { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: Array("{}".utf8))
        try Self.expectRefused(bytes) { if case .headerLengthInvalid(_, UInt64.max, 10) = $0 { return true }; return false }

        // Over the 100 MB limit even though the (sparse) file is large enough.
        let dir = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("huge-header.safetensors")
        var head = Data()
        withUnsafeBytes(of: UInt64(110_000_000).littleEndian) { head.append(contentsOf: $0) }
        try head.write(to: url)
        #expect(truncate(url.path, 120_000_000) == 0)
        #expect(throws: SafeTensorsError.headerLengthInvalid(path: url.path, headerLength: 110_000_000, fileSize: 120_000_000)) {
            try SafeTensorsFile(url: url)
        }
    }

    @Test func refusesGarbageHeaders() throws {
        try Self.expectRefused(Self.rawFile("this is not json")) { if case .headerNotJSON = $0 { return true }; return false }
        try Self.expectRefused(Self.rawFile(#"{"a": {"dtype": "F32""#)) { if case .headerNotJSON = $0 { return true }; return false }
        try Self.expectRefused(Self.rawFile("[1, 2, 3]")) { if case .headerNotObject = $0 { return true }; return false }
        var invalidUTF8 = Self.rawFile(#"{"a":1}"#)
        invalidUTF8[10] = 0xFF
        try Self.expectRefused(invalidUTF8) { if case .headerNotUTF8 = $0 { return true }; return false }
    }

    @Test func refusesHostileJSON() throws {
        // Deep nesting must be an error, not a stack overflow.
        let deep = String(repeating: "[", count: 200_000)
        try Self.expectRefused(Self.rawFile(deep)) { if case .headerNotJSON = $0 { return true }; return false }
        // Duplicate names are ambiguous: refuse rather than pick one.
        let duplicate = #"{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#
        try Self.expectRefused(Self.rawFile(duplicate, data: [0, 0, 0, 0])) {
            if case let .headerNotJSON(_, reason) = $0 { return reason.contains("duplicate key \"t\"") }; return false
        }
        try Self.expectRefused(Self.rawFile(#"{} {}"#)) { if case .headerNotJSON = $0 { return true }; return false }
        try Self.expectRefused(Self.rawFile(#"{"a":"\ud800"}"#)) { if case .headerNotJSON = $0 { return true }; return false }
        try Self.expectRefused(Self.rawFile("{\"a\":\"tab\there\"}")) { if case .headerNotJSON = $0 { return true }; return false }
    }

    @Test func strictJSONParser() throws {
        func parse(_ text: String) throws -> StrictJSON { try StrictJSON.parse(Data(text.utf8)) }
        #expect(try parse(#" {"a": [1, -2, 3.5, 1e3, 9223372036854775807, 9223372036854775808, true, false, null]} "#)
                == .object(["a": .array([.integer(1), .integer(-2), .number(3.5), .number(1000), .integer(Int.max),
                                         .number(9223372036854775808), .bool(true), .bool(false), .null])]))
        #expect(try parse(#""caf\u00e9 \ud83d\ude00 \"q\" \\ \/ \n""#) == .string("café 😀 \"q\" \\ / \n"))
        #expect(try parse("\"ünï 日本\"") == .string("ünï 日本"))
        for bad in ["", "{", "[1,]", "{\"a\" 1}", "01", "-", "1.", "1e", "tru", "\"abc", "{\"a\":1,}", "[1e999]", "\"\\x\""] {
            #expect(throws: StrictJSON.ParseError.self, "\(bad)") { try parse(bad) }
        }
        do {
            _ = try parse(#"{"a": 1, "b": x}"#)
        } catch let error as StrictJSON.ParseError {
            #expect(error.offset == 14)
            #expect(error.description.contains("'x'") && error.description.contains("byte 14"))
        }
    }

    @Test func refusesMalformedEntries() throws {
        let bad: [String] = [
            #"{"t":{"shape":[1],"data_offsets":[0,4]}}"#,                      // no dtype
            #"{"t":{"dtype":"F32","data_offsets":[0,4]}}"#,                    // no shape
            #"{"t":{"dtype":"F32","shape":[1]}}"#,                             // no data_offsets
            #"{"t":{"dtype":3,"shape":[1],"data_offsets":[0,4]}}"#,            // dtype not a string
            #"{"t":{"dtype":"F32","shape":"1","data_offsets":[0,4]}}"#,        // shape not an array
            #"{"t":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}"#,      // fractional dimension
            #"{"t":{"dtype":"F32","shape":[true],"data_offsets":[0,4]}}"#,     // boolean dimension
            #"{"t":{"dtype":"F32","shape":[1],"data_offsets":[0]}}"#,          // one offset
            #"{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}"#,      // three offsets
            #"{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,1e30]}}"#,     // offset not an Int
            #"{"t":[1,2]}"#,                                                   // entry not an object
        ]
        for header in bad {
            try Self.expectRefused(Self.rawFile(header, data: [0, 0, 0, 0])) {
                if case .invalidEntry(_, "t", _) = $0 { return true }; return false
            }
        }
    }

    @Test func refusesBadShapes() throws {
        try Self.expectRefused(Self.rawFile(#"{"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0])) {
            if case .invalidShape(_, "t", [-1]) = $0 { return true }; return false
        }
        try Self.expectRefused(Self.rawFile(#"{"t":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0])) {
            if case .invalidShape(_, "t", _) = $0 { return true }; return false
        }
        // Element count fits, byte count does not.
        try Self.expectRefused(Self.rawFile(#"{"t":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0])) {
            if case .invalidShape(_, "t", _) = $0 { return true }; return false
        }
    }

    @Test func refusesBadOffsets() throws {
        let data = [UInt8](repeating: 0, count: 16)
        try Self.expectRefused(Self.rawFile(#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}}"#, data: data)) {
            $0 == .dataOutOfBounds(path: $0.path, tensor: "t", end: 20, dataSize: 16)
        }
        try Self.expectRefused(Self.rawFile(#"{"t":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}}"#, data: data)) {
            $0 == .invalidOffsets(path: $0.path, tensor: "t", begin: 8, end: 4)
        }
        try Self.expectRefused(Self.rawFile(#"{"t":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}"#, data: data)) {
            if case .invalidOffsets(_, "t", -4, 0) = $0 { return true }; return false
        }
    }

    @Test func refusesOverlappingTensors() throws {
        let header = #"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#
        try Self.expectRefused(Self.rawFile(header, data: [UInt8](repeating: 0, count: 16))) {
            $0 == .overlappingTensors(path: $0.path, tensor: "b", other: "a")
        }
        let same = #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}}"#
        try Self.expectRefused(Self.rawFile(same, data: [UInt8](repeating: 0, count: 8))) {
            if case .overlappingTensors = $0 { return true }; return false
        }
    }

    @Test func refusesDTypeShapeMismatch() throws {
        let header = #"{"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#
        try Self.expectRefused(Self.rawFile(header, data: [UInt8](repeating: 0, count: 8))) {
            $0 == .sizeMismatch(path: $0.path, tensor: "t", dtype: "F32", shape: [3], expectedBytes: 12, actualBytes: 8)
        }
        let message = try Self.openError(Self.rawFile(header, data: [UInt8](repeating: 0, count: 8)))?.localizedDescription ?? ""
        #expect(message.contains("'t'") && message.contains("12") && message.contains("8"))
    }

    @Test func refusesUnknownDType() throws {
        try Self.expectRefused(Self.rawFile(#"{"t":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}}"#, data: [UInt8](repeating: 0, count: 16))) {
            $0 == .unknownDType(path: $0.path, tensor: "t", dtype: "F128")
        }
    }

    @Test func refusesNonStringMetadata() throws {
        try Self.expectRefused(Self.rawFile(#"{"__metadata__":{"epoch":3}}"#)) {
            $0 == .invalidMetadata(path: $0.path, key: "epoch")
        }
        try Self.expectRefused(Self.rawFile(#"{"__metadata__":"pt"}"#)) { if case .invalidMetadata = $0 { return true }; return false }
    }

    @Test func refusesEmptyFilesDirectoriesAndMissingFiles() throws {
        try Self.expectRefused(Data()) { $0 == .fileTooShort(path: $0.path, size: 0) }
        #expect(try Self.openError(Data())?.localizedDescription.contains("empty") == true)

        let dir = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let folder = dir.appendingPathComponent("model.safetensors")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: false)
        #expect(throws: SafeTensorsError.notARegularFile(path: folder.path)) { try SafeTensorsFile(url: folder) }
        let missing = dir.appendingPathComponent("absent.safetensors")
        do {
            _ = try SafeTensorsFile(url: missing)
            Issue.record("opened a missing file")
        } catch let error as SafeTensorsError {
            #expect(error.localizedDescription.contains("absent.safetensors"))
            #expect(error.localizedDescription.contains("No such file"))
        }
    }

    /// Every single-bit flip of the length field and header must give an error or a consistent file.
    @Test func survivesBitFlippedHeaders() throws {
        // A compact file (every flip is a full parse): both writer dtypes, an empty tensor, metadata.
        var writer = SafeTensorsWriter()
        try writer.add("w", shape: [2, 3], floats: [1, 2, 3, 4, 5, 6])
        try writer.add("ids", shape: [2], int64s: [5, 7])
        try writer.add("e", shape: [0], floats: [])
        writer.metadata = ["k": "v"]
        let original = writer.serialized()
        let n = Int(original.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        let dir = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("flipped.safetensors")
        try original.write(to: url)
        let handle = try FileHandle(forUpdating: url)  // rewritten in place: same size, much faster than new files
        defer { try? handle.close() }
        var accepted = 0, refused = 0
        for byte in 0..<(8 + n) {
            for bit in 0..<8 {
                var bytes = original
                bytes[byte] ^= UInt8(1 << bit)
                try handle.seek(toOffset: 0)
                try handle.write(contentsOf: bytes)
                let file: SafeTensorsFile
                do {
                    file = try SafeTensorsFile(url: url)
                } catch let error as SafeTensorsError {
                    #expect(error.localizedDescription.contains("flipped.safetensors"))
                    refused += 1
                    continue
                }
                accepted += 1
                let dataSize = bytes.count - 8 - n
                for info in file.tensors.values {
                    #expect(info.byteRange.count == info.count * info.dtype.byteSize)
                    #expect(info.byteRange.upperBound <= dataSize)
                    switch info.dtype {
                    case .f32, .f16, .bf16: #expect(try file.floats(info.name).count == info.count)
                    case .i64, .i32, .i16, .i8, .u32, .u16, .u8: #expect(try file.int64s(info.name).count == info.count)
                    default: break
                    }
                }
            }
        }
        #expect(refused > 0 && accepted > 0)  // e.g. flips inside names or metadata values still parse
    }

    // MARK: Requests

    @Test func requestErrorsNameFileAndTensor() throws {
        let dir = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("requests.safetensors")
        try Self.sampleWriter().write(to: url)
        let file = try SafeTensorsFile(url: url)

        #expect(throws: SafeTensorsError.missingTensor(path: url.path, tensor: "nope")) { try file.info("nope") }
        #expect(throws: SafeTensorsError.missingTensor(path: url.path, tensor: "nope")) { try file.floats("nope") }
        do {
            _ = try file.floats("nope")
        } catch {
            #expect(error.localizedDescription.contains("requests.safetensors") && error.localizedDescription.contains("nope"))
        }
        #expect(throws: SafeTensorsError.wrongDType(path: url.path, tensor: "ids", dtype: "I64", expected: "F32, F16 or BF16")) {
            try file.floats("ids")
        }
        let notInteger = #expect(throws: SafeTensorsError.self) { try file.int64s("odd") }
        if case .wrongDType(_, "odd", "F32", _)? = notInteger {} else { Issue.record("unexpected \(String(describing: notInteger))") }

        var small = [Float](repeating: 0, count: 14)
        do {
            try small.withUnsafeMutableBufferPointer { try file.copyFloats("layer.weight", into: $0.baseAddress!, count: $0.count) }
            Issue.record("copyFloats accepted a wrong count")
        } catch let error as SafeTensorsError {
            #expect(error == .countMismatch(path: url.path, tensor: "layer.weight", expected: 14, actual: 15))
            let message = error.localizedDescription
            #expect(message.contains("layer.weight") && message.contains("14") && message.contains("15") && message.contains("requests.safetensors"))
        }
    }

    @Test func writerRejectsBadInput() throws {
        var w = SafeTensorsWriter()
        #expect(throws: SafeTensorsError.shapeMismatch(tensor: "a", shape: [2, 3], count: 5)) {
            try w.add("a", shape: [2, 3], floats: [Float](repeating: 0, count: 5))
        }
        #expect(throws: SafeTensorsError.shapeMismatch(tensor: "n", shape: [-1, -2], count: 2)) {
            try w.add("n", shape: [-1, -2], int64s: [1, 2])
        }
        try w.add("a", shape: [2], floats: [1, 2])
        #expect(throws: SafeTensorsError.duplicateTensor(tensor: "a")) { try w.add("a", shape: [1], int64s: [1]) }
        #expect(throws: SafeTensorsError.reservedName(tensor: "__metadata__")) { try w.add("__metadata__", shape: [1], floats: [1]) }
        // A failed add leaves the writer usable and unchanged.
        let dir = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("w.safetensors")
        try w.write(to: url)
        #expect(try SafeTensorsFile(url: url).names == ["a"])
    }

    // MARK: Half precision

    @Test func halfPrecisionKnownValues() {
        let f16: [(UInt16, Float)] = [
            (0x0000, 0), (0x3C00, 1), (0xC000, -2), (0x3800, 0.5), (0x7BFF, 65504), (0xFBFF, -65504),
            (0x0001, 0x1p-24), (0x03FF, 1023 * 0x1p-24), (0x0400, 0x1p-14), (0x3555, 0.333251953125),
            (0x7C00, .infinity), (0xFC00, -.infinity),
        ]
        for (bits, value) in f16 { #expect(floatFromHalfBits(bits) == value, "F16 0x\(String(bits, radix: 16))") }
        #expect(floatFromHalfBits(0x8000).sign == .minus && floatFromHalfBits(0x8000) == 0)
        #expect(floatFromHalfBits(0x7E00).isNaN && floatFromHalfBits(0xFE01).isNaN)

        let bf16: [(UInt16, Float)] = [
            (0x0000, 0), (0x3F80, 1), (0xC0A0, -5), (0x3E80, 0.25), (0x7F7F, 0x1.FEp127), (0x0001, 0x1p-133),
            (0x4049, 3.140625), (0x7F80, .infinity), (0xFF80, -.infinity),
        ]
        for (bits, value) in bf16 { #expect(floatFromBFloat16Bits(bits) == value, "BF16 0x\(String(bits, radix: 16))") }
        #expect(floatFromBFloat16Bits(0x7FC0).isNaN)
    }

    #if arch(x86_64) || arch(arm64)
    /// All 65536 half-precision values against the standard library's Float16.
    @Test func halfPrecisionExhaustive() {
        var mismatches = 0
        for bits in UInt16.min...UInt16.max {
            let expected = Float(Float16(bitPattern: bits))
            let actual = floatFromHalfBits(bits)
            if expected.isNaN ? !actual.isNaN : expected.bitPattern != actual.bitPattern { mismatches += 1 }
        }
        #expect(mismatches == 0)
    }
    #endif

    @Test func readsHalfPrecisionTensors() throws {
        let f16: [UInt16] = [0x3C00, 0xC000, 0x0001, 0x7BFF]
        let bf16: [UInt16] = [0x3F80, 0xC0A0, 0x4049]
        let data = (f16 + bf16).flatMap { withUnsafeBytes(of: $0.littleEndian, Array.init) }
        let header = #"{"h":{"dtype":"F16","shape":[2,2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[3],"data_offsets":[8,14]}}"#
        let dir = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("half.safetensors")
        try Self.rawFile(header, data: data).write(to: url)
        let file = try SafeTensorsFile(url: url)
        #expect(try file.floats("h") == [1, -2, 0x1p-24, 65504])
        #expect(try file.floats("b") == [1, -5, 3.140625])
        var dst = [Float](repeating: 0, count: 3)
        try dst.withUnsafeMutableBufferPointer { try file.copyFloats("b", into: $0.baseAddress!, count: 3) }
        #expect(dst == [1, -5, 3.140625])
    }
}

private extension SafeTensorsError {
    /// The file path every reading error carries (for building the expected value in a test).
    var path: String {
        switch self {
        case let .cannotOpen(p, _), let .notARegularFile(p), let .fileTooShort(p, _), let .headerLengthInvalid(p, _, _),
             let .mapFailed(p, _), let .headerNotUTF8(p), let .headerNotJSON(p, _), let .headerNotObject(p),
             let .invalidMetadata(p, _), let .invalidEntry(p, _, _), let .unknownDType(p, _, _), let .invalidShape(p, _, _),
             let .invalidOffsets(p, _, _, _), let .dataOutOfBounds(p, _, _, _), let .sizeMismatch(p, _, _, _, _, _),
             let .overlappingTensors(p, _, _), let .missingTensor(p, _), let .wrongDType(p, _, _, _), let .countMismatch(p, _, _, _):
            return p
        case .duplicateTensor, .reservedName, .shapeMismatch:
            return ""
        }
    }
}

// MARK: - AtomicFile

extension SafeTensorsTests {
    /// Serialized: these tests install the process-wide fault-injection hook (which only fires for
    /// their own temporary paths, so other suites' saves are unaffected).
    @Suite(.serialized) struct AtomicFileTests {
        static func contents(of dir: URL) throws -> [String] {
            try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted()
        }

        @Test func writesAndReplaces() throws {
            let dir = try TestPaths.tempDir()
            defer { try? FileManager.default.removeItem(at: dir) }
            let url = dir.appendingPathComponent("state.json")
            try AtomicFile.write(Data("first".utf8), to: url)
            #expect(try Data(contentsOf: url) == Data("first".utf8))
            try AtomicFile.write(Data("second, longer".utf8), to: url)
            #expect(try Data(contentsOf: url) == Data("second, longer".utf8))
            try AtomicFile.write(Data(), to: url)
            #expect(try Data(contentsOf: url).isEmpty)
            try AtomicFile.write(to: url) { handle in
                try handle.write(contentsOf: Data("streamed ".utf8))
                try handle.write(contentsOf: Data("in parts".utf8))
            }
            #expect(try Data(contentsOf: url) == Data("streamed in parts".utf8))
            #expect(try Self.contents(of: dir) == ["state.json"])
        }

        @Test func keepsPermissionsOfTheReplacedFile() throws {
            let dir = try TestPaths.tempDir()
            defer { try? FileManager.default.removeItem(at: dir) }
            let url = dir.appendingPathComponent("secret.bin")
            try AtomicFile.write(Data("a".utf8), to: url)
            #expect(chmod(url.path, 0o600) == 0)
            try AtomicFile.write(Data("b".utf8), to: url)
            let mode = try FileManager.default.attributesOfItem(atPath: url.path)[.posixPermissions] as? Int
            #expect(mode == 0o600)
        }

        /// ENOSPC at every step before the rename: the old file survives and no temporary remains.
        @Test(arguments: [AtomicFile.Step.create, .write, .fsync, .close, .rename])
        func fullDiskLeavesTheOldFile(step: AtomicFile.Step) throws {
            let dir = try TestPaths.tempDir()
            defer { try? FileManager.default.removeItem(at: dir) }
            let url = dir.appendingPathComponent("checkpoint.safetensors")
            var old = SafeTensorsWriter()
            try old.add("w", shape: [2], floats: [1, 2])
            try old.write(to: url)
            let oldBytes = try Data(contentsOf: url)

            var seen: [String] = []
            AtomicFile.faultInjection = { event in
                guard event.hasSuffix(" " + url.path) else { return nil }  // only this test's saves
                seen.append(event)
                return event == "\(step.rawValue) \(url.path)" ? ENOSPC : nil
            }
            defer { AtomicFile.faultInjection = nil }

            var new = SafeTensorsWriter()
            try new.add("w", shape: [3], floats: [7, 8, 9])
            let saves: [(String, () throws -> Void)] = [
                ("data", { try AtomicFile.write(new.serialized(), to: url) }),
                ("streaming", { try AtomicFile.write(to: url) { try $0.write(contentsOf: new.serialized()) } }),
                ("safetensors", { try new.write(to: url) }),
            ]
            for (label, save) in saves {
                do {
                    try save()
                    Issue.record("\(label): save succeeded despite ENOSPC at \(step)")
                } catch let error as AtomicFileError {
                    #expect(error == .failed(step: step, path: url.path, errno: ENOSPC), "\(label)")
                    let message = error.localizedDescription
                    #expect(message.contains("No space left on device") && message.contains("checkpoint.safetensors"), "\(label): \(message)")
                }
                #expect(try Data(contentsOf: url) == oldBytes, "\(label): old content must survive")
                #expect(try Self.contents(of: dir) == ["checkpoint.safetensors"], "\(label): no temporary file may remain")
                #expect(try SafeTensorsFile(url: url).floats("w") == [1, 2])
            }
            #expect(seen.contains { $0.hasPrefix(step.rawValue + " ") })
        }

        /// A failure after the rename cannot restore the old file; it is reported, the new file is complete.
        @Test func directorySyncFailureIsReported() throws {
            let dir = try TestPaths.tempDir()
            defer { try? FileManager.default.removeItem(at: dir) }
            let url = dir.appendingPathComponent("late.bin")
            try AtomicFile.write(Data("old".utf8), to: url)
            AtomicFile.faultInjection = { $0 == "fsyncDirectory \(url.path)" ? EIO : nil }
            defer { AtomicFile.faultInjection = nil }
            #expect(throws: AtomicFileError.failed(step: .fsyncDirectory, path: url.path, errno: EIO)) {
                try AtomicFile.write(Data("new".utf8), to: url)
            }
            #expect(try Data(contentsOf: url) == Data("new".utf8))
            #expect(try Self.contents(of: dir) == ["late.bin"])
        }

        @Test func failingBodyLeavesTheOldFile() throws {
            struct Interrupted: Error, Equatable {}
            let dir = try TestPaths.tempDir()
            defer { try? FileManager.default.removeItem(at: dir) }
            let url = dir.appendingPathComponent("body.bin")
            try AtomicFile.write(Data("old".utf8), to: url)
            #expect(throws: Interrupted()) {
                try AtomicFile.write(to: url) { handle in
                    try handle.write(contentsOf: Data("partial".utf8))
                    throw Interrupted()
                }
            }
            #expect(try Data(contentsOf: url) == Data("old".utf8))
            #expect(try Self.contents(of: dir) == ["body.bin"])
        }

        @Test func missingDirectoryNamesThePath() throws {
            let dir = try TestPaths.tempDir()
            defer { try? FileManager.default.removeItem(at: dir) }
            let url = dir.appendingPathComponent("no/such/dir/file.bin")
            do {
                try AtomicFile.write(Data("x".utf8), to: url)
                Issue.record("wrote into a missing directory")
            } catch let error as AtomicFileError {
                #expect(error == .failed(step: .create, path: url.path, errno: ENOENT))
                #expect(error.localizedDescription.contains("file.bin") && error.localizedDescription.contains("No such file or directory"))
            }
        }
    }
}
