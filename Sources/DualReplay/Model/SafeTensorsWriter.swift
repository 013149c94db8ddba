import Foundation
#if canImport(Glibc)
import Glibc
#endif

// MARK: - Writer

/// Collects tensors and writes a safetensors file.
///
/// Layout matches the reference writer, so Python's `safetensors` loads the result: the header is
/// JSON with sorted keys, padded with spaces so the data section starts 8-byte aligned; tensors are
/// contiguous (the reference reader rejects gaps), ordered by element size, largest first (I64 before
/// F32), in insertion order within a size, which aligns every tensor to its element size.
public struct SafeTensorsWriter {
    private struct Entry {
        let name: String
        let dtype: SafeTensorsDType
        let shape: [Int]
        let bytes: Data
    }

    private var entries: [Entry] = []
    private var names: Set<String> = []
    public var metadata: [String: String] = [:]

    public init() {}

    /// Adds an F32 tensor.
    public mutating func add(_ name: String, shape: [Int], floats: [Float]) throws {
        try floats.withUnsafeBufferPointer { try add(name, shape: shape, floats: $0) }
    }

    /// Adds an F32 tensor, copying `floats`.
    mutating func add(_ name: String, shape: [Int], floats: UnsafeBufferPointer<Float>) throws {
        try check(name, shape: shape, count: floats.count)
        #if _endian(little)
        let bytes = Data(buffer: floats)
        #else
        let bytes = Data(floats.flatMap { withUnsafeBytes(of: $0.bitPattern.littleEndian, Array.init) })
        #endif
        entries.append(Entry(name: name, dtype: .f32, shape: shape, bytes: bytes))
    }

    /// Adds an I64 tensor.
    public mutating func add(_ name: String, shape: [Int], int64s: [Int64]) throws {
        try check(name, shape: shape, count: int64s.count)
        #if _endian(little)
        let bytes = int64s.withUnsafeBufferPointer { Data(buffer: $0) }
        #else
        let bytes = Data(int64s.flatMap { withUnsafeBytes(of: $0.littleEndian, Array.init) })
        #endif
        entries.append(Entry(name: name, dtype: .i64, shape: shape, bytes: bytes))
    }

    private mutating func check(_ name: String, shape: [Int], count: Int) throws {
        guard name != "__metadata__" else { throw SafeTensorsError.reservedName(tensor: name) }
        guard !names.contains(name) else { throw SafeTensorsError.duplicateTensor(tensor: name) }
        var product = 1
        for d in shape {
            let (p, overflow) = product.multipliedReportingOverflow(by: d)
            guard d >= 0, !overflow else { throw SafeTensorsError.shapeMismatch(tensor: name, shape: shape, count: count) }
            product = p
        }
        guard product == count else { throw SafeTensorsError.shapeMismatch(tensor: name, shape: shape, count: count) }
        names.insert(name)
    }

    /// The tensors in file order with their data offsets.
    private func layout() -> [(entry: Entry, begin: Int)] {
        let ordered = entries.enumerated()
            .sorted { ($1.element.dtype.byteSize, $0.offset) < ($0.element.dtype.byteSize, $1.offset) }
            .map(\.element)
        var offset = 0
        return ordered.map { entry in
            defer { offset += entry.bytes.count }
            return (entry, offset)
        }
    }

    /// The header: 8-byte length followed by space-padded JSON.
    private func headerBytes(for layout: [(entry: Entry, begin: Int)]) -> Data {
        var members: [(key: String, json: String)] = layout.map { item in
            let e = item.entry
            let shape = e.shape.map(String.init).joined(separator: ",")
            return (e.name, "{\"data_offsets\":[\(item.begin),\(item.begin + e.bytes.count)],\"dtype\":\"\(e.dtype.rawValue)\",\"shape\":[\(shape)]}")
        }
        if !metadata.isEmpty {
            let items = metadata.sorted { $0.key < $1.key }.map { "\(jsonString($0.key)):\(jsonString($0.value))" }
            members.append(("__metadata__", "{" + items.joined(separator: ",") + "}"))
        }
        members.sort { $0.key < $1.key }
        var json = Data(("{" + members.map { "\(jsonString($0.key)):\($0.json)" }.joined(separator: ",") + "}").utf8)
        json.append(contentsOf: [UInt8](repeating: 0x20, count: (8 - json.count % 8) % 8))

        var header = Data(capacity: 8 + json.count)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { header.append(contentsOf: $0) }
        header.append(json)
        return header
    }

    /// The complete file.
    public func serialized() -> Data {
        let items = layout()
        var data = headerBytes(for: items)
        for item in items { data.append(item.entry.bytes) }
        return data
    }

    /// Writes the file atomically (see `AtomicFile`): a crash leaves the old file or the new one.
    public func write(to url: URL) throws {
        let items = layout()
        let header = headerBytes(for: items)
        try AtomicFile.write(to: url) { handle in
            try handle.write(contentsOf: header)
            for item in items where !item.entry.bytes.isEmpty { try handle.write(contentsOf: item.entry.bytes) }
        }
    }
}

/// A JSON string literal: quotes, backslashes and control characters escaped; other text as UTF-8.
private func jsonString(_ s: String) -> String {
    var out = "\""
    for scalar in s.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case _ where scalar.value < 0x20:
            out += "\\u" + String(repeating: "0", count: 4 - String(scalar.value, radix: 16).count) + String(scalar.value, radix: 16)
        default: out.unicodeScalars.append(scalar)
        }
    }
    return out + "\""
}
