// SafeTensors: a memory-mapped reader that validates the whole header before anything is read,
// and a writer that produces files the reference (Rust/Python) implementation accepts.
//
// Layout: [u64 little-endian n][n bytes of UTF-8 JSON header][data section]. The header maps each
// tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the start of
// the data section) and may hold "__metadata__": {string: string}.
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Types

/// Element types of the safetensors format.
public enum SafeTensorsDType: String, Sendable, CaseIterable {
    case f64 = "F64", f32 = "F32", f16 = "F16", bf16 = "BF16"
    case f8e4m3 = "F8_E4M3", f8e5m2 = "F8_E5M2"
    case i64 = "I64", i32 = "I32", i16 = "I16", i8 = "I8"
    case u64 = "U64", u32 = "U32", u16 = "U16", u8 = "U8"
    case bool = "BOOL"

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .f64, .i64, .u64: return 8
        case .f32, .i32, .u32: return 4
        case .f16, .bf16, .i16, .u16: return 2
        case .f8e4m3, .f8e5m2, .i8, .u8, .bool: return 1
        }
    }
}

/// One tensor as described by the header. `byteRange` is relative to the start of the data section
/// (the header's `data_offsets`), and has been checked to lie inside the file.
public struct TensorInfo: Sendable, Equatable {
    public let name: String
    public let dtype: SafeTensorsDType
    public let shape: [Int]
    public let byteRange: Range<Int>

    /// Number of elements (product of `shape`; 1 for a scalar, 0 if any dimension is 0).
    public var count: Int { shape.reduce(1, *) }
}

public enum SafeTensorsError: LocalizedError, Equatable {
    // Reading: the file itself.
    case cannotOpen(path: String, reason: String)
    case notARegularFile(path: String)
    case fileTooShort(path: String, size: Int)
    case headerLengthInvalid(path: String, headerLength: UInt64, fileSize: Int)
    case mapFailed(path: String, reason: String)
    // Reading: the header.
    case headerNotUTF8(path: String)
    case headerNotJSON(path: String, reason: String)
    case headerNotObject(path: String)
    case invalidMetadata(path: String, key: String)
    case invalidEntry(path: String, tensor: String, reason: String)
    case unknownDType(path: String, tensor: String, dtype: String)
    case invalidShape(path: String, tensor: String, shape: [Int])
    case invalidOffsets(path: String, tensor: String, begin: Int, end: Int)
    case dataOutOfBounds(path: String, tensor: String, end: Int, dataSize: Int)
    case sizeMismatch(path: String, tensor: String, dtype: String, shape: [Int], expectedBytes: Int, actualBytes: Int)
    case overlappingTensors(path: String, tensor: String, other: String)
    // Reading: requests.
    case missingTensor(path: String, tensor: String)
    case wrongDType(path: String, tensor: String, dtype: String, expected: String)
    case countMismatch(path: String, tensor: String, expected: Int, actual: Int)
    // Writing.
    case duplicateTensor(tensor: String)
    case reservedName(tensor: String)
    case shapeMismatch(tensor: String, shape: [Int], count: Int)

