import Foundation

/// Exact reuse of the frozen prefix of repeated chunks. Hidden states up to the first adapter
/// layer (hidden[p], p = `ContinualModel.gateFreePrefix`) depend on no trainable weight, and
/// evaluation and the quota validation score the same canonical chunks of the same rows after
/// every domain. The first pass of a chunk keeps its hidden[p]; later passes of the identical
/// chunk start at layer p. The GEMMs of layers p and above then see the same rows in the same
/// order as without the cache, so the logits are bit-identical (a batched GEMM may round a row
/// differently depending on its neighbours, which is why the key is the whole chunk, not the
/// utterance). Filled until `byteBudget` is reached, never evicted.
public final class PrefixCache {
    public let byteBudget: Int
    public private(set) var bytes = 0
    public private(set) var hits = 0, misses = 0
    private var entries: [PackedBatch: [Float]] = [:]
    /// The chunks of a parallel inference map look up and store at once.
    private let lock = NSLock()

    public init(byteBudget: Int) { self.byteBudget = byteBudget }

    public var count: Int { lock.withLock { entries.count } }

    func lookup(_ batch: PackedBatch) -> [Float]? {
        lock.lock()
        defer { lock.unlock() }
        if let h = entries[batch] { hits += 1; return h }
        misses += 1
        return nil
    }

    /// Keeps `hidden` (N·C floats) for `batch` if the budget allows.
    func store(_ batch: PackedBatch, hidden: UnsafeBufferPointer<Float>) {
        let add = hidden.count * 4 + batch.tokenCount * 4 + batch.count * 8
        lock.lock()
        defer { lock.unlock() }
        guard entries[batch] == nil, bytes + add <= byteBudget else { return }
        entries[batch] = Array(hidden)
        bytes += add
    }
}
