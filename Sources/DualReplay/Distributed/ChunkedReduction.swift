import CKernels
import Foundation

/// Data-parallel gradients that do not depend on how many threads or ranks compute them.
///
/// A batch of B rows is cut into ⌈B / chunkSize⌉ chunks of `chunkSize` consecutive rows (the last
/// one shorter). Rank r of the collective takes a contiguous block of chunks; its `threads`
/// worker contexts run them a wave at a time, each chunk's forward and backward on single-
/// threaded BLAS into its own gradient arena. The chunk gradients (trainable segments only, plus
/// the chunk's loss parts) are gathered from every rank, and every rank adds them into the
/// store's gradients in chunk order: g = ((g₀ + g₁) + g₂) + … . Float addition is not
/// associative, so this fixed order, not an all-reduce, is what makes the parameters after
/// every step bit-identical for any number of threads and ranks. A chunk size of at least B
/// is one chunk: exactly the plain single-pass arithmetic at one BLAS thread.
public final class ChunkedReduction {
    public let chunkSize: Int
    public let threads: Int
    public let collective: Collective
    /// This rank's chunks, packed: per chunk its trainable gradients then 8 floats holding the
    /// bit patterns of its four loss parts. `gathered`: every rank's, in chunk order.
    private var packed: [Float] = []
    private var gathered: [Float] = []
    /// What the steps' collectives moved and how long they took (the gradient half), for the
    /// benches.
    public private(set) var communication = CommunicationStats()

    public init(chunkSize: Int, threads: Int = 1, collective: Collective = SingleProcess()) {
        precondition(chunkSize > 0 && threads > 0)
        self.chunkSize = chunkSize
        self.threads = threads
        self.collective = collective
    }

    /// The chunks of a batch of `rows` rows, and rank `rank`'s block of them.
    public func chunks(rows: Int) -> [Range<Int>] {
        stride(from: 0, to: rows, by: chunkSize).map { $0..<min(rows, $0 + chunkSize) }
    }
    public func block(ofRank rank: Int, chunkCount n: Int) -> Range<Int> {
        let size = collective.size
        return (rank * n / size)..<((rank + 1) * n / size)
    }

    static let lossFloats = 8

    /// Every `consistencyCheckEvery` steps (0: never) the ranks compare a hash of their trainable
    /// parameters with rank 0's: ranks that drifted apart (another build, data or model on a
    /// node) stop the job with `JobError.diverged` instead of training on silently.
    public var consistencyCheckEvery = 50
    private var stepsSeen = 0

    func checkConsistency(_ m: ContinualModel, _ segments: [(offset: Int, count: Int, decay: Bool)]) throws {
        defer { stepsSeen += 1 }
        guard collective.size > 1, consistencyCheckEvery > 0, stepsSeen % consistencyCheckEvery == 0 else { return }
        let t0 = WallClock.now()
        defer { communication.gradientSeconds += WallClock.seconds(since: t0) }
        var h = FNV1a()
        let v = m.store.values.base
        for s in segments { h.add(UnsafeRawBufferPointer(start: v + s.offset, count: s.count * MemoryLayout<Float>.size)) }
        let all = try collective.allGather(h.value)
        if let r = all.firstIndex(where: { $0 != all[0] }) {
            throw JobError.diverged(rank: r, step: stepsSeen, hash: all[r], rootHash: all[0])
        }
    }