    public var errorDescription: String? {
        switch self {
        case let .cannotOpen(path, reason):
            return "\(path): cannot open safetensors file: \(reason)"
        case let .notARegularFile(path):
            return "\(path): not a regular file (a directory?); expected a .safetensors file"
        case let .fileTooShort(path, size):
            return size == 0
                ? "\(path): file is empty; a safetensors file starts with an 8-byte header length"
                : "\(path): file is \(size) bytes, shorter than the 8-byte header length"
        case let .headerLengthInvalid(path, n, fileSize):
            return "\(path): header length \(n) is impossible for a file of \(fileSize) bytes (limit: file size - 8 and \(SafeTensorsFile.maxHeaderLength)); truncated or not a safetensors file"
        case let .mapFailed(path, reason):
            return "\(path): mmap failed: \(reason)"
        case let .headerNotUTF8(path):
            return "\(path): header is not valid UTF-8"
        case let .headerNotJSON(path, reason):
            return "\(path): header is not valid JSON: \(reason)"
        case let .headerNotObject(path):
            return "\(path): header JSON is not an object"
        case let .invalidMetadata(path, key):
            return "\(path): __metadata__ must be an object of strings; bad entry '\(key)'"
        case let .invalidEntry(path, tensor, reason):
            return "\(path): tensor '\(tensor)': \(reason)"
        case let .unknownDType(path, tensor, dtype):
            return "\(path): tensor '\(tensor)': unknown dtype '\(dtype)'"
        case let .invalidShape(path, tensor, shape):
            return "\(path): tensor '\(tensor)': invalid shape \(shape) (negative dimension or size overflow)"
        case let .invalidOffsets(path, tensor, begin, end):
            return "\(path): tensor '\(tensor)': data_offsets [\(begin), \(end)] must satisfy 0 <= begin <= end"
        case let .dataOutOfBounds(path, tensor, end, dataSize):
            return "\(path): tensor '\(tensor)': data ends at byte \(end) but the data section has only \(dataSize) bytes (truncated file?)"
        case let .sizeMismatch(path, tensor, dtype, shape, expected, actual):
            return "\(path): tensor '\(tensor)': \(dtype) \(shape) needs \(expected) bytes but data_offsets span \(actual)"
        case let .overlappingTensors(path, tensor, other):
            return "\(path): tensors '\(other)' and '\(tensor)' overlap in the data section"
        case let .missingTensor(path, tensor):
            return "\(path): no tensor named '\(tensor)'"
        case let .wrongDType(path, tensor, dtype, expected):
            return "\(path): tensor '\(tensor)' has dtype \(dtype), expected \(expected)"
        case let .countMismatch(path, tensor, expected, actual):
            return "\(path): tensor '\(tensor)' has \(actual) elements but the destination holds \(expected)"
        case let .duplicateTensor(tensor):
            return "safetensors writer: tensor '\(tensor)' added twice"
        case let .reservedName(tensor):
            return "safetensors writer: '\(tensor)' is reserved for metadata and cannot name a tensor"
        case let .shapeMismatch(tensor, shape, count):
            return "safetensors writer: tensor '\(tensor)': shape \(shape) does not hold \(count) elements"
        }
    }
}

// MARK: - Reader

/// A read-only memory map of a safetensors file. The whole header is validated in `init`, so every
/// later read stays inside the mapping. Values are copied out (never exposed as pointers).
///
/// The map keeps the file's inode alive, so replacing the file by rename (as `AtomicFile` does) is
/// safe while it is open; truncating it in place is not (the kernel would raise SIGBUS).
/// Sendable because nothing changes after `init`: the mapping is read-only and every property a `let`.
public final class SafeTensorsFile: @unchecked Sendable {
    /// Headers above this size are rejected before being parsed (the reference implementation's limit).
    public static let maxHeaderLength = 100_000_000

    public let url: URL
    public let tensors: [String: TensorInfo]
    public let metadata: [String: String]

    private let mapping: UnsafeRawPointer
    private let mappedLength: Int
    private let dataStart: Int  // 8 + header length

    public init(url: URL) throws {
        self.url = url
        let path = url.path
        let (base, length) = try Self.map(path: path)
        let raw = UnsafeRawBufferPointer(start: base, count: length)
        do {
            let header = try Self.parseHeader(raw, path: path)
            tensors = header.tensors
            metadata = header.metadata
            dataStart = header.dataStart
        } catch {
            munmap(UnsafeMutableRawPointer(mutating: base), length)
            throw error
        }
        mapping = base
        mappedLength = length
    }

    deinit {
        munmap(UnsafeMutableRawPointer(mutating: mapping), mappedLength)
    }

    /// Tensor names, sorted.
    public var names: [String] { tensors.keys.sorted() }

    public func info(_ name: String) throws -> TensorInfo {
        guard let info = tensors[name] else { throw SafeTensorsError.missingTensor(path: url.path, tensor: name) }
        return info
    }

    /// The tensor as Float; F32, F16 and BF16 convert exactly.
    public func floats(_ name: String) throws -> [Float] {
        let info = try floatInfo(name)
        guard info.count > 0 else { return [] }
        return [Float](unsafeUninitializedCapacity: info.count) { buffer, initialized in
            convertFloats(info, into: buffer.baseAddress!)
            initialized = info.count
        }
    }

    /// Copies the tensor, converted to Float, into `dst`, which must hold exactly its element count.
    public func copyFloats(_ name: String, into dst: UnsafeMutablePointer<Float>, count: Int) throws {
        let info = try floatInfo(name)
        guard count == info.count else {
            throw SafeTensorsError.countMismatch(path: url.path, tensor: name, expected: count, actual: info.count)
        }
        if count > 0 { convertFloats(info, into: dst) }
    }

