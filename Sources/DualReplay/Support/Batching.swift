/// Rows per encoder pass outside training (evaluation, prediction, frozen features, buffered
/// logits). Results depend on it in the last bits (GEMM blocking), so it is one constant.
public let inferenceChunk = 64

extension Array {
    /// Consecutive slices of at most `size` elements, in order.
    public func chunks(of size: Int = inferenceChunk) -> [ArraySlice<Element>] {
        precondition(size > 0, "chunks(of:) needs a positive size")
        return stride(from: 0, to: count, by: size).map { self[$0..<Swift.min(count, $0 + size)] }
    }
}

/// The index of the largest of `values[base + i]` for i in `range` (the first one on ties).
@inline(__always)
func argmax(_ values: UnsafeBufferPointer<Float>, base: Int = 0, in range: Range<Int>) -> Int {
    precondition(!range.isEmpty, "argmax over an empty range")
    var best = range.lowerBound
    var top = values[base + best]
    for i in range.dropFirst() where values[base + i] > top {
        best = i
        top = values[base + i]
    }
    return best
}

/// `argmax` over a Swift array: row `row` of a (rows, width) matrix, within `range`.
public func argmax(_ values: [Float], row: Int, width: Int, in range: Range<Int>) -> Int {
    values.withUnsafeBufferPointer { argmax($0, base: row * width, in: range) }
}