    func gradients(_ m: ContinualModel, _ tb: TrainingBatch, _ norms: LossNormalizers) throws -> LossParts {
        // a short batch (an epoch's last) may have fewer chunks than ranks: the ranks past them
        // contribute nothing (the CLI refuses more ranks than a full batch has chunks)
        let all = chunks(rows: tb.count), n = all.count, size = collective.size
        let segments = m.store.trainableSegments { $0.group != "router" }
        try checkConsistency(m, segments)
        let P = segments.reduce(0) { $0 + $1.count }, stride = P + Self.lossFloats
        let mine = Array(block(ofRank: collective.rank, chunkCount: n))
        let T = min(threads, max(mine.count, 1))
        m.ensureWorkers(T)
        if packed.count < mine.count * stride { packed = [Float](repeating: 0, count: mine.count * stride) }
        // chunks on worker threads, BLAS single-threaded inside each (its result must not depend
        // on how many threads BLAS would use)
        let blasThreads = SingleThreadedBLAS.begin()
        defer { SingleThreadedBLAS.end(blasThreads) }
        let failures = UnsafeMutablePointer<Error?>.allocate(capacity: T)
        failures.initialize(repeating: nil, count: T)
        defer { failures.deinitialize(count: T); failures.deallocate() }
        packed.withUnsafeMutableBufferPointer { out in
            let base = out.baseAddress!
            for wave in Swift.stride(from: 0, to: mine.count, by: T) {
                let width = min(T, mine.count - wave)
                let body = { (t: Int) in
                    let local = wave + t, ctx = m.workers[t], g = ctx.gradArena!.base
                    // only the packed segments are read back, so only they need zeroing
                    for s in segments { (g + s.offset).update(repeating: 0, count: s.count) }
                    do {
                        let parts = try m.passGradients(tb.rows(all[mine[local]]), norms, in: ctx)
                        let o = base + local * stride
                        var at = 0
                        for s in segments { (o + at).update(from: g + s.offset, count: s.count); at += s.count }
                        for (i, v) in [parts.classification, parts.logitReplay, parts.anchor, parts.orthogonality].enumerated() {
                            let bits = v.bitPattern
                            o[P + 2 * i] = Float(bitPattern: UInt32(truncatingIfNeeded: bits))
                            o[P + 2 * i + 1] = Float(bitPattern: UInt32(truncatingIfNeeded: bits >> 32))
                        }
                    } catch { failures[t] = error }
                }
                if width == 1 { body(0) } else { DispatchQueue.concurrentPerform(iterations: width, execute: body) }
            }
        }
        // a chunk that failed on one rank must not leave the others waiting in the gather (a
        // caller that skips a failed step, like a gate refit, would desynchronise the ranks): the
        // ranks agree first, and every rank throws `JobError.rankFailed` (one process: the error)
        let failure = (0..<T).lazy.compactMap({ failures[$0] }).first
        let t0 = WallClock.now()
        try collective.agree { if let failure { throw failure } }
        // every rank's chunks, in chunk order
        let counts = (0..<size).map { block(ofRank: $0, chunkCount: n).count * stride }
        if gathered.count < n * stride { gathered = [Float](repeating: 0, count: n * stride) }
        try packed.withUnsafeBufferPointer { send in
            try gathered.withUnsafeMutableBufferPointer { recv in
                try collective.allGather(UnsafeBufferPointer(rebasing: send[0..<(mine.count * stride)]),
                                         into: UnsafeMutableBufferPointer(rebasing: recv[0..<(n * stride)]), counts: counts)
            }
        }
        communication.gradientSeconds += WallClock.seconds(since: t0)
        communication.gradientSteps += 1
        communication.gradientBytes += n * stride * MemoryLayout<Float>.size
        var parts = LossParts()
        let grads = m.store.grads.base
        gathered.withUnsafeBufferPointer { gb in
            for c in 0..<n {
                let src = gb.baseAddress! + c * stride
                var at = 0
                for s in segments {
                    let dst = grads + s.offset
                    for i in 0..<s.count { dst[i] += src[at + i] }
                    at += s.count
                }
                func part(_ i: Int) -> Double {
                    Double(bitPattern: UInt64(src[P + 2 * i].bitPattern) | (UInt64(src[P + 2 * i + 1].bitPattern) << 32))
                }
                parts.classification += part(0); parts.logitReplay += part(1); parts.anchor += part(2); parts.orthogonality += part(3)
            }
        }
        return parts
    }
}