    /// The tensor as Int64; every integer dtype whose values fit (all but U64) widens exactly.
    public func int64s(_ name: String) throws -> [Int64] {
        let info = try info(name)
        let src = bytes(of: info)
        let n = info.count
        switch info.dtype {
        case .i64: return (0..<n).map { Int64(littleEndian: src.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self)) }
        case .i32: return (0..<n).map { Int64(Int32(littleEndian: src.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self))) }
        case .i16: return (0..<n).map { Int64(Int16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * $0, as: Int16.self))) }
        case .i8: return (0..<n).map { Int64(Int8(bitPattern: src[$0])) }
        case .u32: return (0..<n).map { Int64(UInt32(littleEndian: src.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self))) }
        case .u16: return (0..<n).map { Int64(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self))) }
        case .u8: return (0..<n).map { Int64(src[$0]) }
        default:
            throw SafeTensorsError.wrongDType(path: url.path, tensor: name, dtype: info.dtype.rawValue,
                                              expected: "an integer type (I64, I32, I16, I8, U32, U16, U8)")
        }
    }

    // MARK: Conversion

    private func floatInfo(_ name: String) throws -> TensorInfo {
        let info = try info(name)
        switch info.dtype {
        case .f32, .f16, .bf16: return info
        default:
            throw SafeTensorsError.wrongDType(path: url.path, tensor: name, dtype: info.dtype.rawValue, expected: "F32, F16 or BF16")
        }
    }

    private func bytes(of info: TensorInfo) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: mapping + dataStart + info.byteRange.lowerBound, count: info.byteRange.count)
    }

    private func convertFloats(_ info: TensorInfo, into dst: UnsafeMutablePointer<Float>) {
        let src = bytes(of: info)
        let n = info.count
        switch info.dtype {
        case .f32:
            #if _endian(little)
            UnsafeMutableRawPointer(dst).copyMemory(from: src.baseAddress!, byteCount: 4 * n)
            #else
            for i in 0..<n { dst[i] = Float(bitPattern: UInt32(littleEndian: src.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
            #endif
        case .f16:
            for i in 0..<n { dst[i] = floatFromHalfBits(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
        case .bf16:
            for i in 0..<n { dst[i] = floatFromBFloat16Bits(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
        default:
            preconditionFailure("convertFloats called for \(info.dtype)")
        }
    }

    // MARK: Mapping and validation

    private static func map(path: String) throws -> (UnsafeRawPointer, Int) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SafeTensorsError.cannotOpen(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SafeTensorsError.cannotOpen(path: path, reason: String(cString: strerror(errno))) }
        guard st.st_mode & 0o170000 == 0o100000 else { throw SafeTensorsError.notARegularFile(path: path) }
        let size = Int(st.st_size)
        guard size >= 8 else { throw SafeTensorsError.fileTooShort(path: path, size: size) }
        let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let p, p != UnsafeMutableRawPointer(bitPattern: -1) else {
            throw SafeTensorsError.mapFailed(path: path, reason: String(cString: strerror(errno)))
        }
        return (UnsafeRawPointer(p), size)
    }

    private struct Header {
        var tensors: [String: TensorInfo]
        var metadata: [String: String]
        var dataStart: Int
    }

    private static func parseHeader(_ file: UnsafeRawBufferPointer, path: String) throws -> Header {
        let declared = UInt64(littleEndian: file.loadUnaligned(as: UInt64.self))
        guard declared <= UInt64(file.count - 8), declared <= UInt64(maxHeaderLength) else {
            throw SafeTensorsError.headerLengthInvalid(path: path, headerLength: declared, fileSize: file.count)
        }
        let headerLength = Int(declared)
        let headerBytes = UnsafeRawBufferPointer(rebasing: file[8..<(8 + headerLength)])
        guard String(validating: headerBytes, as: UTF8.self) != nil else { throw SafeTensorsError.headerNotUTF8(path: path) }

        let root: StrictJSON
        do {
            root = try StrictJSON.parse(headerBytes)
        } catch let error as StrictJSON.ParseError {
            throw SafeTensorsError.headerNotJSON(path: path, reason: error.description)
        }
        guard case let .object(entries) = root else { throw SafeTensorsError.headerNotObject(path: path) }

        let dataSize = file.count - 8 - headerLength
        var metadata: [String: String] = [:]
        var tensors: [String: TensorInfo] = [:]
        // Sorted, so that a file with several problems always reports the same one.
        for (name, value) in entries.sorted(by: { $0.key < $1.key }) {
            if name == "__metadata__" {
                guard case let .object(items) = value else { throw SafeTensorsError.invalidMetadata(path: path, key: name) }
                for (key, item) in items.sorted(by: { $0.key < $1.key }) {
                    guard case let .string(s) = item else { throw SafeTensorsError.invalidMetadata(path: path, key: key) }
                    metadata[key] = s
                }
                continue
            }
            tensors[name] = try parseEntry(name: name, value: value, dataSize: dataSize, path: path)
        }

        // No two tensors may share bytes. Empty tensors occupy no bytes, so they overlap nothing.
        let occupied = tensors.values.filter { !$0.byteRange.isEmpty }
            .sorted { ($0.byteRange.lowerBound, $0.name) < ($1.byteRange.lowerBound, $1.name) }
        for (previous, next) in zip(occupied, occupied.dropFirst()) where next.byteRange.lowerBound < previous.byteRange.upperBound {
            throw SafeTensorsError.overlappingTensors(path: path, tensor: next.name, other: previous.name)
        }
        return Header(tensors: tensors, metadata: metadata, dataStart: 8 + headerLength)
    }

    private static func parseEntry(name: String, value: StrictJSON, dataSize: Int, path: String) throws -> TensorInfo {
        func invalid(_ reason: String) -> SafeTensorsError { .invalidEntry(path: path, tensor: name, reason: reason) }
        guard case let .object(fields) = value else { throw invalid("entry is not an object") }
        guard let dtypeValue = fields["dtype"] else { throw invalid("missing \"dtype\"") }
        guard let shapeValue = fields["shape"] else { throw invalid("missing \"shape\"") }
        guard let offsetsValue = fields["data_offsets"] else { throw invalid("missing \"data_offsets\"") }

        guard case let .string(dtypeName) = dtypeValue else { throw invalid("\"dtype\" must be a string") }
        guard let dtype = SafeTensorsDType(rawValue: dtypeName) else {
            throw SafeTensorsError.unknownDType(path: path, tensor: name, dtype: dtypeName)
        }
        guard case let .array(dims) = shapeValue else { throw invalid("\"shape\" must be an array of integers") }
        var shape: [Int] = []
        for dim in dims {
            guard case let .integer(d) = dim else { throw invalid("\"shape\" must be an array of integers") }
            shape.append(d)
        }
        guard case let .array(offsets) = offsetsValue, offsets.count == 2,
              case let .integer(begin) = offsets[0], case let .integer(end) = offsets[1] else {
            throw invalid("\"data_offsets\" must be an array of two integers")
        }

        // Byte count, checked for negative dimensions and overflow.
        var elements = 1
        for d in shape {
            guard d >= 0 else { throw SafeTensorsError.invalidShape(path: path, tensor: name, shape: shape) }
            let (product, overflow) = elements.multipliedReportingOverflow(by: d)
            guard !overflow else { throw SafeTensorsError.invalidShape(path: path, tensor: name, shape: shape) }
            elements = product
        }
        let (expectedBytes, overflow) = elements.multipliedReportingOverflow(by: dtype.byteSize)
        guard !overflow else { throw SafeTensorsError.invalidShape(path: path, tensor: name, shape: shape) }

        guard begin >= 0, begin <= end else { throw SafeTensorsError.invalidOffsets(path: path, tensor: name, begin: begin, end: end) }
        guard end <= dataSize else { throw SafeTensorsError.dataOutOfBounds(path: path, tensor: name, end: end, dataSize: dataSize) }
        guard end - begin == expectedBytes else {
            throw SafeTensorsError.sizeMismatch(path: path, tensor: name, dtype: dtype.rawValue, shape: shape,
                                                expectedBytes: expectedBytes, actualBytes: end - begin)
        }
        return TensorInfo(name: name, dtype: dtype, shape: shape, byteRange: begin..<end)
    }
}

// MARK: - Half-precision conversion (exact: every F16 and BF16 value is representable in F32)

/// IEEE 754 binary16 bits to Float, by hand so it does not depend on Float16 being available.
@inline(__always)
func floatFromHalfBits(_ h: UInt16) -> Float {
    let sign = UInt32(h >> 15) << 31
    let exponent = UInt32(h >> 10) & 0x1F
    let mantissa = UInt32(h) & 0x3FF
    switch exponent {
    case 0:
        // Zero or subnormal: mantissa * 2^-24, exact in Float (mantissa < 2^10).
        let magnitude = Float(mantissa) * 0x1p-24
        return sign != 0 ? -magnitude : magnitude
    case 0x1F:
        // Infinity or NaN (payload kept).
        return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13))
    default:
        // Rebias the exponent from 15 to 127.
        return Float(bitPattern: sign | ((exponent + 112) << 23) | (mantissa << 13))
    }
}

/// bfloat16 is the top half of a binary32.
@inline(__always)
func floatFromBFloat16Bits(_ b: UInt16) -> Float { Float(bitPattern: UInt32(b) << 16) }

