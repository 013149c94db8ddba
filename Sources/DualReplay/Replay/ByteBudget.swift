/// The replay byte budget every method of a comparison shares.
public enum ByteBudget {
    /// `examples` stored examples of the mean size of `sequences` (ids + label + domain + the
    /// per-item overhead, `ReplayItem.byteSize` without logits or targets).
    public static func forExamples(_ examples: Int, meanOf sequences: [[Int32]]) -> Int {
        let total = sequences.reduce(0) { $0 + $1.count }
        let meanBytes = 4 * Double(total) / Double(max(sequences.count, 1)) + 8 + Double(ReplayItem.overheadBytes)
        return Int((Double(examples) * meanBytes).rounded())
    }

    /// `bytes` when given, else `examples` stored examples of the mean size of `sequences`.
    public static func resolve(bytes: Int?, examples: Int, meanOf sequences: @autoclosure () -> [[Int32]]) -> Int {
        bytes ?? forExamples(examples, meanOf: sequences())
    }
}
